"""Hub publishing: cards from templates, exact dry-run folders, leak checks, and real push errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tiny_models
from huggingface_hub import DatasetCard, ModelCard

from hqrs.hub_cards import push as hub_push
from hqrs.scripts import cli

REPO_ID = "hqrs-test/tiny-hqrs-clip"


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    # 224 px: the card's snippet runs the zero-shot pipeline on a real-size image
    return tiny_models.tiny_clip_dir(tmp_path_factory.mktemp("tiny_clip"), image_size=224)


@pytest.fixture(scope="module")
def tiny_coca_dir(tmp_path_factory) -> Path:
    return tiny_models.tiny_coca_dir(tmp_path_factory.mktemp("tiny_coca"))


@pytest.fixture
def results_json(tmp_path, tiny_clip_dir) -> Path:
    from hqrs.evaluation.results import make_result, model_identity, write_result

    result = make_result(
        "zero-shot-image-classification",
        {"top1_accuracy": 71.25, "top5_accuracy": 93.5},
        dataset={"name": "AID", "type": "aid", "split": "test", "path": str(tmp_path / "aid")},
        protocol={"templates": "clip_resisc45"},
        model=model_identity(tiny_clip_dir),  # measured on the folder that is pushed
        details={"per_class": {"airport": 80.0}},
    )
    return write_result(result, tmp_path / "zeroshot.json")


def _scene_image(rs_real_dir: Path | None, dst: Path) -> None:
    from PIL import Image

    if rs_real_dir is not None:
        src = next((rs_real_dir / "aid_classification").rglob("*.jpg"))
        Image.open(src).convert("RGB").save(dst)
    else:
        Image.new("RGB", (256, 256), (90, 120, 60)).save(dst)


def test_dry_run_writes_exactly_the_upload(tiny_clip_dir, tmp_path, results_json, capsys):
    out = tmp_path / "stage"
    argv = [
        "push",
        "model",
        str(tiny_clip_dir),
        "--repo-id",
        REPO_ID,
        "--dry-run",
        str(out),
        "--base-model",
        "openai/clip-vit-base-patch32",
        "--results",
        str(results_json),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    staged = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # everything save_pretrained wrote (weights, config, processor, tokenizer) plus the card
    assert staged == sorted([*(p.name for p in tiny_clip_dir.iterdir()), "README.md"])
    assert "model.safetensors" in staged and "tokenizer.json" in staged
    # the printed operation list names every staged file, and nothing else
    ops = re.findall(r"^add (\S+) \(", printed, flags=re.M)
    assert sorted(ops) == staged
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert "remote-sensing" in card.data.tags
    assert card.data.base_model == "openai/clip-vit-base-patch32"
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"top1_accuracy": 71.25, "top5_accuracy": 93.5}  # per-class details stay out
    assert "| zero-shot-image-classification | AID | test | top1 accuracy | 71.25 |" in card.text
    assert "2507.16716" in card.text


def test_card_usage_snippet_runs_against_dry_run_folder(tiny_clip_dir, tmp_path, request):
    out = tmp_path / "stage"
    hub_push.stage_model(tiny_clip_dir, out, REPO_ID)
    snippet = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), flags=re.S).group(1)
    assert REPO_ID in snippet
    workdir = tmp_path / "user"
    workdir.mkdir()
    rs_real_dir = request.getfixturevalue("rs_real") if _has_rs_real() else None
    _scene_image(rs_real_dir, workdir / "scene.jpg")
    (workdir / "snippet.py").write_text(snippet.replace(REPO_ID, str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "snippet.py"], cwd=workdir, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'label': 'airport'" in res.stdout or "airport" in res.stdout


def _has_rs_real() -> bool:
    from conftest import RS_REAL

    return (RS_REAL / "SOURCES.md").is_file()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: _edit_json(d / "config.json", token="hf_" + "a" * 34), "a Hugging Face token"),
        (
            lambda d: _edit_json(d / "config.json", note=str(Path.home() / "models" / "x")),
            "local path or user name",
        ),
        (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "only pickled weights"),
    ],
)
def test_staging_refuses_leaks_and_pickles(tiny_clip_dir, tmp_path, mutate, message):
    src = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, src)
    mutate(src)
    with pytest.raises(ValueError, match=message):
        hub_push.stage_model(src, tmp_path / "stage", REPO_ID)


def _edit_json(path: Path, **extra) -> None:
    data = json.loads(path.read_text())
    data.update(extra)
    path.write_text(json.dumps(data))


def test_not_a_publishable_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not publishable"):
        hub_push.stage_model(tmp_path, tmp_path / "stage", REPO_ID)


def test_dry_run_needs_an_empty_folder_and_a_valid_repo_id(tiny_clip_dir, tmp_path):
    with pytest.raises(ValueError, match="must be ORG/NAME"):
        hub_push.stage_model(tiny_clip_dir, tmp_path / "a", "no-namespace")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        hub_push.stage_model(tiny_clip_dir, tmp_path / "b", REPO_ID)


@pytest.fixture(scope="module")
def built_dataset(tmp_path_factory) -> Path:
    """The demo build: the real `hqrs build --demo` output folder (parquet shards, report, MpGI run)."""
    out = tmp_path_factory.mktemp("built") / "demo"
    assert cli.main(["-q", "build", "--demo", "--out", str(out)]) == 0
    return out


def test_dataset_dry_run_loads_with_load_dataset(built_dataset, tmp_path, capsys):
    import datasets

    out = tmp_path / "stage"
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"captions_per_image": 6.0, "distinct_2": 0.5, "lengths": [1, 2]}))
    argv = [
        "push",
        "dataset",
        str(built_dataset),
        "--repo-id",
        "hqrs-test/tiny-hqrs-it",
        "--dry-run",
        str(out),
    ]
    assert cli.main([*argv, "--stats", str(stats)]) == 0
    staged = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    shards = sorted(
        p.relative_to(built_dataset).as_posix() for p in (built_dataset / "data").rglob("*.parquet")
    )
    assert staged == sorted([*shards, "README.md", "build_report.json"])  # no MpGI run folder, no scenes
    card = DatasetCard.load(out / "README.md")
    assert {c["config_name"] for c in card.data.configs} == {"default", "full", "pairs"}
    assert "| captions_per_image | 6 |" in card.text  # whole numbers without ".0"
    assert "**recipe:** `offline`" in card.text
    # the published report keeps file names but not this machine's folders
    report = (out / "build_report.json").read_text()
    assert str(built_dataset) not in report and "demo_scenes/labelTxt" in report
    for config in ("default", "pairs"):
        ds = datasets.load_dataset(str(out), config)
        local = datasets.load_dataset(str(built_dataset), config)
        assert {s: ds[s].num_rows for s in ds} == {s: local[s].num_rows for s in local}
    assert len(datasets.load_dataset(str(out))["train"][0]["captions"]) == 6


@pytest.mark.parametrize(
    "fmt, written",
    [
        (
            "webdataset",
            ["test-00000-of-00001.tar", "train-00000-of-00001.tar", "validation-00000-of-00001.tar"],
        ),
        ("open_clip-csv", ["images", "test.csv", "train.csv", "validation.csv"]),
    ],
)
def test_only_parquet_builds_are_pushed(fmt, written, tmp_path, capsys):
    """A `--format webdataset` / `open_clip-csv` build (shards at OUT's root, no data/) is refused by name
    with the fix, before anything is staged; the same input built as parquet is pushed."""
    build = tmp_path / fmt
    assert cli.main(["-q", "build", "--demo", "--format", fmt, "--out", str(build)]) == 0
    assert sorted(set(p.name for p in build.iterdir()) & {*written, "data"}) == written  # what export wrote
    capsys.readouterr()
    argv = ["push", "dataset", str(build), "--repo-id", "hqrs-test/tiny-hqrs-it", "--dry-run"]
    assert cli.main([*argv, str(tmp_path / "stage")]) == 1
    assert capsys.readouterr().err == (
        f"hqrs: error: {str(build)!r} is a --format {fmt} build; only --format parquet builds get a dataset "
        "card and can be pushed to the Hub (configs, dataset_info and the dataset viewer need the parquet "
        "shards): rebuild with `hqrs build --format parquet --out NEW_FOLDER` (same input) to push\n"
    )
    assert not (tmp_path / "stage").exists()
    # the fix the message names works: same input, --format parquet, into a new folder
    fixed = tmp_path / "parquet"
    assert cli.main(["-q", "build", "--demo", "--format", "parquet", "--out", str(fixed)]) == 0
    argv[2] = str(fixed)
    assert cli.main([*argv, str(tmp_path / "stage")]) == 0
    staged = sorted(
        p.relative_to(tmp_path / "stage").as_posix() for p in (tmp_path / "stage").rglob("*.parquet")
    )
    assert staged and all(p.startswith("data/") for p in staged)


def test_dataset_card_statistics_from_eval_dataset(built_dataset, tmp_path, capsys):
    """`--stats` takes what `hqrs eval dataset` writes; bad --stats / --sources fail before OUT exists."""
    assert cli.main(["-q", "eval", "dataset", str(built_dataset), "--out-dir", str(tmp_path / "q")]) == 0
    argv = ["push", "dataset", str(built_dataset), "--repo-id", "hqrs-test/tiny-hqrs-it", "--dry-run"]
    stats = tmp_path / "q" / "dataset_quality.json"
    assert cli.main([*argv, str(tmp_path / "ok"), "--stats", str(stats)]) == 0
    text = DatasetCard.load(tmp_path / "ok" / "README.md").text
    assert "| images | 16 |" in text and "| fact consistency rate | 100 |" in text
    assert "| num captions | 96 |" in text and "96.0" not in text

    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "sources.json").write_text('{"name": "DOTA"}')
    for bad in (["--stats", str(tmp_path / "list.json")], ["--sources", str(tmp_path / "sources.json")]):
        capsys.readouterr()
        assert cli.main([*argv, str(tmp_path / "bad"), *bad]) != 0
        assert "must be a JSON" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


class _HubThatRefuses(BaseHTTPRequestHandler):
    def _refuse(self):
        body = json.dumps(
            {"error": "You don't have the rights to create a model under this namespace"}
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, *args):
        pass


def _push_in_subprocess(folder: Path, endpoint: str, tmp_path: Path, token: str | None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0"})
    if token:
        env["HF_TOKEN"] = token
    cmd = [sys.executable, "-m", "hqrs.scripts.cli", "push", "model", str(folder), "--repo-id", REPO_ID]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_push_without_token_says_how_to_log_in(tiny_clip_dir, tmp_path):
    res = _push_in_subprocess(tiny_clip_dir, "http://127.0.0.1:9", tmp_path, token=None)
    assert res.returncode == 1
    assert "no Hugging Face token found" in res.stderr and "hf auth login" in res.stderr


def test_push_refused_by_the_hub_is_a_permission_error(tiny_clip_dir, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HubThatRefuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        token = "hf_" + "x" * 34
        res = _push_in_subprocess(tiny_clip_dir, f"http://127.0.0.1:{server.server_port}", tmp_path, token)
    finally:
        server.shutdown()
    assert res.returncode == 1
    assert "HTTP 403" in res.stderr and "write access" in res.stderr
    assert token not in res.stderr + res.stdout  # never print tokens


def test_push_network_failure(tiny_clip_dir, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _push_in_subprocess(tiny_clip_dir, f"http://127.0.0.1:{port}", tmp_path, "hf_" + "y" * 34)
    assert res.returncode == 1
    assert "could not reach the Hub" in res.stderr


def test_published_report_paths(tmp_path):
    root = tmp_path / "build"
    report = {
        "sources": [f"dota:{root}/scenes/labelTxt?images={root}/scenes/images"],
        "skipped_items": [{"file": "/data/raw/P0001.png", "reason": "truncated"}],
        "url": "https://huggingface.co/datasets/x",
        "n": 3,
    }
    public = hub_push._without_local_paths(report, root)
    assert public == {
        "sources": ["dota:scenes/labelTxt?images=scenes/images"],
        "skipped_items": [{"file": "<local>/P0001.png", "reason": "truncated"}],
        "url": "https://huggingface.co/datasets/x",
        "n": 3,
    }


def test_rs_coca_dry_run_ships_the_package_remote_code(tiny_coca_dir, tmp_path, request):
    out = tmp_path / "stage"
    plan = hub_push.stage_model(tiny_coca_dir, out, "hqrs-test/tiny-rs-coca")
    staged = {f.path_in_repo for f in plan.files}
    assert {"configuration_rs_coca.py", "modeling_rs_coca.py", "processing_rs_coca.py"} <= staged
    assert "generation_config.json" in staged and "model.safetensors" in staged
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text"
    assert "trust_remote_code=True" in card.text
    # the usage snippet runs against the staged folder, in a fresh process, offline
    snippet = re.search(r"```python\n(.*?)```", card.text, flags=re.S).group(1)
    workdir = tmp_path / "user"
    workdir.mkdir()
    _scene_image(request.getfixturevalue("rs_real") if _has_rs_real() else None, workdir / "scene.jpg")
    (workdir / "snippet.py").write_text(snippet.replace("hqrs-test/tiny-rs-coca", str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    res = subprocess.run([sys.executable, "snippet.py"], cwd=workdir, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip()  # a caption (random weights: any text)


def test_rs_coca_remote_code_must_equal_the_package(tiny_coca_dir, tmp_path):
    out = tmp_path / "stage"
    hub_push.stage_model(tiny_coca_dir, out, "hqrs-test/tiny-rs-coca")
    with open(out / "modeling_rs_coca.py", "a") as f:
        f.write("\n# edited by hand\n")
    with pytest.raises(ValueError, match="remote code differs from hqrs.modeling/modeling_rs_coca.py"):
        hub_push.check_folder(out, "model")
