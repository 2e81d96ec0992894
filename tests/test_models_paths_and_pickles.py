"""Local paths are local errors at once, adapters find their base (#15.7); pickles are clear errors (#12.8).

All through ``hqrs.scripts.cli.main`` (one ``hqrs: error:`` line, no traceback), on tiny real models.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import train_fixtures as tf

from hqrs.scripts import cli


class _RunsCode:
    """A pickle payload that would create a file if unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _train_clip(model_dir, data_dir, out, *extra) -> int:
    return cli.main(
        ["train", "clip", "--model", str(model_dir), "--dataset", str(data_dir), "--output-dir", str(out)]
        + ["--per-device-train-batch-size", "4", "--report-to", "none", "--use-cpu", "--disable-tqdm", "true"]
        + list(extra)
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, rs_real):
    """A LoRA adapter trained from a relative --model path, one checkpoint per step."""
    root = tmp_path_factory.mktemp("lora_run")
    tf.make_tiny_clip_dir(root / "base", seed=1)
    tf.write_builder_layout(root / "data", {"pairs": {"train": tf.ucm_pairs(rs_real, 4)}})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = _train_clip("base", "data", "runs/lora", "--max_steps", "1", "--save-steps", "1", "--lora")
    finally:
        os.chdir(cwd)
    assert code == 0
    return root


@pytest.mark.parametrize("kind", ["clip", "coca"])
def test_missing_local_model_fails_at_once_without_the_hub(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # no offline shortcut: the check must come first
    import hqrs.modeling.training  # noqa: F401  (imports are not what is timed)

    for missing in ("./no-such-model", "runs/missing/model", "../nowhere", str(tmp_path / "abs")):
        start = time.monotonic()
        code = cli.main(["train", kind, "--model", missing, "--dataset", ".", "--output-dir", "o"])
        err = capsys.readouterr().err
        assert code == 1 and time.monotonic() - start < 10, err
        assert err.startswith("hqrs: error:") and "does not exist" in err and repr(missing) in err
        assert "huggingface.co" not in err


def test_adapter_records_its_base_relative_to_itself(lora_run, tmp_path, monkeypatch, capsys):
    adapter = lora_run / "runs" / "lora"
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == os.path.join("..", "..", "base")
    checkpoint = json.loads((adapter / "checkpoint-1" / "adapter_config.json").read_text())
    assert checkpoint["base_model_name_or_path"] == os.path.join("..", "..", "..", "base")
    # merge-lora from another working directory finds the base next to the adapter
    monkeypatch.chdir(tmp_path)
    assert cli.main(["merge-lora", str(adapter), "--out", "merged"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_missing_recorded_base_suggests_base_option(lora_run, tmp_path, monkeypatch, capsys):
    adapter = tmp_path / "moved"
    shutil.copytree(lora_run / "runs" / "lora", adapter, ignore=shutil.ignore_patterns("checkpoint-*"))
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert cli.main(["merge-lora", str(adapter), "--out", "m"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert time.monotonic() - start < 10 and "huggingface.co" not in err
    assert err.startswith("hqrs: error:") and "--base" in err and "../../base" in err
    assert cli.main(["merge-lora", str(adapter), "--out", "m", "--base", str(lora_run / "base")]) == 0
    assert cli.main(["merge-lora", str(adapter), "--out", "m2", "--base", "./gone"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_pickled_adapter_is_a_clear_error_and_runs_nothing(lora_run, tmp_path, capsys):
    adapter = tmp_path / "evil"
    shutil.copytree(lora_run / "runs" / "lora", adapter, ignore=shutil.ignore_patterns("checkpoint-*"))
    (adapter / "adapter_model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"base_model.model.x": _RunsCode(marker)}, adapter / "adapter_model.bin")
    code = cli.main(
        ["merge-lora", str(adapter), "--out", str(tmp_path / "m"), "--base", str(lora_run / "base")]
    )
    err = capsys.readouterr().err
    assert code == 1 and not marker.exists()
    err = err.splitlines()[-1]
    assert (
        err.startswith("hqrs: error:")
        and "posix.system" in err
        and "weights-only" in err
        and str(adapter) in err
    )
    assert "weights_only=False" not in err and "Traceback" not in err


def test_pickled_checkpoint_is_a_clear_error_and_runs_nothing(lora_run, tmp_path, capsys):
    out = tmp_path / "full"
    assert (
        _train_clip(lora_run / "base", lora_run / "data", out, "--max_steps", "1", "--save-steps", "1") == 0
    )
    checkpoint = out / "checkpoint-1"
    marker = tmp_path / "ran"
    for name in ("rng_state.pth", "optimizer.pt", "scheduler.pt"):
        if (checkpoint / name).exists():
            torch.save({"state": _RunsCode(marker)}, checkpoint / name)
    code = _train_clip(
        lora_run / "base",
        lora_run / "data",
        out,
        "--max_steps",
        "2",
        "--resume-from-checkpoint",
        str(checkpoint),
    )
    err = capsys.readouterr().err
    assert code == 1 and not marker.exists(), err
    err = err.splitlines()[-1]
    assert (
        err.startswith("hqrs: error:")
        and "posix.system" in err
        and "weights-only" in err
        and str(checkpoint) in err
    )


@pytest.fixture
def tampered_coca(tmp_path):
    """An RS-CoCa folder whose modeling_rs_coca.py writes a marker file when imported."""
    from tiny_models import tiny_coca_dir

    folder = tiny_coca_dir(tmp_path / "coca")
    marker = tmp_path / "folder-code-ran"
    for name in ("modeling_rs_coca.py", "configuration_rs_coca.py", "processing_rs_coca.py"):
        with open(folder / name, "a", encoding="utf-8") as fh:
            fh.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def test_convert_to_open_clip_never_runs_folder_code(tampered_coca, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder, marker = tampered_coca
    out = tmp_path / "back.safetensors"
    assert cli.main(["convert", "to-open-clip", str(folder), "--out", str(out)]) == 0
    assert out.is_file() and not marker.exists()


def test_eval_loads_known_folders_with_package_classes(tampered_coca, tmp_path, monkeypatch):
    from hqrs.evaluation.encoders import DualEncoder
    from hqrs.modeling.modeling_rs_coca import RSCoCaModel

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder, marker = tampered_coca
    for trust in (False, True):
        encoder = DualEncoder.from_pretrained(folder, device="cpu", trust_remote_code=trust)
        assert type(encoder.model) is RSCoCaModel and not marker.exists()


def test_pickled_model_weights_are_a_clear_error_and_run_nothing(lora_run, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(lora_run / "base", model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"logit_scale": _RunsCode(marker)}, model_dir / "pytorch_model.bin")
    code = _train_clip(model_dir, lora_run / "data", tmp_path / "out", "--max_steps", "1")
    err = capsys.readouterr().err.splitlines()[-1]
    assert code == 1 and not marker.exists()
    assert err.startswith("hqrs: error:") and "posix.system" in err and str(model_dir) in err
