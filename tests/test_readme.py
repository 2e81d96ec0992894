"""The README is executed: every fenced ``bash`` / ``python`` block of README.md runs, in order, in one
temporary folder, so the documentation cannot drift from the code.

A block opts out with an HTML comment on the line right before its fence, giving the reason::

    <!-- readme-test: skip (needs a GPU and vLLM) -->

The two set-up blocks (``<!-- ci:install -->`` / ``<!-- ci:test -->``) are run by ``.ci/run`` itself.
Blocks share the folder (later steps use what earlier ones wrote) and run with this interpreter's
environment on ``PATH`` (``hqrs``, ``python``), offline. ``rs_real/`` in the folder links to the real
samples when they are present; a block that reads them is marked ``<!-- readme-test: needs rs_real -->`` on
the line before its fence and is skipped where they are absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, RS_REAL

README = REPO_ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")
_NEEDS_RS_REAL = re.compile(r"^<!--\s*readme-test:\s*needs rs_real\s*-->\s*$")
_CI = re.compile(r"^<!--\s*ci:\w+\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README: its language, the line of its opening fence (1-based), its text."""

    lang: str
    line: int
    code: str
    skip: str | None
    needs_rs_real: bool


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with its opt-out reason (``None`` = it runs)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: code fence never closes")
        before = lines[i - 1] if i else ""
        skip = None
        if (s := _SKIP.match(before)) is not None:
            skip = s.group("reason").strip()
        elif _CI.match(before):
            skip = "a set-up command, run by .ci/run"
        blocks.append(
            Block(lang, i + 1, "\n".join(lines[start:end]), skip, bool(_NEEDS_RS_REAL.match(before)))
        )
        i = end + 1
    return blocks


def test_readme_blocks_are_runnable_or_say_why_not():
    """Only bash/python blocks run; every other fenced block (bibtex, text) must not look like a command."""
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no code blocks"
    for b in blocks:
        assert b.lang, f"README.md:{b.line}: a code fence without a language"
        if b.skip is not None:
            assert len(b.skip) > 8, f"README.md:{b.line}: say why the block is skipped"


def test_blocks_reading_rs_real_are_marked():
    """Where the samples are absent the runnable blocks must still pass: a block reading ``rs_real/`` says so."""
    for b in readme_blocks(README.read_text(encoding="utf-8")):
        if b.skip is None and b.lang in ("bash", "python") and not b.needs_rs_real:
            assert "rs_real" not in b.code, (
                f"README.md:{b.line} reads rs_real/: mark it <!-- readme-test: needs rs_real -->"
            )


def test_readme_skip_markers_parse():
    text = "x\n<!-- readme-test: skip (needs a GPU) -->\n```bash\necho hi\n```\n```python\nprint(1)\n```\n"
    a, b = readme_blocks(text)
    assert (a.lang, a.skip, a.code) == ("bash", "needs a GPU", "echo hi")
    assert (b.lang, b.skip, b.line) == ("python", None, 6)
    (c,) = readme_blocks("<!-- readme-test: needs rs_real -->\n```bash\nls rs_real\n```\n")
    assert c.needs_rs_real and c.skip is None
    with pytest.raises(ValueError, match="never closes"):
        readme_blocks("```bash\necho")


def _run(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if block.lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        cmd = [sys.executable, "-c", block.code]
    return subprocess.run(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900
    )


def test_readme_runs_in_order(tmp_path):
    """Each runnable block, in README order, in one folder; a failure names the block's line."""
    blocks = [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang in ("bash", "python")]
    have_rs_real = RS_REAL.is_dir()
    if have_rs_real:
        (tmp_path / "rs_real").symlink_to(RS_REAL.resolve(), target_is_directory=True)
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    }
    ran = 0
    timings: list[str] = []
    for block in blocks:
        if block.skip is not None or (block.needs_rs_real and not have_rs_real):
            continue
        start = time.perf_counter()
        res = _run(block, tmp_path, env)
        timings.append(f"README.md:{block.line} ({block.lang}) {time.perf_counter() - start:.1f} s")
        if res.returncode != 0:
            pytest.fail(
                f"README.md:{block.line} ({block.lang}) exited {res.returncode}\n--- code\n{block.code}\n"
                f"--- stdout (tail)\n{res.stdout[-3000:]}\n--- stderr (tail)\n{res.stderr[-5000:]}"
            )
        ran += 1
    print("\n".join(timings))  # seconds per block: shown with -s / -rP
    assert ran, "no README block ran"
