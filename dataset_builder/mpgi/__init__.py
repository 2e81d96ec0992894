"""MpGI engine: rule perspective, Rule-MLLM relay, MLLM perspectives, LLM integration, on datatrove.

>>> from hqrs.dataset_builder.mpgi import load_recipe, run_mpgi, iter_results, run_status
>>> recipe = load_recipe("offline")
>>> recipe.uses_models
False

``run_mpgi(records, recipe, run_dir)`` runs (or resumes) a run; ``iter_results(run_dir)`` yields one
:class:`~hqrs.dataset_builder.records.MpGIResult` per image; ``run_status(run_dir)`` counts done /
failed / pending per stage.
"""

from .engine import EXECUTORS, MpGIRunError, RunReport, iter_results, run_mpgi, run_status
from .recipe import Recipe, RecipeError, load_recipe, shipped_recipes

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
