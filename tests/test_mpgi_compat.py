"""datatrove internals stay in one compat module behind a tested version range (issue #16, part 5)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from functools import cache
from importlib import metadata
from pathlib import Path

import datatrove
import pytest

from hqrs.dataset_builder.mpgi import datatrove_compat

ROOT = Path(__file__).resolve().parents[1]
# every module of the MpGI engine but the compat module, and the executors' module
PUBLIC_API_ONLY = [
    ROOT / "dataset_builder" / "parallel.py",
    *sorted(p for p in (ROOT / "dataset_builder" / "mpgi").glob("*.py") if p.name != "datatrove_compat.py"),
]


def _range_text(bounds: tuple[tuple[int, ...], tuple[int, ...]]) -> str:
    low, high = bounds
    return f">={'.'.join(map(str, low[:2]))},<{'.'.join(map(str, high[:2]))}"


def test_installed_datatrove_is_in_the_compat_range_pinned_by_pyproject():
    low, high = datatrove_compat.TESTED_RANGE
    installed = datatrove_compat._version_tuple(metadata.version("datatrove"))
    assert low <= installed < high, (metadata.version("datatrove"), datatrove_compat.TESTED_RANGE)
    # (tomllib is Python >= 3.11; the dependency lines are plain strings)
    pins = re.findall(r'^\s*"(datatrove[^"\[]*)",', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    pins = [p.replace(" ", "") for p in pins]
    assert pins == ["datatrove" + _range_text(datatrove_compat.TESTED_RANGE)], pins


@pytest.mark.parametrize("patch", datatrove_compat.PATCHES, ids=lambda p: p.target.split(":")[1])
def test_every_replaced_internal_exists_with_the_signature_it_was_written_for(patch):
    module_name, qualname = patch.target.split(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if patch.params is not None:
        assert tuple(inspect.signature(obj).parameters) == patch.params
    assert len(patch.reason) > 40  # each patch says why a public hook does not do


@cache
def _datatrove_private_names() -> frozenset[str]:
    """Every ``_name`` (not dunder) that datatrove defines: functions, methods and ``self._x`` attributes."""
    names = set()
    for path in Path(datatrove.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = None
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            if name and name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return frozenset(names)


def private_datatrove_uses(source: str) -> list[str]:
    """``line: name`` for each datatrove-private name a module touches: ``super()._x``, an override
    ``def _x`` in a class, ``obj._x`` of a name the module does not define itself, ``from datatrove... import _x``."""
    tree = ast.parse(source)
    private = _datatrove_private_names()
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not any(
            isinstance(parent, ast.ClassDef) and node in parent.body for parent in ast.walk(tree)
        ):
            own.add(node.name)
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for item in cls.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in private:
                found.append(f"{item.lineno}: def {item.name}")
                own.discard(item.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private and node.attr not in own:
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("datatrove"):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("_")]
    return sorted(set(found), key=lambda s: int(s.split(":")[0]))


@pytest.mark.parametrize("path", PUBLIC_API_ONLY, ids=lambda p: p.name)
def test_only_the_compat_module_touches_datatrove_internals(path):
    assert private_datatrove_uses(path.read_text(encoding="utf-8")) == []


def test_the_private_name_check_catches_overrides_super_calls_and_imports():
    source = (
        "from datatrove.pipeline.inference.servers.base import _raw_post\n"
        "class R(InferenceRunner):\n"
        "    def _init_server(self, rank):\n"
        "        return super()._init_server(rank)\n"
        "def f(cache):\n"
        "    return cache._writer_loop()\n"
    )
    assert private_datatrove_uses(source) == [
        "1: import _raw_post",
        "3: def _init_server",
        "4: ._init_server",
        "6: ._writer_loop",
    ]
    # a name of our own that datatrove happens to use too is ours
    assert (
        private_datatrove_uses("class P:\n    def f(self):\n        self._file = 1\n        self._file.x\n")
        == []
    )


def _no_op(data, rank: int = 0, world_size: int = 1):
    yield from data or []


def test_stage_completion_comes_from_datatrove_get_incomplete_ranks(tmp_path):
    """``parallel.incomplete_ranks`` (used for a pass's completion and ``hqrs mpgi status``) reads the
    markers a real datatrove executor writes, and writes nothing itself."""
    from datatrove.executor import LocalPipelineExecutor

    from hqrs.dataset_builder.parallel import incomplete_ranks, stage_task_states

    logs = tmp_path / "stage" / "logs"
    assert incomplete_ranks(logs, 3) == [0, 1, 2] and not logs.exists()
    LocalPipelineExecutor([_no_op], tasks=3, workers=1, local_tasks=2, logging_dir=str(logs)).run()
    assert incomplete_ranks(logs, 3) == [2]
    assert stage_task_states(logs, 3)["completed"] == 2
