"""``hqrs train clip|coca`` and ``hqrs merge-lora`` through their argparse registration."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
import train_fixtures as tf
from transformers import CLIPModel, TrainingArguments

from hqrs.scripts import train as train_cmd


def _parse(argv):
    parser = argparse.ArgumentParser(prog="hqrs")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cmd.register(sub, [])
    return parser.parse_args(argv)


def test_trainer_options_are_training_arguments_fields():
    fields = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    for name, kind, _ in train_cmd.TRAINER_OPTIONS:
        assert name in fields, name
        if kind in (int, float, bool):
            assert kind in (getattr(fields[name].type, "__args__", None) or (fields[name].type,)), name


def test_train_clip_lora_merge_and_merge_lora(tmp_path, rs_real, capsys):
    model_dir = tf.make_tiny_clip_dir(tmp_path / "clip", seed=5)
    data_dir = tf.write_builder_layout(tmp_path / "data", {"pairs": {"train": tf.ucm_pairs(rs_real, 6)}})
    out = tmp_path / "out"
    args = _parse(
        [
            "train",
            "clip",
            "--model",
            str(model_dir),
            "--dataset",
            str(data_dir),
            "--output-dir",
            str(out),
            "--per-device-train-batch-size",
            "4",
            "--max_steps",
            "2",
            "--learning-rate",
            "0.05",
            "--report-to",
            "none",
            "--save-strategy",
            "no",
            "--use-cpu",
            "--disable-tqdm",
            "true",
            "--trainer-arg",
            "adam_beta2=0.98",
            "--augment",
            "--lora",
            "--lora-r",
            "4",
            "--merge",
        ]
    )
    assert args.use_cpu is True and args.disable_tqdm is True and args.report_to == ["none"]
    assert args.func(args) == 0
    printed = capsys.readouterr().out  # the Trainer prints its own log dicts before the summary
    summary = json.loads(printed[printed.index('{\n  "output_dir"') :])
    assert summary["global_step"] == 2 and summary["merged"] == str(out / "merged")
    assert json.loads((out / "training_args.json").read_text())["adam_beta2"] == 0.98
    assert (out / "adapter_model.safetensors").is_file()
    merged = CLIPModel.from_pretrained(out / "merged")
    base = CLIPModel.from_pretrained(model_dir)
    assert any(not torch.equal(merged.state_dict()[k], v) for k, v in base.state_dict().items())

    again = _parse(["merge-lora", str(out), "--out", str(tmp_path / "merged2")])
    assert again.func(again) == 0
    remerged = CLIPModel.from_pretrained(tmp_path / "merged2").state_dict()
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(remerged[key], value, atol=0, rtol=0)


def test_cli_errors(tmp_path):
    args = _parse(
        [
            "train",
            "clip",
            "--model",
            "m",
            "--dataset",
            "d",
            "--output-dir",
            str(tmp_path),
            "--trainer-arg",
            "learning_rat=0.1",
        ]
    )
    with pytest.raises(
        ValueError, match="'learning_rat' is not a TrainingArguments field; did you mean learning_rate"
    ):
        args.func(args)
    args = _parse(
        ["train", "clip", "--model", "m", "--dataset", "d", "--output-dir", str(tmp_path), "--merge"]
    )
    with pytest.raises(ValueError, match="--merge .* needs --lora"):
        args.func(args)
    with pytest.raises(SystemExit):
        _parse(["train", "clip", "--model", "m", "--dataset", "d", "--output-dir", "o", "--bf16", "maybe"])
    args = _parse(["merge-lora", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="not a LoRA adapter folder"):
        args.func(args)
