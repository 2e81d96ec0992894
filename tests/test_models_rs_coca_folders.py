"""Every RS-CoCa folder hqrs writes loads without hqrs (#15.1); no command prompts (#15.4); local paths (#15.7).

Folders: ``hqrs train coca`` output and its ``checkpoint-N``, the LoRA adapter's ``--merge`` folder and a
``merge-lora`` folder, ``hqrs convert``'s folder (``save_hf_coca``) and ``hqrs push --dry-run``'s staged
folder. Each is copied to a new place and loaded with ``AutoModel``, ``AutoModelForImageTextToText`` and
``AutoProcessor`` (``trust_remote_code=True``) in a fresh interpreter in which ``hqrs`` cannot be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import train_fixtures as tf

from hqrs.modeling.rs_coca_files import REMOTE_CODE_FILES

HQRS = str(Path(sys.executable).with_name("hqrs"))

_LOAD_WITHOUT_HQRS = textwrap.dedent(
    """
    import importlib.abc, importlib.util, json, sys

    class NoHqrs(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hqrs" or name.startswith("hqrs."):
                raise ImportError("hqrs is not importable in this process: " + name)

    sys.meta_path.insert(0, NoHqrs())
    try:
        importlib.import_module("hqrs")
        raise SystemExit("hqrs is importable")
    except ImportError:
        pass
    import torch
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    results = {}
    for folder in sys.argv[1:]:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        captioner = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        size = model.config.vision_config.image_size
        inputs = processor(text=["a red roof!"], return_tensors="pt")
        with torch.no_grad():
            tokens = captioner.generate(pixel_values=torch.zeros(1, 3, size, size), num_beams=1, max_new_tokens=3)
        results[folder] = {
            "model": type(model).__module__ + "." + type(model).__name__,
            "captioner": type(captioner).__name__,
            "processor": type(processor).__name__,
            "ids": inputs["input_ids"][0][:6].tolist(),
            "generated": tokens.shape[1],
        }
    results["hqrs_loaded"] = any(m == "hqrs" or m.startswith("hqrs.") for m in sys.modules)
    print(json.dumps(results))
    """
)


def _load_without_hqrs(folders: list[Path], tmp_path: Path) -> dict:
    """Copy each folder to ``tmp_path/copies`` and load the copies in a fresh interpreter without hqrs."""
    copies = []
    for i, folder in enumerate(folders):
        target = tmp_path / "copies" / f"{i}-{folder.name}"
        shutil.copytree(folder, target)
        copies.append(target)
    script = tmp_path / "load_without_hqrs.py"
    script.write_text(_LOAD_WITHOUT_HQRS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-I", str(script), *map(str, copies)],
        cwd=tmp_path / "copies",
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("hqrs_loaded") is False
    return {Path(k).name.split("-", 1)[1] if "-" in Path(k).name else k: v for k, v in result.items()}


def _hqrs(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the ``hqrs`` CLI with stdin closed (nothing may prompt) and the Hub unreachable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [HQRS, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def coca_runs(tmp_path_factory, rs_real):
    """``hqrs train coca`` with checkpoints (a subprocess, stdin closed) and ``--lora --merge`` (in process)."""
    import torch

    from hqrs.modeling.convert_rs_coca import save_hf_coca
    from hqrs.modeling.modeling_rs_coca import RSCoCaModel
    from hqrs.scripts import cli

    root = tmp_path_factory.mktemp("coca_runs")
    torch.manual_seed(3)
    model_dir = save_hf_coca(RSCoCaModel(tf.tiny_coca_config()), tf.tiny_coca_processor(), root / "base")
    data_dir = tf.write_builder_layout(root / "data", {"pairs": {"train": tf.ucm_pairs(rs_real, 4)}})
    common = ["--dataset", str(data_dir), "--per-device-train-batch-size", "4", "--max_steps", "2"]
    common += ["--report-to", "none", "--use-cpu", "--disable-tqdm", "true"]
    full = _hqrs(
        ["train", "coca", "--model", str(model_dir), "--output-dir", str(root / "full"), *common]
        + ["--save-strategy", "steps", "--save-steps", "1"],
        cwd=root,
    )
    lora_args = ["train", "coca", "--model", str(model_dir), "--output-dir", str(root / "lora"), *common]
    assert cli.main([*lora_args, "--save-strategy", "no", "--lora", "--lora-r", "4", "--merge"]) == 0
    return root, model_dir, full


def test_train_coca_never_prompts(coca_runs):
    _, _, full = coca_runs
    assert full.returncode == 0, full.stderr[-3000:]
    assert "Do you wish to run the custom code" not in full.stdout + full.stderr


def test_every_rs_coca_folder_loads_without_hqrs(coca_runs, tmp_path):
    from hqrs.hub_cards.push import stage_model

    root, model_dir, full = coca_runs
    assert full.returncode == 0, full.stderr[-3000:]
    # merge-lora run from another directory, with the adapter's recorded (absolute) base
    merged2 = _hqrs(["merge-lora", str(root / "lora"), "--out", str(tmp_path / "merged2")], cwd=tmp_path)
    assert merged2.returncode == 0, merged2.stderr[-3000:]
    stage_model(root / "full", tmp_path / "staged", "someone/rs-coca-tiny")

    folders = {
        "converted": model_dir,
        "full": root / "full",
        "checkpoint-2": root / "full" / "checkpoint-2",
        "merged": root / "lora" / "merged",
        "merged2": tmp_path / "merged2",
        "staged": tmp_path / "staged",
    }
    for name, folder in folders.items():
        names = {p.name for p in folder.iterdir()}
        assert set(REMOTE_CODE_FILES) <= names, (name, sorted(names))
        processor_config = json.loads((folder / "processor_config.json").read_text())
        assert processor_config["auto_map"]["AutoProcessor"] == "processing_rs_coca.RSCoCaProcessor", name
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_rs_coca.RSCoCaModel", name
    loaded = _load_without_hqrs(list(folders.values()), tmp_path)
    assert len(loaded) == len(folders)
    for name, result in loaded.items():
        assert result["model"].startswith("transformers_modules.") and result["model"].endswith("RSCoCaModel")
        assert result["captioner"] == "RSCoCaModel" and result["processor"] == "RSCoCaProcessor", name
        assert result["ids"] == [49406, 320, 736, 6449, 256, 49407], name  # "!" stays text everywhere


def test_hqrs_loads_rs_coca_folders_with_its_own_classes(coca_runs):
    from transformers import AutoModel, AutoProcessor

    from hqrs.modeling.loading import register_rs_coca_auto_classes
    from hqrs.modeling.modeling_rs_coca import RSCoCaModel
    from hqrs.modeling.processing_rs_coca import RSCoCaProcessor

    root, *_ = coca_runs
    register_rs_coca_auto_classes()
    # even with trust_remote_code=True the folder's own files are not imported: hqrs' classes load it
    model = AutoModel.from_pretrained(root / "full", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(root / "full", trust_remote_code=True)
    assert type(model) is RSCoCaModel and type(processor) is RSCoCaProcessor


def test_rs_coca_processor_loads_its_tokenizer_without_the_model_config(tmp_path):
    """#15.12: ``RSCoCaProcessor.from_pretrained`` in a process where ``rs_coca`` is not registered asked
    "Do you wish to run the custom code? [y/N]" and warned "model of type `rs_coca` to instantiate a model of
    type ``" (transformers' AutoTokenizer read config.json to choose the tokenizer class)."""
    from hqrs.modeling.rs_coca_files import save_rs_coca_remote_code

    folder = tf.make_tiny_coca_dir(tmp_path / "coca")
    save_rs_coca_remote_code(folder)
    code = textwrap.dedent(
        """
        import sys
        from hqrs.modeling.processing_rs_coca import RSCoCaProcessor
        p = RSCoCaProcessor.from_pretrained(sys.argv[1])
        print(type(p.tokenizer).__name__, p(text=["a red roof!"])["input_ids"][0][:6])
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "of type" not in res.stderr and "[y/N]" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert res.stdout.split()[0] == "CLIPTokenizer"
    assert res.stdout.strip().endswith("[49406, 320, 736, 6449, 256, 49407]")
