"""Layers without cycles: an ast check of every import in the five hqrs folders.

Layers, lowest first (BRIEF.md / issue #16.1)::

    core < sources < mpgi < dataset < modeling < evaluation < hub < cli

1. every module is assigned to a layer in ``LAYER_OF`` (a new module fails until it is added there);
2. no import, at module level or inside a function, goes from a lower layer to a higher one;
3. no import cycle between hqrs modules at module level (``if TYPE_CHECKING:`` blocks are not run);
4. imports inside functions only for the heavy optional third-party packages of ``HEAVY_LAZY``,
   never for a light package nor the standard library; and never for an hqrs module (that only hides
   a cycle or a layer break), except in the cli layer: a sub-command's handler imports its
   implementation when it runs, so ``hqrs --help`` stays at ~0.35 s instead of ~2.6 s (it would pull
   datatrove, numpy, huggingface_hub ...). Nothing imports the cli layer, so this cannot hide a cycle.

Violations that sit in files other branches are editing right now are listed in ``KNOWN_VIOLATIONS``;
the test fails when one of them disappears, so the list can only shrink.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")

LAYERS = ("core", "sources", "mpgi", "dataset", "modeling", "evaluation", "hub", "cli")

# Every module of the five folders -> its layer. A new module: add it here, in its folder's block.
_DB = "hqrs.dataset_builder"
LAYER_OF = {
    # core: records, io, imaging helpers, generic process-pool plumbing, the loopback test HTTP server
    f"{_DB}": "core",
    f"{_DB}.http_testing": "core",
    f"{_DB}.records": "core",
    f"{_DB}.io": "core",
    f"{_DB}.imaging": "core",
    f"{_DB}.parallel": "core",
    f"{_DB}.build_folder": "core",
    # sources: readers of the eight input formats
    f"{_DB}.sources": "sources",
    f"{_DB}.sources.adapters": "sources",
    f"{_DB}.sources.analysis": "sources",
    f"{_DB}.sources.base": "sources",
    f"{_DB}.sources.coco": "sources",
    f"{_DB}.sources.detection": "sources",
    f"{_DB}.sources.dota": "sources",
    f"{_DB}.sources.folder": "sources",
    f"{_DB}.sources.geometry": "sources",
    f"{_DB}.sources.images": "sources",
    f"{_DB}.sources.karpathy": "sources",
    f"{_DB}.sources.mask": "sources",
    f"{_DB}.sources.openclip_csv": "sources",
    f"{_DB}.sources.plain_images": "sources",
    f"{_DB}.sources.report": "sources",
    f"{_DB}.sources.voc": "sources",
    # mpgi: caption rules, recipes and the MpGI engine
    f"{_DB}.rules": "mpgi",
    f"{_DB}.recipes": "mpgi",
    f"{_DB}.mpgi": "mpgi",
    f"{_DB}.mpgi.datatrove_compat": "mpgi",
    f"{_DB}.mpgi.engine": "mpgi",
    f"{_DB}.mpgi.integrate": "mpgi",
    f"{_DB}.mpgi.local_models": "mpgi",
    f"{_DB}.mpgi.loopback": "mpgi",
    f"{_DB}.mpgi.prompts": "mpgi",
    f"{_DB}.mpgi.recipe": "mpgi",
    f"{_DB}.mpgi.references": "mpgi",
    f"{_DB}.mpgi.stage_results": "mpgi",
    f"{_DB}.mpgi.steps": "mpgi",
    # dataset: planning, builder, export, demo data
    f"{_DB}.builder": "dataset",
    f"{_DB}.dataset_card": "dataset",
    f"{_DB}.demo": "dataset",
    f"{_DB}.export": "dataset",
    f"{_DB}.planning": "dataset",
    f"{_DB}.rows": "dataset",
    f"{_DB}.split_settings": "dataset",
    # modeling
    "hqrs.modeling": "modeling",
    "hqrs.modeling.configuration_resnet_clip": "modeling",
    "hqrs.modeling.configuration_rs_coca": "modeling",
    "hqrs.modeling.conversion": "modeling",
    "hqrs.modeling.convert_clip": "modeling",
    "hqrs.modeling.convert_resnet_clip": "modeling",
    "hqrs.modeling.convert_rs_coca": "modeling",
    "hqrs.modeling.families": "modeling",
    "hqrs.modeling.key_mapping": "modeling",
    "hqrs.modeling.loading": "modeling",
    "hqrs.modeling.modeling_resnet_clip": "modeling",
    "hqrs.modeling.modeling_rs_coca": "modeling",
    "hqrs.modeling.open_clip_processing": "modeling",
    "hqrs.modeling.processing_resnet_clip": "modeling",
    "hqrs.modeling.processing_rs_coca": "modeling",
    "hqrs.modeling.recall": "modeling",
    "hqrs.modeling.rs_coca_files": "modeling",
    "hqrs.modeling.training": "modeling",
    "hqrs.modeling.training_data": "modeling",
    "hqrs.modeling.training_lora": "modeling",
    # evaluation
    "hqrs.evaluation": "evaluation",
    "hqrs.evaluation.coco_caption": "evaluation",
    "hqrs.evaluation.data": "evaluation",
    "hqrs.evaluation.dataset_quality": "evaluation",
    "hqrs.evaluation.encoders": "evaluation",
    "hqrs.evaluation.plots": "evaluation",
    "hqrs.evaluation.results": "evaluation",
    "hqrs.evaluation.retrieval": "evaluation",
    "hqrs.evaluation.rs_caption_metrics.rs_caption_metrics": "evaluation",
    "hqrs.evaluation.selo": "evaluation",
    "hqrs.evaluation.suite": "evaluation",
    "hqrs.evaluation.zeroshot": "evaluation",
    # hub
    "hqrs.hub_cards": "hub",
    "hqrs.hub_cards.cards": "hub",
    "hqrs.hub_cards.push": "hub",
    # cli
    "hqrs.scripts": "cli",
    "hqrs.scripts.build": "cli",
    "hqrs.scripts.cli": "cli",
    "hqrs.scripts.convert": "cli",
    "hqrs.scripts.env": "cli",
    "hqrs.scripts.eval": "cli",
    "hqrs.scripts.models": "cli",
    "hqrs.scripts.mpgi": "cli",
    "hqrs.scripts.push": "cli",
    "hqrs.scripts.train": "cli",
}

# Third-party packages that may be imported inside a function: heavy to import (or an optional extra)
# and needed by one code path only. Measured with `python -X importtime -c "import X"` (cumulative, on
# the shared 2-core dev box under load ~5, so absolute values are inflated ~2-3x; the ranking holds):
#   open_clip 9.9 s, peft 13 s, evaluate 9.2 s, torchvision 4.4 s, torch 3.1 s, accelerate 2.8 s,
#   safetensors.torch 1.8 s (imports torch), transformers 1.5 s, datasets 1.3 s, openai 1.0 s,
#   datatrove.pipeline.inference.run_inference 0.8 s, huggingface_hub.hf_api 0.4 s, pyarrow.parquet
#   0.3 s, scipy.ndimage 0.3 s, tifffile / imagecodecs 0.15 s each and only for TIFFs, cv2 0.1 s and
#   only for SeLo, pycocoevalcap (starts Java), httpx 0.18-0.25 s (0.1 s on top of hqrs.dataset_builder.mpgi,
#   which does not load it; only datatrove_compat's OpenAI-client error path needs it, where openai has
#   loaded it already); ray, vllm, sglang are optional extras.
# Light, so imported at module level: yaml 0.06 s, PIL.Image 0.02 s, numpy 0.17 s, tqdm.auto 0.15 s,
# jinja2 0.14 s, ftfy 0.05 s, plain safetensors 0.00 s, multiprocess 0.05-0.1 s (and 0 s where hqrs
# uses it: datatrove has loaded it), and the whole standard library.
HEAVY_LAZY = frozenset(
    {
        "torch",
        "torchvision",
        "transformers",
        "open_clip",
        "peft",
        "accelerate",
        "datatrove",
        "datasets",
        "pyarrow",
        "evaluate",
        "huggingface_hub",
        "cv2",
        "scipy",
        "pycocoevalcap",
        "openai",
        "httpx",
        "tifffile",
        "imagecodecs",
        "safetensors.torch",  # imports torch (plain `safetensors` is light)
        "ray",
        "vllm",
        "sglang",
    }
)

# ---------------------------------------------------------------------------------------------------
# Known violations, each in a file another branch is editing this round (OWNERS.md). The lead burns
# them down after merging; the test fails when one no longer exists, so this list only shrinks.
# (kind, module, target) with kind in "upward" | "cycle" | "lazy"; a cycle's "module" is the sorted
# modules of the cycle joined by " <-> " and its target is "".
# ---------------------------------------------------------------------------------------------------
KNOWN_VIOLATIONS: list[tuple[str, str, str]] = []


@dataclass(frozen=True)
class Import:
    """One import statement's target as seen from ``module``."""

    module: str  # importing hqrs module
    target: str  # absolute dotted name: an hqrs module, or the third-party/stdlib module imported
    internal: bool  # target is an hqrs module
    line: int
    in_function: bool
    type_checking: bool


def package_dir_from_pyproject(root: Path = REPO) -> dict[str, str]:
    """``{"hqrs.modeling": "modeling", ...}`` from ``[tool.setuptools] package-dir``."""
    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def discover_modules(root: Path, package_dir: dict[str, str]) -> dict[str, Path]:
    """Every ``.py`` file under the mapped folders, keyed by its dotted module name."""
    modules = {}
    for package, folder in package_dir.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def collect_imports(root: Path, package_dir: dict[str, str]) -> tuple[dict[str, Path], list[Import]]:
    """All import statements of every module, resolved to absolute names."""
    modules = discover_modules(root, package_dir)
    found: list[Import] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]

        def resolve(node: ast.ImportFrom, package=package) -> str:
            if not node.level:
                return node.module or ""
            base = package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            return ".".join(base + ([node.module] if node.module else []))

        def add(target: str, node: ast.stmt, in_function: bool, type_checking: bool, name=name) -> None:
            internal = target == "hqrs" or target.startswith("hqrs.")
            if internal:
                # the longest prefix that is a module of ours (`from hqrs.x import func` -> hqrs.x)
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target not in modules:
                    return
            found.append(Import(name, target, internal, node.lineno, in_function, type_checking))

        def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        add(alias.name, child, in_function, type_checking)
                elif isinstance(child, ast.ImportFrom):
                    base = resolve(child)
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        add(sub if sub in modules else base, child, in_function, type_checking)
                elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    visit(child, True, type_checking)
                elif isinstance(child, ast.If) and _is_type_checking(child.test):
                    for stmt in child.body:
                        visit(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
                    for stmt in child.orelse:
                        visit(ast.Module(body=[stmt], type_ignores=[]), in_function, type_checking)
                else:
                    visit(child, in_function, type_checking)

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False, False)
    return modules, found


def module_cycles(imports: list[Import]) -> list[tuple[str, ...]]:
    """Strongly connected components (size > 1, or a self-import) of the module-level import graph."""
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if imp.internal and not imp.in_function and not imp.type_checking:
            graph[imp.module].add(imp.target)
    return _sccs(graph)


def _sccs(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[tuple[str, ...]] = []

    def strong(v: str) -> None:  # Tarjan; the graphs here are a few hundred edges deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def package_cycles(imports: list[Import], depth: int = 2) -> list[tuple[str, ...]]:
    """Cycles between top-level packages (``hqrs.modeling`` ...), any import counted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if imp.internal:
            a, b = (".".join(n.split(".")[:depth]) for n in (imp.module, imp.target))
            if a != b:
                graph[a].add(b)
    return _sccs(graph)


def _matches(name: str, heavy: frozenset[str]) -> bool:
    """``name`` is a heavy package or inside one (``safetensors.torch.x`` matches ``safetensors.torch``)."""
    parts = name.split(".")
    return any(".".join(parts[:n]) in heavy for n in range(1, len(parts) + 1))


def find_violations(
    modules: dict[str, Path],
    imports: list[Import],
    layer_of: dict[str, str],
    heavy: frozenset[str] = HEAVY_LAZY,
    layers: tuple[str, ...] = LAYERS,
) -> tuple[list[str], dict[tuple[str, str, str], list[str]]]:
    """``(unassigned-module messages, {(kind, module, target): [where, ...]})``."""
    problems = [
        f"{name} ({path}) has no layer: add it to LAYER_OF in tests/test_layers.py"
        for name, path in modules.items()
        if name not in layer_of
    ]
    problems += [
        f"LAYER_OF lists {name}, which does not exist: remove it" for name in layer_of if name not in modules
    ]
    rank = {layer: i for i, layer in enumerate(layers)}
    found: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for imp in imports:
        where = f"{modules[imp.module]}:{imp.line}"
        if imp.internal and imp.module in layer_of and imp.target in layer_of:
            if rank[layer_of[imp.module]] < rank[layer_of[imp.target]]:
                found[("upward", imp.module, imp.target)].append(
                    f"{where}: {layer_of[imp.module]} imports {layer_of[imp.target]}"
                )
        if imp.in_function and not (
            layer_of.get(imp.module) == "cli" if imp.internal else _matches(imp.target, heavy)
        ):
            target = imp.target if imp.internal else imp.target.split(".")[0]
            found[("lazy", imp.module, target)].append(f"{where}: import inside a function")
    for cycle in module_cycles(imports):
        found[("cycle", " <-> ".join(cycle), "")].append("module-level import cycle")
    return problems, dict(found)


def compare_with_known(
    found: dict[tuple[str, str, str], list[str]], known: list[tuple[str, str, str]]
) -> tuple[dict[tuple[str, str, str], list[str]], list[tuple[str, str, str]]]:
    """``(violations not in known, known entries that no longer occur)``; both must be empty."""
    if len(set(known)) != len(known):
        raise ValueError("KNOWN_VIOLATIONS lists an entry twice")
    new = {key: where for key, where in found.items() if key not in set(known)}
    return new, sorted(set(known) - set(found))


@pytest.fixture(scope="module")
def scanned():
    return collect_imports(REPO, package_dir_from_pyproject())


def test_every_module_has_a_layer(scanned):
    modules, imports = scanned
    problems, _ = find_violations(modules, imports, LAYER_OF)
    assert problems == []


def test_no_new_layer_violations_and_known_ones_still_exist(scanned):
    modules, imports = scanned
    _, found = find_violations(modules, imports, LAYER_OF)
    new, gone = compare_with_known(found, KNOWN_VIOLATIONS)
    assert new == {}, (
        "imports against the layers core < sources < mpgi < dataset < modeling < evaluation < hub < cli, "
        "a module-level cycle, or an import inside a function that is not a heavy optional package "
        "(HEAVY_LAZY): move the shared code down a layer, or the import to module level"
    )
    assert gone == [], "fixed, well done: remove these from KNOWN_VIOLATIONS in tests/test_layers.py"


def test_no_package_cycles(scanned):
    # Follows from the layers (only an upward import can close a cycle between the five packages);
    # a known upward import is left out until it is fixed.
    _, imports = scanned
    known = {(module, target) for kind, module, target in KNOWN_VIOLATIONS if kind == "upward"}
    assert package_cycles([i for i in imports if (i.module, i.target) not in known]) == []


# --------------------------- the checker itself, on a synthetic package ---------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_reports_each_kind_on_a_synthetic_package(tmp_path):
    _write(
        tmp_path,
        {
            "low/__init__.py": "",
            # upward, at module level: low -> high
            "low/a.py": "from hqrs.high.b import thing\nimport numpy\n",
            # cycle low.c <-> low.d through a relative import, and a lazy hqrs import hiding nothing
            "low/c.py": "from . import d\n\ndef f():\n    from .a import thing\n    import torch\n",
            "low/d.py": "from .c import name\n\ndef g():\n    import yaml\n",
            # a TYPE_CHECKING import is not a runtime cycle
            "low/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .f import X\n",
            "low/f.py": "from .e import Y\n",
            "high/__init__.py": "",
            "high/b.py": "from hqrs.low import a\n",
            "high/new.py": "",
        },
    )
    package_dir = {"hqrs.low": "low", "hqrs.high": "high"}
    layer_of = {f"hqrs.low{m}": "core" for m in ("", ".a", ".c", ".d", ".e", ".f")}
    layer_of |= {"hqrs.high": "cli", "hqrs.high.b": "cli", "hqrs.gone": "cli"}
    modules, imports = collect_imports(tmp_path, package_dir)
    problems, found = find_violations(modules, imports, layer_of, heavy=frozenset({"torch"}))

    assert any("hqrs.high.new" in p and "add it to LAYER_OF" in p for p in problems)
    assert any("hqrs.gone" in p and "does not exist" in p for p in problems)
    assert set(found) == {
        ("upward", "hqrs.low.a", "hqrs.high.b"),
        ("cycle", "hqrs.high.b <-> hqrs.low.a", ""),
        ("cycle", "hqrs.low.c <-> hqrs.low.d", ""),
        ("lazy", "hqrs.low.c", "hqrs.low.a"),
        ("lazy", "hqrs.low.d", "yaml"),
    }
    assert found[("upward", "hqrs.low.a", "hqrs.high.b")] == [f"{tmp_path / 'low/a.py'}:1: core imports cli"]
    assert package_cycles(imports) == [("hqrs.high", "hqrs.low")]

    # the known list only shrinks: a listed violation that is gone is reported, so is a new one
    known = [("lazy", "hqrs.low.d", "yaml"), ("lazy", "hqrs.low.d", "json")]
    new, gone = compare_with_known(found, known)
    assert ("lazy", "hqrs.low.d", "yaml") not in new and ("upward", "hqrs.low.a", "hqrs.high.b") in new
    assert gone == [("lazy", "hqrs.low.d", "json")]


def test_checker_heavy_allow_list_and_cli_rule(tmp_path):
    _write(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/m.py": (
                "def f():\n    import torch.nn\n    from safetensors.torch import save_file\n"
                "    from safetensors import safe_open\n    import json\n"
            ),
            "cli/__init__.py": "",
            # a cli handler may import its (lower-layer) implementation when it runs, not a light package
            "cli/run.py": "def main():\n    from hqrs.low.m import f\n    import yaml\n",
        },
    )
    modules, imports = collect_imports(tmp_path, {"hqrs.low": "low", "hqrs.cli": "cli"})
    layer_of = {"hqrs.low": "core", "hqrs.low.m": "core", "hqrs.cli": "cli", "hqrs.cli.run": "cli"}
    _, found = find_violations(modules, imports, layer_of, heavy=frozenset({"torch", "safetensors.torch"}))
    assert set(found) == {
        ("lazy", "hqrs.low.m", "safetensors"),
        ("lazy", "hqrs.low.m", "json"),
        ("lazy", "hqrs.cli.run", "yaml"),
    }
