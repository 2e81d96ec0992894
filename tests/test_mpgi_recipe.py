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
