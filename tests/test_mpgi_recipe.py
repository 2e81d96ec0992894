"""Recipes: shipped ones load and validate, errors name the bad key, prompts render, the GPU recipe
builds datatrove InferenceConfigs for vLLM, and Slurm/Ray executors are constructed with the right args."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hqrs.dataset_builder.mpgi import load_recipe, shipped_recipes
from hqrs.dataset_builder.mpgi.engine import build_executor, inference_config, recipe_stages, stage_pipeline
from hqrs.dataset_builder.mpgi.prompts import chat_payload, prompt_id, render
from hqrs.dataset_builder.mpgi.recipe import RecipeError, recipe_from_dict
from hqrs.dataset_builder.records import ImageRecord, ObjectAnnotation
from hqrs.dataset_builder.rules import rule_facts, rule_text


def test_shipped_recipes_load():
    assert {"offline", "cpu-tiny", "gpu-vllm"} <= set(shipped_recipes())
    offline = load_recipe("offline")
    assert not offline.uses_models and offline.integrator.n_captions == 6
    tiny = load_recipe("cpu-tiny", overrides=["backends.local.endpoint_url=http://127.0.0.1:9999"])
    assert tiny.backends["local"].endpoint_url == "http://127.0.0.1:9999"
    # the endpoint is operational (#13.2): same content, same hash; the model is content
    assert load_recipe("cpu-tiny").hash() == tiny.hash()
    assert load_recipe("cpu-tiny", overrides=["backends.local.model=other"]).hash() != tiny.hash()


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"generators": [{"name": "g", "backend": "nope", "perspective": "scene"}]},
            r"generators\[0\]\.backend",
        ),
        (
            {"generators": [{"name": "g", "backend": "m", "perspective": "scene", "temprature": 1}]},
            r"generators\[0\]\.temprature: unknown key",
        ),
        ({"backends": {"m": {"server": "tgi", "model": "x"}}}, r"backends\.m\.server"),
        ({"backends": {"m": {"server": "endpoint", "model": "x"}}}, r"backends\.m\.endpoint_url"),
        ({"integrator": {"captions": {"tiny": 2}}}, r"integrator\.captions\.tiny"),
        ({"integrator": {"fact_filter": "maybe"}}, r"integrator\.fact_filter"),
        ({"integrator": {"backend": "gpt"}}, r"integrator\.backend"),
        ({"execution": {"records_per_chunk": 0}}, r"execution\.records_per_chunk"),
        ({"colour": "red"}, r"colour: unknown top-level"),
        (
            {"backends": {"m": {"server": "vllm", "model": "x", "retry_backoff": "fast"}}},
            r"backends\.m\.retry_backoff: expected a non-negative number, got 'fast'",
        ),
        ({"integrator": {"words": 5}}, r"integrator\.words: expected a mapping"),
        (
            {"integrator": {"words": {"short": ["a", "b"]}}},
            r"integrator\.words\.short: expected \[min, max\]",
        ),
    ],
)
def test_errors_name_the_bad_key(patch, message):
    data = {"name": "t", "backends": {"m": {"server": "vllm", "model": "x"}}}
    data.update(patch)
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data)


def test_recipe_file_and_env(tmp_path, monkeypatch):
    (tmp_path / "mine.jinja").write_text("Describe {{ perspective }} of site {{ record.image_id }}.")
    (tmp_path / "r.yaml").write_text(
        "name: mine\nbackends:\n  m: {server: endpoint, endpoint_url: '${HQRS_MPGI_ENDPOINT:-http://127.0.0.1:1}', model: x}\n"
        "generators:\n  - {name: g, backend: m, perspective: scene, prompt: mine.jinja}\n"
    )
    monkeypatch.setenv("HQRS_MPGI_ENDPOINT", "http://127.0.0.1:4242")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.backends["m"].endpoint_url == "http://127.0.0.1:4242"
    assert (
        render("mine.jinja", recipe, perspective="scene", record={"image_id": "abc"})
        == "Describe scene of site abc."
    )
    with pytest.raises(ValueError, match="undefined"):
        render("mine.jinja", recipe, perspective="scene")
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_gpu_recipe_config(tmp_path):
    recipe = load_recipe("gpu-vllm")
    record = ImageRecord(
        image_id="e" * 16,
        image="x.png",
        source="dota",
        width=800,
        height=800,
        gsd=0.3,
        labels=["Port"],
        objects=[ObjectAnnotation("ship", bbox=(1, 1, 40, 20))] * 3,
        exhaustive_classes=["ship", "plane"],
    )
    facts = rule_facts(record)
    for gen in recipe.generators:
        text = render(
            gen.prompt,
            recipe,
            perspective=gen.perspective,
            relay_rules=gen.relay_rules,
            rule_text=rule_text(record),
            record=record.to_dict(),
            facts=facts.to_dict(),
        )
        assert ("three ships" in text) == gen.relay_rules
        assert "0.3 m per pixel" in text
        payload = chat_payload(text, "data:image/png;base64,AAAA", gen.sampling)
        assert payload["messages"][0]["content"][0]["type"] == "image_url"
        assert prompt_id(gen.prompt, recipe).startswith("perspective.jinja@")
    listing = [{"name": "rule", "perspective": "rule", "text": rule_text(record)}]
    prompt = render(
        recipe.integrator.prompt,
        recipe,
        perspectives=listing,
        rule_text="",
        captions=recipe.integrator.captions,
        words=recipe.integrator.words,
        n_captions=6,
        feedback=None,
    )
    assert "2 short captions of 4 to 15 words" in prompt and '"captions"' in prompt
    stages = recipe_stages(recipe)
    assert [s.key for s in stages] == ["gen:qwen-vl", "gen:internvl", "gen:llava-ov", "integration"]
    cfg = inference_config(recipe, "qwen-vl")
    assert (cfg.server_type, cfg.model_name_or_path, cfg.max_concurrent_generations) == (
        "vllm",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        64,
    )
    assert cfg.model_kwargs["max-model-len"] == 16384
    pipeline = stage_pipeline(recipe, stages[0], str(tmp_path / "in"), tmp_path / "stage")
    from datatrove.pipeline.inference.run_inference import InferenceRunner

    assert isinstance(pipeline[1], InferenceRunner) and pipeline[1].metadata_key == "gen:qwen-vl"
    with pytest.raises(ImportError, match="vllm"):  # datatrove picks its vLLM server (not installed here)
        pipeline[1]._init_server(rank=0)
    slurm = build_executor(
        "slurm", pipeline, str(tmp_path / "logs"), tasks=4, workers=2, options=recipe.execution.slurm
    )
    assert (slurm.tasks, slurm.partition, slurm.time, slurm.gpus_per_task) == (4, "gpu", "24:00:00", 1)
    ray = build_executor(
        "ray",
        pipeline,
        str(tmp_path / "logs2"),
        tasks=4,
        workers=2,
        depends=None,
        options=recipe.execution.ray,
    )
    assert (ray.tasks, ray.workers, ray.gpus_per_task) == (4, 2, 1)
    with pytest.raises(ValueError, match="execution.slurm.partition"):
        build_executor("slurm", pipeline, str(tmp_path / "logs3"), tasks=1, workers=1, options={})


def test_cli_run_and_status(tmp_path, capsys):
    from PIL import Image
    from pytest_socket import socket_allow_hosts

    from hqrs.scripts import mpgi

    socket_allow_hosts(["127.0.0.1", "::1"], allow_unix_socket=True)  # datatrove's multiprocess Manager
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 60, 0, 0)).save(images / f"{i}.png")
    parser = argparse.ArgumentParser()
    mpgi.register(parser.add_subparsers(), [])
    args = parser.parse_args(
        ["mpgi", "run", "--source", str(images), "--out", str(tmp_path / "run"), "--no-progress"]
    )
    assert args.func(args) == 0
    assert "3 ok, 0 failed" in capsys.readouterr().out
    args = parser.parse_args(["mpgi", "status", str(tmp_path / "run")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "3 records: 3 ok, 0 failed, 0 pending" in out and "integration" in out
    assert Path(tmp_path / "run" / "manifest.json").is_file()


def test_image_data_url_is_not_bound_by_pillows_default_pixel_limit(tmp_path, monkeypatch):
    """A scene the source accepted (its max_pixels, 400 Mpx by default) must not abort the rollout with
    Pillow's own DecompressionBombError (89 Mpx warning / 179 Mpx error)."""
    from PIL import Image

    from hqrs.dataset_builder.mpgi.prompts import image_data_url

    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "a.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    url = image_data_url(tmp_path / "a.tif", max_side=32)
    assert url.startswith("data:image/png;base64,") and Image.MAX_IMAGE_PIXELS == 1000


def test_plain_image_folder_goes_through_the_images_source(tmp_path, monkeypatch):
    """`--source DIR` with image files: the `images` source (guards, 16-bit conversion, counted skips)."""
    import numpy as np
    import tifffile
    from PIL import Image

    from hqrs.dataset_builder.sources import SkipReport
    from hqrs.scripts.mpgi import iter_source_records

    monkeypatch.setenv("HQRS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "flat"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 20), (9, 0, 0)).save(folder / "a.png")
    tifffile.imwrite(folder / "b16.tif", (np.arange(1200).reshape(30, 40) * 3).astype("uint16"))
    (folder / "notes.txt").write_text("not an image")
    report = SkipReport()
    recs = {r.meta["file"]: r for r in iter_source_records([str(folder)], report)}
    assert set(recs) == {"a.png", "b16.tif"} and {r.source for r in recs.values()} == {"images"}
    b16 = np.asarray(Image.open(recs["b16.tif"].image))  # 8-bit stretch, not clipped to white
    assert b16.dtype == np.uint8 and b16.min() == 0 and b16.max() == 255
    assert [(Path(i["file"]).name, i["kind"]) for i in report.items] == [("notes.txt", "image")]


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.5:8000", "http://10.0.0.5:8000/", "http://10.0.0.5:8000/v1", "http://10.0.0.5:8000/v1/"],
)
def test_endpoint_url_root_or_v1_same_server(url):
    recipe = load_recipe("cpu-tiny", overrides={"backends.local.endpoint_url": url})
    assert recipe.backends["local"].server_root == "http://10.0.0.5:8000"
    assert inference_config(recipe, "local").endpoint_url == "http://10.0.0.5:8000"


@pytest.mark.parametrize("bad", ["sk-abc$%", "1KEY", 42])
def test_api_key_env_must_be_a_variable_name(bad):
    with pytest.raises(RecipeError, match=r"backends\.local\.api_key_env: expected the NAME"):
        load_recipe("cpu-tiny", overrides={"backends.local.api_key_env": bad})


# The recipe hash keys a run directory (resume, old run dirs): it must not change for the same content.
# Computed with the hand-written dataclass recipes (before the pydantic sections) at commit 25afa0a.
PINNED_HASHES = {
    "cpu-small": (
        "ba867e7b7659b956238e3ba54c7ba6874a401f512347c2a20264299fb690a704",
        "2592c6b2267ef9ce49bf3237e55695823a681d91e773dff72625a1f521b4ec49",
    ),
    "cpu-tiny": (
        "c391f91e2c642c238ec9a14052dfe92a337edb3fb6fcfbfc58286c175bdd1916",
        "35f80e6f0b82ecac70beee15fabe746918f313493224929cace4c84412db640e",
    ),
    "gpu-vllm": (
        "db55ba4bab5b5ed4dd9db8168a552cbe7e8777367879750983348080fdbd4fac",
        "b093595a7599990a426dcbd19a0f4cba5af0cd5143a95b6a0303970063b6247d",
    ),
    "offline": (
        "61a15c5b81d081d3540841298337471fa8d781d7295557b5e25eef4ad0bc1e58",
        "70c714858c4531c3067a2b34afdd524b3bd6526e7c26ef59630e69227c23e446",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED_HASHES))
def test_shipped_recipe_hashes_are_pinned(name, monkeypatch):
    for var in ("HQRS_MPGI_ENDPOINT", "HQRS_MPGI_MODEL"):
        monkeypatch.delenv(var, raising=False)
    recipe = load_recipe(name)
    assert (recipe.hash(), recipe.hash(legacy=True)) == PINNED_HASHES[name]
    # recipe.json round trip (what a resumed run reloads) keeps the hash
    assert recipe_from_dict(recipe.to_dict(), recipe.source_path).hash() == recipe.hash()


def test_every_shipped_recipe_has_a_pinned_hash():
    assert set(shipped_recipes()) == set(PINNED_HASHES)  # a new shipped recipe: pin its hashes above


@pytest.mark.parametrize(
    ("patch", "line"),
    [
        (  # the brief's example kind: a sampling parameter out of range, at its list index
            {
                "generators": [
                    {"name": "a", "backend": "m", "perspective": "scene"},
                    {"name": "b", "backend": "m", "perspective": "scene", "sampling": {"max_tokens": -1}},
                ]
            },
            "recipe 'x.yaml': generators[1].sampling.max_tokens: expected an integer >= 1, got -1",
        ),
        (  # every wrong value of a section at once, still one line
            {"generators": [{"name": "g", "backend": "m", "perspective": "scene", "n": 0, "image": "yes"}]},
            "recipe 'x.yaml': generators[0].image: expected true or false, got 'yes'; "
            "generators[0].n: expected an integer >= 1, got 0",
        ),
        (
            {"backends": {"m": {"server": "vllm", "model": "x", "retries": True}}},
            "recipe 'x.yaml': backends.m.retries: expected an integer >= 0, got True",
        ),
        (
            {"backends": {"a b": {"server": "vllm", "model": "x"}}},
            "recipe 'x.yaml': backends.a b: expected a name (letters, digits, '_', '.', '-'), got 'a b'",
        ),
        (
            {"backends": {"template": {"server": "vllm", "model": "x"}}},
            "recipe 'x.yaml': backends.template: 'template' is reserved for the template integrator",
        ),
        (
            {"backends": {"m": {"server": "vllm"}}},
            "recipe 'x.yaml': backends.m.model: missing required key",
        ),
        ({"integrator": 5}, "recipe 'x.yaml': integrator: expected a mapping, got 5"),
        (
            {"integrator": {"captions": {"short": 1, "long": 1}, "words": {"short": [4, 15]}}},
            "recipe 'x.yaml': integrator.words: no word range for length 'long'; add e.g. long: [8, 20]",
        ),
        (
            {"checks": {"refusal_patterns": ["(("]}},
            "recipe 'x.yaml': checks.refusal_patterns[0]: not a regular expression: missing ), "
            "unterminated subpattern at position 1, got '(('",
        ),
        (
            {"generators": [{"name": "rule", "backend": "m", "perspective": "scene"}]},
            "recipe 'x.yaml': generators[0].name: 'rule' is used twice (or is the reserved 'rule' or "
            "'references')",
        ),
        (
            {"source_path": "/elsewhere/r.yaml"},
            "recipe 'x.yaml': source_path: unknown top-level recipe key; valid keys are backends, checks, "
            "description, execution, generators, integrator, name",
        ),
    ],
)
def test_error_is_one_line_with_file_path_and_value(patch, line):
    data = {"name": "t", "backends": {"m": {"server": "vllm", "model": "x"}}}
    data.update(patch)
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data, source_path="x.yaml")
    assert str(info.value) == line


def test_sections_are_frozen_and_validated_on_construction():
    import dataclasses

    from hqrs.dataset_builder.mpgi.recipe import IntegratorSpec

    recipe = load_recipe("cpu-tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.integrator.max_repairs = 5  # type: ignore[misc]
    # dataclasses.replace (the engine's way to change records_per_chunk) validates again
    chunked = dataclasses.replace(
        recipe, execution=dataclasses.replace(recipe.execution, records_per_chunk=7)
    )
    assert chunked.execution.records_per_chunk == 7 and chunked.hash() == recipe.hash()
    with pytest.raises(RecipeError, match=r"^records_per_chunk: expected an integer >= 1, got -3$"):
        dataclasses.replace(recipe.execution, records_per_chunk=-3)
    with pytest.raises(RecipeError, match=r"^captions: asks for no caption at all"):
        IntegratorSpec(captions={"short": 0})
    with pytest.raises(
        RecipeError, match=r"^sampling\.temperature: expected a non-negative number, got '0\.7'"
    ):
        IntegratorSpec(sampling={"temperature": "0.7"})


def test_override_values_are_validated_and_named():
    with pytest.raises(RecipeError) as info:
        load_recipe("cpu-tiny", ["integrator.sampling.top_p=1.5"])
    assert str(info.value) == (
        "recipe 'hqrs.dataset_builder.recipes/cpu-tiny.yaml': integrator.sampling.top_p: "
        "expected a number in (0, 1], got 1.5"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe("cpu-tiny", ["generators.3.n=2"])
    assert (
        str(info.value)
        == "--set generators.3.n: recipe 'cpu-tiny' has no generators[3] (it has 1 generators)"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe("cpu-tiny", ["integrator.max_repairs.x=2"])
    assert (
        str(info.value)
        == "--set integrator.max_repairs.x: integrator.max_repairs is 1, not a mapping or a list"
    )
    assert load_recipe("cpu-tiny", ["generators.0.sampling.seed=3"]).generators[0].sampling["seed"] == 3


def _schema_keys(schema: dict, node: dict) -> set[str]:
    """Keys named by a (sub)schema, following $ref into $defs."""
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return set(node.get("properties", {}))


@pytest.mark.parametrize("name", sorted(PINNED_HASHES))
def test_json_schema_names_every_key_of_the_shipped_recipes(name, capsys):
    import json
    from importlib import resources

    import yaml

    from hqrs.scripts.cli import main

    assert main(["mpgi", "recipe-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False and "source_path" not in schema["properties"]
    for section in [schema, *schema["$defs"].values()]:  # every key documented (from the Args: docstrings)
        assert section["additionalProperties"] is False and "Args:" not in section["description"]
        assert all(prop.get("description") for prop in section["properties"].values()), section["title"]
    data = yaml.safe_load(
        resources.files("hqrs.dataset_builder.recipes").joinpath(f"{name}.yaml").read_text()
    )
    assert set(data) <= _schema_keys(schema, schema)
    sections = {"integrator": "IntegratorSpec", "checks": "AnswerChecks", "execution": "ExecutionSpec"}
    for key, section in sections.items():
        assert set(data.get(key) or {}) <= set(schema["$defs"][section]["properties"]), key
    for backend in (data.get("backends") or {}).values():
        assert set(backend) <= set(schema["$defs"]["BackendSpec"]["properties"])
    for gen in data.get("generators") or []:
        assert set(gen) <= set(schema["$defs"]["GeneratorSpec"]["properties"])
    assert schema["$defs"]["BackendSpec"]["properties"]["max_concurrent"]["minimum"] == 1
    assert schema["$defs"]["BackendSpec"]["properties"]["server"]["enum"] == ["vllm", "sglang", "endpoint"]


def test_cli_bad_recipe_is_one_error_line(tmp_path, capsys):
    from hqrs.scripts.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(
        "name: bad\nbackends:\n  m: {server: vllm, model: x, max_concurrent: -1}\n"
        "generators:\n  - {name: g, backend: m, perspective: scene, temprature: 0.3}\n"
    )
    argv = ["mpgi", "run", "--recipe", str(path), "--source", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main([*argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"hqrs: error: recipe {str(path.resolve())!r}: backends.m.max_concurrent: expected an integer >= 1, "
        "got -1; generators[0].temprature: unknown key; valid keys are backend, image, n, name, perspective, "
        "prompt, relay_rules, sampling\n"
    )
    assert (
        main(["mpgi", "run", "--source", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "name=a b"])
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hqrs: error: recipe ") and "name: expected a name" in err
    assert not (tmp_path / "run").exists()


def test_set_into_a_list_the_recipe_lacks_names_the_index(tmp_path, capsys):
    """A numeric --set segment indexes a list; a list the recipe does not have (offline: no generators) is
    an empty one, never a mapping {'0': ...} that fails later as 'generators: expected a list'."""
    from hqrs.scripts import cli

    with pytest.raises(RecipeError) as info:
        load_recipe("offline", ["generators.0.sampling.max_tokens=64"])
    assert str(info.value) == (
        "--set generators.0.sampling.max_tokens: recipe 'offline' has no generators[0] (it has 0 generators)"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe("cpu-tiny", ["generators.first.n=2"])
    assert (
        str(info.value)
        == "--set generators.first.n: generators is a list; index its items by number (generators.0...)"
    )
    # a missing mapping on the way is still created (a new backend, executor options)
    recipe = load_recipe("offline", ["execution.slurm.partition=gpu", "generators=[]"])
    assert recipe.execution.slurm == {"partition": "gpu"} and recipe.generators == []
    argv = ["mpgi", "run", "--recipe", "offline", "--set", "generators.0.sampling.max_tokens=64"]
    assert cli.main([*argv, "--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "hqrs: error: --set generators.0.sampling.max_tokens: recipe 'offline' has no generators[0] "
        "(it has 0 generators)"
    )
    assert not (tmp_path / "out").exists()


def test_all_bad_values_of_a_section_are_listed_at_once(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nintegrator:\n  sampling: {temperature: -1, top_p: 7, seed: a}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"recipe {str(path.resolve())!r}: integrator.sampling.temperature: expected a non-negative number, "
        "got -1; integrator.sampling.top_p: expected a number in (0, 1], got 7; "
        "integrator.sampling.seed: expected an integer, got 'a'"
    )
    # the cross-key checks of the recipe too: every undefined backend, not only the first
    data = {
        "name": "x",
        "generators": [{"name": "a", "backend": "m1", "perspective": "scene"}],
        "integrator": {"backend": "m2"},
    }
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data)
    assert str(info.value) == (
        "generators[0].backend: 'm1' is not defined under backends (defined: none); "
        "integrator.backend: 'm2' is neither 'template' nor defined under backends (defined: none)"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1e9", "integrator.sampling.top_p: expected a number in (0, 1], got 1000000000.0"),
        ("-1e-3", "integrator.sampling.top_p: expected a number in (0, 1], got -0.001"),
        ("'1e-3'", "integrator.sampling.top_p: expected a number in (0, 1], got '1e-3'"),
        ("1e-3", None),
        (".5", None),
    ],
)
def test_set_and_file_numbers_follow_yaml_1_2(value, expected, tmp_path):
    """YAML 1.1 (PyYAML) reads 1e9 as a string; recipes and --set values read it as the number it is."""
    name = "hqrs.dataset_builder.recipes/offline.yaml"
    if expected is None:
        top_p = load_recipe("offline", [f"integrator.sampling.top_p={value}"]).integrator.sampling["top_p"]
        assert top_p == float(value)
        return
    with pytest.raises(RecipeError) as info:
        load_recipe("offline", [f"integrator.sampling.top_p={value}"])
    assert str(info.value) == f"recipe {name!r}: {expected}"
    path = tmp_path / "r.yaml"
    path.write_text(f"name: x\nintegrator:\n  sampling: {{top_p: {value}}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"recipe {str(path.resolve())!r}: {expected}"


def test_recipe_that_is_a_folder_or_missing_says_what_a_recipe_is(tmp_path):
    names = ", ".join(shipped_recipes())
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path)
    assert str(info.value) == (
        f"recipe {str(tmp_path)!r} is a folder; a recipe is a shipped name ({names}) or a YAML file"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "nope.yaml")
    assert str(info.value) == (
        f"recipe {str(tmp_path / 'nope.yaml')!r} does not exist; a recipe is a shipped name ({names}) or a YAML file"
    )
