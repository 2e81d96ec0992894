"""Typed MpGI stage results and their one conversion to/from datatrove Document metadata (issue #16, part 2).

The metadata JSON is what run directories hold: documents written before the stage results were typed
(the dicts below are exactly what the earlier rollouts wrote) must read the same.
"""

from __future__ import annotations

import copy

import pytest

from hqrs.dataset_builder.mpgi.engine import result_from_document
from hqrs.dataset_builder.mpgi.recipe import recipe_from_dict
from hqrs.dataset_builder.mpgi.stage_results import (
    GenerationResult,
    IntegrationResult,
    StageInput,
    generation_of,
    integration_of,
    set_integration,
    stage_ok,
)
from hqrs.dataset_builder.mpgi.steps import check_templates, collect_perspectives, generation_results
from hqrs.dataset_builder.records import Caption, ImageRecord, ObjectAnnotation, Perspective
from hqrs.dataset_builder.rules import rule_facts, rule_text

RULE_TEXT = "An airport scene. 2 planes."
P1 = {"generator": "g", "perspective": "scene", "model": "m", "prompt_id": "abc", "text": "Two planes."}
REF = {
    "generator": "references",
    "perspective": "human-references",
    "model": None,
    "prompt_id": None,
    "text": "x",
}
CAPS = [{"text": "Two planes at an airport.", "length": "short", "sources": ["rule", "g"]}]
# what the rollouts wrote before the results were typed (every shape they had)
OLD_GEN_OK = {
    "status": "ok",
    "error": None,
    "perspectives": [P1],
    "usage": {"prompt_tokens": 56, "completion_tokens": 10},
    "counters": {"requests": 2, "retries": 1, "error:timeout": 1},
    "seconds": 0.0512,
}
OLD_GEN_UNREADABLE = {
    "status": "failed",
    "error": "cannot read image '/x.png': not an image",
    "perspectives": [],
    "usage": {},
    "counters": {},
}
OLD_INTEGRATION_OK = {
    "status": "ok",
    "error": None,
    "captions": CAPS,
    "usage": {"prompt_tokens": 300, "completion_tokens": 80},
    "counters": {"requests": 1},
    "stats": {"repairs": 1, "regenerations": 0, "fact_rejected": 2, "fact_dropped": 0, "invalid_dropped": 0},
    "seconds": 0.2,
}
OLD_INTEGRATION_FAILED = {
    "status": "failed",
    "error": "generation failed: g: no answer",
    "usage": {},
    "counters": {},
}
OLD_TEMPLATE_OK = {"status": "ok", "error": None, "captions": CAPS, "usage": {}}
OLD_TEMPLATE_FAILED = {"status": "failed", "error": "generation failed: m: no generation result"}


def _record(**kw) -> ImageRecord:
    base = dict(
        image_id="0123456789abcdef",
        image="/data/a.png",
        source="dota",
        width=800,
        height=600,
        labels=["airport"],
        objects=[
            ObjectAnnotation("plane", bbox=(10, 10, 60, 60)),
            ObjectAnnotation("plane", bbox=(100, 10, 160, 60)),
        ],
    )
    return ImageRecord(**{**base, **kw})


def _input_meta(**extra) -> dict:
    record = _record()
    facts = rule_facts(record)
    return {
        "record": record.to_dict(),
        "rule_text": rule_text(record, facts),
        "facts": facts.to_dict(),
        **extra,
    }


@pytest.mark.parametrize("old", [OLD_GEN_OK, OLD_GEN_UNREADABLE], ids=["ok", "unreadable"])
def test_generation_results_read_and_write_the_stored_json_unchanged(old):
    result = GenerationResult.from_metadata(copy.deepcopy(old))
    assert all(isinstance(p, Perspective) for p in result.perspectives)
    assert result.to_metadata() == old


@pytest.mark.parametrize("old", [OLD_INTEGRATION_OK, OLD_INTEGRATION_FAILED], ids=["ok", "failed"])
def test_integration_results_read_and_write_the_stored_json_unchanged(old):
    result = IntegrationResult.from_metadata(copy.deepcopy(old))
    assert all(isinstance(c, Caption) for c in result.captions)
    assert result.to_metadata() == old


def test_template_results_of_old_runs_read_the_same():
    ok = IntegrationResult.from_metadata(OLD_TEMPLATE_OK)
    assert ok.ok and ok.captions == [Caption(**CAPS[0])] and ok.stats is None
    failed = IntegrationResult.from_metadata(OLD_TEMPLATE_FAILED)
    assert not failed.ok and failed.captions == [] and failed.error.startswith("generation failed")
    # written back: the same keys plus empty usage/counters, which every reader tolerates
    assert {k: v for k, v in ok.to_metadata().items() if k != "counters"} == OLD_TEMPLATE_OK


def test_stage_input_round_trips_and_keeps_the_stored_dicts_for_templates():
    meta = _input_meta(references=REF, prior_perspectives=[P1])
    item = StageInput.from_metadata(meta)
    assert item.record == _record() and item.references == Perspective(**REF)
    assert item.prior_perspectives == [Perspective(**P1)] and item.facts.counts == {"plane": 2}
    assert item.to_metadata() == meta
    variables = item.template_variables()
    assert variables["record"] is meta["record"] and variables["facts"] is meta["facts"]
    built = StageInput(item.record, item.rule_text, item.facts)  # made here, not read: dicts computed
    assert built.to_metadata() == _input_meta()
    assert "references" not in built.to_metadata() and "prior_perspectives" not in built.to_metadata()


def _recipe():
    return recipe_from_dict(
        {
            "name": "t",
            "backends": {"m": {"server": "endpoint", "endpoint_url": "http://127.0.0.1:9", "model": "x"}},
            "generators": [{"name": "g", "backend": "m", "perspective": "scene", "image": False}],
            "integrator": {"backend": "template"},
        }
    )


def test_an_old_final_stage_document_gives_the_same_mpgi_result():
    recipe = _recipe()
    meta = _input_meta(references=REF)
    meta["gen:m"] = [copy.deepcopy(OLD_GEN_OK)]
    meta["integration"] = [copy.deepcopy(OLD_INTEGRATION_OK)]
    result = result_from_document({"id": "0123456789abcdef", "text": "/data/a.png", "metadata": meta}, recipe)
    assert result.status == "ok" and result.error is None and result.record == _record()
    assert [p.generator for p in result.perspectives] == ["rule", "references", "g"]
    assert result.captions == [Caption(**CAPS[0])]
    assert result.stats == {
        "requests": 3,
        "retries": 1,
        "error:timeout": 1,
        **OLD_INTEGRATION_OK["stats"],
        "prompt_tokens": 356,
        "completion_tokens": 90,
    }
    # a failed integration keeps no captions and says why; a missing generation stage is an error
    meta["integration"] = [dict(OLD_INTEGRATION_FAILED, captions=CAPS)]
    failed = result_from_document({"id": "x", "metadata": meta}, recipe)
    assert (failed.status, failed.captions, failed.error) == ("failed", [], OLD_INTEGRATION_FAILED["error"])
    del meta["gen:m"], meta["integration"]
    _, errors = collect_perspectives(StageInput.from_metadata(meta), generation_results(meta, recipe))
    assert errors == ["m: no generation result"]
    assert result_from_document({"id": "x", "metadata": meta}, recipe).status == "failed"


def test_metadata_accessors():
    meta = _input_meta()
    assert generation_of(meta, "m") is None and integration_of(meta) is None and not stage_ok(meta, "gen:m")
    meta["gen:m"] = [OLD_GEN_OK]
    assert generation_of(meta, "m").perspectives == [Perspective(**P1)] and stage_ok(meta, "gen:m")
    set_integration(meta, IntegrationResult("failed", "integration: only 1 valid captions"))
    assert meta["integration"] == [
        {"status": "failed", "error": "integration: only 1 valid captions", "usage": {}, "counters": {}}
    ]
    assert not stage_ok(meta, "integration")


def test_check_templates_renders_with_the_stage_input():
    check_templates(_recipe(), StageInput.from_metadata(_input_meta()))
