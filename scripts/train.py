"""``hqrs train clip|coca`` (fine-tune with the transformers Trainer) and ``hqrs merge-lora``.

The options of ``hqrs train clip|coca`` are parsed by ``transformers.HfArgumentParser`` over three
dataclasses: :class:`TrainCommandArguments` (model, data and run options of hqrs),
:class:`~hqrs.modeling.training_lora.LoraArguments` (``--lora-r`` ...) and ``TrainingArguments`` itself, so
every Trainer field is a flag (``--learning-rate`` or ``--learning_rate``). That parser needs transformers,
so it is built only when the command runs or shows its help (``lazy_parser`` of :func:`hqrs.scripts.cli.leaf_parser`);
``hqrs --help`` stays fast. The parsed options are saved with the run (``OUTPUT_DIR/hqrs_train_config.json``,
usable as ``--config-file``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .cli import leaf_parser

logger = logging.getLogger("hqrs.train")

#: Written to the output folder at the start of a run: the options that differ from the defaults, by flag name.
CONFIG_FILE_NAME = "hqrs_train_config.json"

#: TrainingArguments fields hqrs train sets itself (samples stay PIL images until the collator; the image ids
#: are the evaluation labels).
_FORCED = ("remove_unused_columns", "label_names")


@dataclass
class TrainCommandArguments:
    """Model, data and run options of ``hqrs train clip|coca`` (next to LoRA and ``TrainingArguments``)."""

    model: str = field(metadata={"help": "model folder or Hub id (config.json + processor)"})
    dataset: str = field(metadata={"help": "dataset folder (builder export, save_to_disk) or Hub id"})
    config: str = field(default="pairs", metadata={"help": "dataset configuration: pairs or default"})
    split: str = field(default="train", metadata={"help": "training split"})
    eval_split: str | None = field(
        default=None,
        metadata={"help": "held-out data: a split name, or a fraction such as 0.02 of the training images"},
    )
    processor: str | None = field(
        default=None, metadata={"help": "processor folder (default: the model folder)"}
    )
    streaming: bool = field(default=False, metadata={"help": "stream the dataset (needs --max-steps)"})
    augment: bool = field(default=False, metadata={"help": "RS augmentations: flips, 90° turns, random crop"})
    image_column: str = field(default="image", metadata={"help": "image column"})
    caption_column: str | None = field(
        default=None, metadata={"help": "caption column (default: captions, caption or text)"}
    )
    image_id_column: str | None = field(
        default=None, metadata={"help": "column grouping rows of one image (default: image_id)"}
    )
    image_errors: Literal["skip", "raise"] = field(
        default="skip", metadata={"help": "image that fails to load: skip it (counted and logged) or stop"}
    )
    no_gather: bool = field(
        default=False,
        metadata={"help": "contrast each process's batch only (default: gather all processes' features)"},
    )
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (peft) instead of all weights"})
    merge: bool = field(
        default=False, metadata={"help": "after training, write OUTPUT_DIR/merged (needs --lora)"}
    )


def _dataclass_types() -> tuple[type, ...]:
    from transformers import TrainingArguments

    from hqrs.modeling.training_lora import LoraArguments

    return TrainCommandArguments, LoraArguments, TrainingArguments


def _training_fields() -> dict[str, dataclasses.Field]:
    from transformers import TrainingArguments

    return {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}


def train_parser(prog: str) -> argparse.ArgumentParser:
    """The full parser of ``hqrs train clip|coca``: ``HfArgumentParser`` over :func:`_dataclass_types`.

    Each option shows once in the help, in its dashed spelling; the underscore spelling (``--learning_rate``)
    parses too. ``--output-dir`` is required, ``--resume-from-checkpoint`` also takes ``last``, and
    ``--trainer-arg NAME=VALUE`` (repeatable) sets any ``TrainingArguments`` field from a YAML value.
    """
    from transformers import HfArgumentParser

    from .cli import CommandParser

    class TrainParser(CommandParser, HfArgumentParser):
        def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action:
            if "--resume_from_checkpoint" in flags:
                kwargs["help"] = "resume from this checkpoint folder ('last': the newest in --output-dir)"
            if "--output_dir" in flags:
                kwargs["help"] = "checkpoints and the final model (required)"
            if kwargs.get("nargs") == "?" and kwargs.get("const") is True:
                kwargs.setdefault("metavar", "BOOL")  # --bf16 or --bf16 false
            # HfArgumentParser gives "--a_b" and "--a-b": show the dashed one, parse both
            hidden = [f for f in flags if f.startswith("--") and "_" in f and f.replace("_", "-") in flags]
            action = super().add_argument(*(f for f in flags if f not in hidden), **kwargs)
            if hidden:
                alias = dict(kwargs, dest=action.dest, help=argparse.SUPPRESS)
                alias.pop("required", None)
                super().add_argument(*hidden, **alias)
            return action

        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            parsed, rest = super().parse_known_args(args, namespace)
            if getattr(parsed, "output_dir", None) is None:
                self.error("the following arguments are required: --output-dir")
            return parsed, rest

    parser = TrainParser(
        _dataclass_types(),
        prog=prog,
        usage=f"{prog} --model MODEL --dataset DATASET --output-dir DIR [options]",
        description="Options of hqrs (model and data, LoRA) and every transformers TrainingArguments field "
        "(each also in its underscore spelling: --learning_rate for --learning-rate).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--trainer-arg",
        dest="trainer_args",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TrainingArguments field with a YAML value (repeatable), e.g. --trainer-arg adam_beta2=0.98",
    )
    return parser


def _trainer_args(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``--trainer-arg NAME=VALUE`` items (or a mapping from ``--config-file``), checked against the fields."""
    pairs = list(items.items()) if isinstance(items, dict) else []
    for text in items if isinstance(items, list) else []:
        if "=" not in text:
            raise ValueError(f"--trainer-arg takes NAME=VALUE, got {text!r}")
        name, raw = text.split("=", 1)
        try:
            pairs.append((name, yaml.safe_load(raw) if raw.strip() else raw))
        except yaml.YAMLError:
            pairs.append((name, raw))
    fields = _training_fields() if pairs else {}
    values = {}
    for name, value in pairs:
        name = str(name).strip().replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, sorted(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"--trainer-arg {name!r} is not a TrainingArguments field{hint}")
        if name in ("output_dir", *_FORCED):
            raise ValueError(f"--trainer-arg {name!r} is set by hqrs train and cannot be overridden")
        values[name] = value
    return values


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    train = subparsers.add_parser(
        "train",
        help="fine-tune HQRS-CLIP or RS-CoCa with the transformers Trainer",
        description="Fine-tune HQRS-CLIP (transformers CLIPModel) or RS-CoCa on an image-caption dataset "
        "with the transformers Trainer (full or LoRA; torchrun/accelerate for several GPUs).",
    )
    sub = train.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    for kind, what in (("clip", "HQRS-CLIP (a transformers CLIPModel folder)"), ("coca", "RS-CoCa")):
        p = leaf_parser(
            sub,
            kind,
            parents,
            lazy_parser=train_parser,
            help=f"fine-tune {what}",
            description=f"Fine-tune {what}. The loss is the model's own (contrastive"
            + (" + captioning" if kind == "coca" else "")
            + "), gathered over all processes when run with torchrun/accelerate.",
        )
        p.set_defaults(func=run, kind=kind)

    merge = leaf_parser(
        subparsers,
        "merge-lora",
        parents,
        help="fold a LoRA adapter into its base model (a full model that loads without peft)",
        description="Merge the LoRA adapter written by `hqrs train --lora` into its base model.",
    )
    merge.add_argument(
        "adapter_dir", metavar="ADAPTER_DIR", type=Path, help="adapter folder (or a checkpoint-*)"
    )
    merge.add_argument("--out", required=True, type=Path, help="folder for the merged model and processor")
    merge.add_argument(
        "--base", default=None, help="base model folder or Hub id (default: recorded in the adapter)"
    )
    merge.set_defaults(func=run_merge)


def parse_train_arguments(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """``(TrainCommandArguments, LoraArguments, TrainingArguments)`` from a parsed ``hqrs train`` namespace."""
    from transformers import HfArgumentParser

    values = dict(vars(args))
    values.update(_trainer_args(values.pop("trainer_args", None)))
    values["output_dir"] = str(values["output_dir"])
    values.pop("resume_from_checkpoint", None)  # hqrs resolves it (``last``) and hands it to train()
    values.update(remove_unused_columns=False, label_names=["image_ids"])
    types = _dataclass_types()
    try:
        command, lora, training_args = HfArgumentParser(types).parse_dict(values, allow_extra_keys=True)
    except ValueError as exc:  # a check in a dataclass's __post_init__: name the flag, not the field
        raise ValueError(flag_message(str(exc), types)) from None
    _check_report_to(training_args.report_to)
    _check_command(command)
    _check_training(training_args)
    return command, lora, training_args


def _check_training(training_args: Any) -> None:
    """Values transformers accepts (or rejects only once the model is loaded) that cannot train a model."""
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise ValueError(
            f"--num-train-epochs {training_args.num_train_epochs:g} trains nothing: give --num-train-epochs > 0 "
            "or --max-steps > 0"
        )
    if training_args.learning_rate < 0:
        raise ValueError(f"--learning-rate must be >= 0, got {training_args.learning_rate:g}")
    for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(training_args, flag)
        if value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def _check_command(command: TrainCommandArguments) -> None:
    """Checks across hqrs's own options, before anything loads."""
    if command.merge and not command.lora:
        raise ValueError("--merge folds LoRA adapters into the model; it needs --lora")
    fraction = _eval_split(command.eval_split)
    if isinstance(fraction, float):
        if not 0.0 < fraction < 1.0:
            raise ValueError(
                f"--eval-split {command.eval_split!r}: a fraction of the training images must be in (0, 1); "
                "or name a split"
            )
        if command.streaming:
            raise ValueError(
                f"--eval-split {command.eval_split!r} holds out a fraction of the images, which needs the "
                "whole dataset: drop --streaming or name an eval split"
            )


def flag_message(message: str, types: tuple[type, ...]) -> str:
    """``message`` of a dataclass check on one line, with its fields named as ``hqrs train`` flags.

    ``LoraArguments.lora_r``, ``--load_best_model_at_end`` and a bare field name with ``_`` or a digit
    (``warmup_steps``, ``fp16``) become ``--lora-r``, ``--load-best-model-at-end``, ``--warmup-steps``;
    plain words (``model``, ``seed``) are left alone unless prefixed.
    """
    names = {f.name for t in types for f in dataclasses.fields(t) if f.init}
    owners = "|".join(t.__name__ for t in types)

    def flag(match: re.Match) -> str:
        name, prefixed = match.group(2), bool(match.group(1))
        if name in names and (prefixed or re.search(r"[_0-9]", name)):
            return "--" + name.replace("_", "-")
        return match.group(0)

    text = re.sub(rf"(?<![\w.-])((?:{owners})\.|--)?([A-Za-z_]\w*)(?![\w-])", flag, message)
    return " ".join(text.split())


def _check_report_to(report_to: Any) -> None:
    """``--report-to`` names transformers integrations (its ``INTEGRATION_TO_CALLBACK``): checked before the
    model loads, not when the Trainer is built."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        valid = ", ".join(["all", "none", *sorted(INTEGRATION_TO_CALLBACK)])
        raise ValueError(
            f"--report-to {', '.join(map(repr, unknown))}: not an integration; valid values: {valid}"
        )


def _saved_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options of this run that differ from the defaults, by flag name (a ``--config-file`` of the run)."""
    names = {f.name for t in _dataclass_types() for f in dataclasses.fields(t) if f.init}
    values = {name: getattr(args, name) for name in names if hasattr(args, name) and name not in _FORCED}
    values.update(_trainer_args(getattr(args, "trainer_args", None)))
    defaults: dict[str, Any] = {}
    for action in parser.options:  # a string default is parsed by the option's type, as argparse does
        default = action.default
        if isinstance(default, str) and callable(action.type) and action.nargs not in ("+", "*"):
            try:
                default = action.type(default)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                pass
        defaults.setdefault(action.dest, default)
    return {
        name.replace("_", "-"): str(value) if isinstance(value, Path) else value
        for name, value in sorted(values.items())
        if value != defaults.get(name)
    }


def _resume_target(value: str | None) -> str | bool | None:
    if value is None:
        return None
    if str(value).lower() in ("last", "latest", "true"):
        return True
    if not Path(value).is_dir():
        raise ValueError(
            f"--resume-from-checkpoint {value!r} is not a folder; give a checkpoint-* folder or 'last'"
        )
    return str(value)


def _eval_split(text: str | None) -> str | float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def run(args: argparse.Namespace) -> int:
    from hqrs.modeling.training import build_trainer, refuse_unsafe_pickles
    from hqrs.modeling.training_data import DataOptions
    from hqrs.modeling.training_lora import merge_lora

    command, lora, training_args = parse_train_arguments(args)
    resume = _resume_target(getattr(args, "resume_from_checkpoint", None))
    output_dir = Path(training_args.output_dir)
    data = DataOptions(
        image_column=command.image_column,
        caption_column=command.caption_column,
        image_id_column=command.image_id_column,
        image_errors=command.image_errors,
        seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
    )
    with refuse_unsafe_pickles(command.model):  # a pickled pytorch_model.bin in the model folder
        trainer = build_trainer(
            args.kind,
            command.model,
            command.dataset,
            config=command.config,
            split=command.split,
            eval_split=_eval_split(command.eval_split),
            training_args=training_args,
            processor=command.processor,
            lora=lora if command.lora else None,
            augment=command.augment,
            data=data,
            streaming=command.streaming,
            gather_with_grad=not command.no_gather,
        )
    try:
        if trainer.is_world_process_zero():
            output_dir.mkdir(parents=True, exist_ok=True)
            config = _saved_config(args, train_parser("hqrs train"))
            text = json.dumps(config, indent=2, sort_keys=True, default=str)
            (output_dir / CONFIG_FILE_NAME).write_text(text + "\n", encoding="utf-8")
        with refuse_unsafe_pickles(resume if isinstance(resume, str) else output_dir):
            result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        if trainer.is_world_process_zero():
            summary = {"output_dir": str(output_dir), "global_step": trainer.state.global_step}
            summary.update({k: round(v, 6) if isinstance(v, float) else v for k, v in result.metrics.items()})
            if command.merge:
                merged = merge_lora(output_dir, output_dir / "merged", base_model=command.model)
                summary["merged"] = str(merged)
            print(json.dumps(summary, indent=2))
    finally:
        # Under torchrun, a gloo/NCCL process group left alive at interpreter exit can abort the
        # process ("terminate called without an active exception") after the work is done.
        trainer.accelerator.end_training()
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from hqrs.modeling.training import refuse_unsafe_pickles
    from hqrs.modeling.training_lora import merge_lora

    with refuse_unsafe_pickles(args.adapter_dir):
        out = merge_lora(args.adapter_dir, args.out, base_model=args.base)
    print(f"merged model written to {out}")
    return 0
