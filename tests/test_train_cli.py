"""``hqrs train clip|coca`` (HfArgumentParser over hqrs's dataclasses + TrainingArguments) and ``hqrs merge-lora``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import train_fixtures as tf
from transformers import CLIPModel, TrainingArguments

from hqrs.modeling.training_lora import LoraArguments
from hqrs.scripts import cli
from hqrs.scripts import train as train_cmd


def _parse(argv):
    return cli.parse_args(argv)


def test_every_training_arguments_field_is_an_option_in_both_spellings():
    """#16.6: the options come from the dataclasses (HfArgumentParser), not from a hand-kept list."""
    parser = train_cmd.train_parser("hqrs train clip")
    flags = {flag for action in parser.options for flag in action.option_strings}
    for f in dataclasses.fields(TrainingArguments):
        if f.init:
            assert {f"--{f.name}", f"--{f.name.replace('_', '-')}"} <= flags, f.name
    base = ["--model", "m", "--dataset", "d", "--output-dir", "o"]
    args = parser.parse_args([*base, "--adam-beta2", "0.9", "--lora_r", "8", "--image-errors", "raise"])
    assert (args.adam_beta2, args.lora_r, args.image_errors) == (0.9, 8, "raise")
    help_text = parser.format_help()
    assert "--adam-beta2" in help_text and "--adam_beta2" not in help_text  # each option shown once


def test_lora_defaults_live_in_one_dataclass():
    """#16.6: LoRA defaults are LoraArguments' fields: the CLI's defaults are read from them."""
    parser = train_cmd.train_parser("hqrs train clip")
    for f in dataclasses.fields(LoraArguments):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert parser.get_default(f.name) == default, f.name
    assert LoraArguments(lora_target_modules="q_proj,v_proj").lora_target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="lora_r must be a positive int, got 0"):
        LoraArguments(lora_r=0)


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
    assert args.use_cpu is True and args.disable_tqdm is True and args.report_to == "none"
    assert args.func(args) == 0
    printed = capsys.readouterr().out  # the Trainer prints its own log dicts before the summary
    summary = json.loads(printed[printed.index('{\n  "output_dir"') :])
    assert summary["global_step"] == 2 and summary["merged"] == str(out / "merged")
    assert json.loads((out / "training_args.json").read_text())["adam_beta2"] == 0.98
    # the run's options are saved with it, as a --config-file that reproduces them
    saved = json.loads((out / train_cmd.CONFIG_FILE_NAME).read_text())
    assert saved["lora-r"] == 4 and saved["adam-beta2"] == 0.98 and saved["max-steps"] == 2 and saved["merge"]
    again = cli.parse_args(["train", "clip", "--config-file", str(out / train_cmd.CONFIG_FILE_NAME)])
    assert (again.model, again.output_dir, again.lora_r, again.adam_beta2) == (
        str(model_dir),
        str(out),
        4,
        0.98,
    )
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
    with pytest.raises(SystemExit):
        _parse(["train", "clip", "--model", "m", "--dataset", "d"])  # --output-dir is required
    args = _parse(["merge-lora", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="not a LoRA adapter folder"):
        args.func(args)


def test_training_and_cli_use_no_private_library_names():
    """#16.5: no ``obj._name`` of argparse/Trainer (``parser._actions``, ``Trainer._save``, ...) in these modules."""
    import ast
    from pathlib import Path

    import hqrs.modeling.training as training
    import hqrs.modeling.training_lora as training_lora

    for module in (cli, train_cmd, training, training_lora):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        private = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        }
        private |= {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef)
            and node.name.startswith("_")
            and not node.name.startswith("__")
            if any(isinstance(p, ast.ClassDef) and node in p.body for p in ast.walk(tree))
        }
        assert private == set(), f"{module.__name__}: {sorted(private)}"


def test_config_file_for_train_checks_types_and_names(tmp_path, capsys):
    """--config-file keys of hqrs train are the HfArgumentParser options; a bad value or key names itself."""
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        "model: m\ndataset: d\noutput_dir: o\nlearning-rate: 0.25\nlora-target-modules: [q_proj]\n"
    )
    args = cli.parse_args(["train", "coca", "--config-file", str(cfg), "--learning_rate", "0.5"])
    assert (args.learning_rate, args.lora_target_modules, args.kind) == (0.5, ["q_proj"], "coca")
    cfg.write_text("model: m\nlearning-rate: fast\n")
    assert cli.main(["train", "clip", "--config-file", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hqrs: error:") and "learning-rate='fast'" in err and str(cfg) in err
    cfg.write_text("model: m\nlearnig-rate: 1\n")
    assert cli.main(["train", "clip", "--config-file", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'learnig-rate'" in err and "learning-rate" in err and "learning_rate" not in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lora-r", "0"], "--lora-r must be a positive int, got 0"),
        (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
        (["--warmup-steps", "-1"], "Got --warmup-steps = -1.0, Expected value --warmup-steps >= 0"),
        (
            ["--eval-strategy", "steps", "--save-strategy", "epoch", "--load-best-model-at-end"],
            "--load-best-model-at-end requires the save and eval strategy to match, except when "
            '--save-strategy="best", but found - Evaluation strategy: IntervalStrategy.STEPS '
            "- Save strategy: SaveStrategy.EPOCH",
        ),
        (
            ["--report-to", "wandbx"],
            "--report-to 'wandbx': not an integration; valid values: all, none, azure_ml, clearml, codecarbon, "
            "comet_ml, dagshub, dvclive, flyte, kubeflow, mlflow, neptune, swanlab, tensorboard, trackio, wandb",
        ),
        (
            ["--eval-split", "1.5"],
            "--eval-split '1.5': a fraction of the training images must be in (0, 1); or name a split",
        ),
        (
            ["--eval-split", "0.1", "--streaming", "--max-steps", "2"],
            "--eval-split '0.1' holds out a fraction of the images, which needs the whole dataset: drop "
            "--streaming or name an eval split",
        ),
        (["--merge"], "--merge folds LoRA adapters into the model; it needs --lora"),
        (
            ["--num-train-epochs", "0"],
            "--num-train-epochs 0 trains nothing: give --num-train-epochs > 0 or --max-steps > 0",
        ),
        (["--learning-rate", "-1"], "--learning-rate must be >= 0, got -1"),
        (["--per-device-train-batch-size", "0"], "--per-device-train-batch-size must be >= 1, got 0"),
        (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be >= 1, got 0"),
    ],
)
def test_option_errors_name_the_flag_before_the_model_loads(tmp_path, capsys, options, message):
    """Every check of a dataclass field while parsing `hqrs train` names the flag (not `LoraArguments.lora_r`),
    on one line, before the model loads: the model folder here does not exist, which would be the error
    if the option were checked later."""
    if "wandbx" in message:  # the valid values are transformers' own list of integrations
        from transformers.integrations import INTEGRATION_TO_CALLBACK

        assert message.endswith(", ".join(sorted(INTEGRATION_TO_CALLBACK)))
    missing, out = tmp_path / "no-model", tmp_path / "out"
    argv = ["train", "clip", "--model", str(missing), "--dataset", str(tmp_path), "--output-dir", str(out)]
    assert cli.main([*argv, *options]) == 1
    assert capsys.readouterr().err == f"hqrs: error: {message}\n"
    assert not out.exists()


def test_flag_message_rewrites_fields_not_words():
    types = train_cmd._dataclass_types()
    text = "LoraArguments.lora_r and --save_steps and fp16 and model and seed and self.lora_r and IntervalStrategy.STEPS"
    assert train_cmd.flag_message(text, types) == (
        "--lora-r and --save-steps and --fp16 and model and seed and self.lora_r and IntervalStrategy.STEPS"
    )


def test_build_trainer_refuses_a_fraction_of_a_stream_before_loading(tmp_path):
    from hqrs.modeling.training import build_trainer

    with pytest.raises(
        ValueError, match=r"^a fractional eval_split needs a map-style dataset; name an eval split"
    ):
        build_trainer(
            "clip",
            str(tmp_path / "no-model"),  # loading it would fail with another error
            str(tmp_path),
            eval_split=0.1,
            streaming=True,
            training_args={"output_dir": str(tmp_path / "out"), "max_steps": 2, "use_cpu": True},
        )
