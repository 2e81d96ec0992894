"""MpGI engine: rule perspective, Rule-MLLM relay, MLLM perspectives, LLM integration, on datatrove.

>>> from hqrs.dataset_builder.mpgi import load_recipe, run_mpgi, iter_results, run_status
>>> recipe = load_recipe("offline")
>>> recipe.uses_models
False

``run_mpgi(records, recipe, run_dir)`` runs (or resumes) a run; ``iter_results(run_dir)`` yields one
:class:`~hqrs.dataset_builder.records.MpGIResult` per image; ``run_status(run_dir)`` counts done /
failed / pending per stage.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import EXECUTORS, MpGIRunError, RunReport, iter_results, run_mpgi, run_status
    from .recipe import Recipe, RecipeError, load_recipe, shipped_recipes

# Loaded on first use (PEP 562): importing a light submodule (``mpgi.local_models`` for
# ``hqrs models``' help) must not pull in the engine and datatrove, ~0.5 s of every ``hqrs`` start.
_EXPORTS = {
    "EXECUTORS": ".engine",
    "MpGIRunError": ".engine",
    "RunReport": ".engine",
    "iter_results": ".engine",
    "run_mpgi": ".engine",
    "run_status": ".engine",
    "Recipe": ".recipe",
    "RecipeError": ".recipe",
    "load_recipe": ".recipe",
    "shipped_recipes": ".recipe",
}

__all__ = [
    "EXECUTORS",
    "MpGIRunError",
    "Recipe",
    "RecipeError",
    "RunReport",
    "iter_results",
    "load_recipe",
    "run_mpgi",
    "run_status",
    "shipped_recipes",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
