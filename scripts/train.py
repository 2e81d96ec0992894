"""``hqrs train clip|coca`` (fine-tune with the transformers Trainer) and ``hqrs merge-lora``.

Trainer options pass through to ``transformers.TrainingArguments``: the common ones are flags of
their own (``--per-device-train-batch-size``, ``--learning-rate``, ``--num-train-epochs``, ``--bf16``,
``--gradient-accumulation-steps``, ``--report-to``, ``--eval-strategy``, ...; underscores work too),
and any other field goes through ``--trainer-arg NAME=VALUE`` (repeatable). They are checked against
``TrainingArguments`` when the command runs, so parsing ``hqrs`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from .cli import leaf_parser

logger = logging.getLogger("hqrs.train")

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


# Common TrainingArguments fields with their own flag: (field, type, help). ``bool`` fields are
# flags that also take an explicit value (``--bf16`` / ``--bf16 false``); ``list`` takes 1+ values.
TRAINER_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("per_device_train_batch_size", int, "batch size per device (process) for training"),
    ("per_device_eval_batch_size", int, "batch size per device for evaluation"),
    ("gradient_accumulation_steps", int, "optimizer step every N batches"),
    ("learning_rate", float, "peak learning rate"),
    ("weight_decay", float, "AdamW weight decay"),
    ("max_grad_norm", float, "gradient clipping norm"),
    ("num_train_epochs", float, "number of epochs (ignored when --max-steps > 0)"),
    ("max_steps", int, "number of optimizer steps (required with --streaming)"),
    ("warmup_steps", float, "warmup steps (a value < 1 is a fraction of the training steps)"),
    ("lr_scheduler_type", str, "learning-rate schedule (linear, cosine, constant, ...)"),
    ("optim", str, "optimizer name (adamw_torch, adamw_torch_fused, sgd, ...)"),
    ("bf16", bool, "bfloat16 mixed precision"),
    ("fp16", bool, "float16 mixed precision"),
    ("tf32", bool, "TF32 matmuls on Ampere+ GPUs"),
    ("gradient_checkpointing", bool, "recompute activations to save memory"),
    ("torch_compile", bool, "compile the model with torch.compile"),
    ("seed", int, "random seed (model init, sampler, caption draw and augmentations)"),
    ("data_seed", int, "seed of the data order/caption draw (default: --seed)"),
    ("dataloader_num_workers", int, "data-loading worker processes"),
    ("logging_steps", float, "log every N steps"),
    ("logging_strategy", str, "no, steps or epoch"),
    ("eval_strategy", str, "no, steps or epoch (needs --eval-split)"),
    ("eval_steps", float, "evaluate every N steps"),
    ("eval_on_start", bool, "evaluate before the first step"),
    ("save_strategy", str, "no, steps, epoch or best"),
    ("save_steps", float, "checkpoint every N steps"),
    ("save_total_limit", int, "keep at most N checkpoints"),
    ("load_best_model_at_end", bool, "reload the best checkpoint at the end"),
    ("metric_for_best_model", str, "e.g. mean_recall"),
    ("report_to", list, "trackers: none, tensorboard, wandb, trackio, ..."),
    ("run_name", str, "run name for the trackers"),
    ("use_cpu", bool, "train on CPU even where an accelerator exists"),
    ("ddp_backend", str, "nccl, gloo, ..."),
    ("deepspeed", str, "DeepSpeed JSON config file"),
    ("fsdp", str, "FSDP options (e.g. 'full_shard auto_wrap')"),
    ("push_to_hub", bool, "push the final model to the Hub"),
    ("hub_model_id", str, "Hub repository of --push-to-hub"),
    ("disable_tqdm", bool, "no progress bars"),
    ("resume_from_checkpoint", str, "resume from this checkpoint folder ('last': newest in --output-dir)"),
)
_TRAINER_DESTS = tuple(name for name, _, _ in TRAINER_OPTIONS)


def _trainer_arg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--trainer-arg takes NAME=VALUE, got {text!r}")
    name, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return name.strip().replace("-", "_"), value


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
            help=f"fine-tune {what}",
            description=f"Fine-tune {what}. The loss is the model's own (contrastive"
            + (" + captioning" if kind == "coca" else "")
            + "), gathered over all processes when run with torchrun/accelerate.",
        )
        _add_train_arguments(p)
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


_METAVAR = {int: "N", float: "X", str: "VALUE"}


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("model and data")
    data.add_argument("--model", required=True, help="model folder or Hub id (config.json + processor)")
    data.add_argument(
        "--dataset", required=True, help="dataset folder (builder export, save_to_disk) or Hub id"
    )
    data.add_argument("--config", default="pairs", help="dataset configuration: pairs (default) or default")
    data.add_argument("--split", default="train", help="training split (default: train)")
    data.add_argument(
        "--eval-split",
        default=None,
        help="held-out data: a split name, or a fraction such as 0.02 of the training images",
    )
    data.add_argument("--output-dir", required=True, type=Path, help="checkpoints and the final model")
    data.add_argument("--processor", default=None, help="processor folder (default: the model folder)")
    data.add_argument("--streaming", action="store_true", help="stream the dataset (needs --max-steps)")
    data.add_argument(
        "--augment", action="store_true", help="RS augmentations: flips, 90° turns, random crop"
    )
    data.add_argument("--image-column", default="image", help="image column (default: image)")
    data.add_argument(
        "--caption-column", default=None, help="caption column (default: captions, caption or text)"
    )
    data.add_argument(
        "--image-id-column", default=None, help="column grouping rows of one image (default: image_id)"
    )
    data.add_argument(
        "--image-errors",
        choices=("skip", "raise"),
        default="skip",
        help="image that fails to load: skip it (counted and logged) or stop",
    )
    data.add_argument(
        "--no-gather",
        action="store_true",
        help="contrast each process's batch only (default: gather features of all processes, as open_clip)",
    )

    lora = p.add_argument_group("LoRA (peft)")
    lora.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all weights")
    lora.add_argument("--lora-r", type=int, default=16, help="adapter rank (default: 16)")
    lora.add_argument("--lora-alpha", type=float, default=32, help="LoRA alpha (default: 32)")
    lora.add_argument("--lora-dropout", type=float, default=0.0, help="adapter dropout (default: 0)")
    lora.add_argument(
        "--lora-target-modules",
        default="q_proj,k_proj,v_proj,out_proj,fc1,fc2",
        help="comma-separated linear layer names (default: attention and MLP projections)",
    )
    lora.add_argument(
        "--merge", action="store_true", help="after training, write OUTPUT_DIR/merged (needs --lora)"
    )

    group = p.add_argument_group(
        "Trainer arguments (transformers.TrainingArguments)",
        "each option also takes TrainingArguments' own spelling (--learning_rate for --learning-rate)",
    )
    for name, kind, help_text in TRAINER_OPTIONS:
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if kind is bool:
            kwargs.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        elif kind is list:
            kwargs.update(nargs="+", metavar="NAME")
        else:
            kwargs.update(type=kind, metavar=_METAVAR.get(kind, "VALUE"))
        dashed = f"--{name.replace('_', '-')}"
        group.add_argument(dashed, help=help_text, **kwargs)
        if dashed != f"--{name}":  # TrainingArguments' own spelling parses too, without a second help line
            group.add_argument(f"--{name}", help=argparse.SUPPRESS, **kwargs)
    group.add_argument(
        "--trainer-arg",
        dest="trainer_args",
        action="append",
        type=_trainer_arg,
        default=[],
        metavar="NAME=VALUE",
        help="any other TrainingArguments field (repeatable), e.g. --trainer-arg adam_beta2=0.98",
    )


def _training_arguments(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    values = {name: getattr(args, name) for name in _TRAINER_DESTS if hasattr(args, name)}
    extra = args.trainer_args
    if isinstance(extra, dict):  # from --config-file
        extra = list(extra.items())
    for item in extra or []:
        name, value = _trainer_arg(item) if isinstance(item, str) else item
        if name not in fields:
            close = difflib.get_close_matches(name, sorted(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"--trainer-arg {name!r} is not a TrainingArguments field{hint}")
        if name in ("output_dir", "remove_unused_columns", "label_names"):
            raise ValueError(f"--trainer-arg {name!r} is set by hqrs train and cannot be overridden")
        values[name] = value
    values.pop("resume_from_checkpoint", None)
    return values


def _resume_target(args: argparse.Namespace) -> str | bool | None:
    value = getattr(args, "resume_from_checkpoint", None)
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
    from hqrs.modeling.training_lora import LoraOptions, merge_lora

    if args.merge and not args.lora:
        raise ValueError("--merge folds LoRA adapters into the model; it needs --lora")
    training_args = _training_arguments(args)
    resume = _resume_target(args)
    seed = training_args.get("data_seed", training_args.get("seed", 42))
    data = DataOptions(
        image_column=args.image_column,
        caption_column=args.caption_column,
        image_id_column=args.image_id_column,
        image_errors=args.image_errors,
        seed=int(seed),
    )
    lora = (
        LoraOptions(
            r=args.lora_r,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            target_modules=args.lora_target_modules,
        )
        if args.lora
        else None
    )
    with refuse_unsafe_pickles(args.model):  # a pickled pytorch_model.bin in the model folder
        trainer = build_trainer(
            args.kind,
            args.model,
            args.dataset,
            config=args.config,
            split=args.split,
            eval_split=_eval_split(args.eval_split),
            output_dir=args.output_dir,
            training_args=training_args,
            processor=args.processor,
            lora=lora,
            augment=args.augment,
            data=data,
            streaming=args.streaming,
            gather_with_grad=not args.no_gather,
        )
    try:
        with refuse_unsafe_pickles(resume if isinstance(resume, str) else args.output_dir):
            result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        if trainer.is_world_process_zero():
            summary = {"output_dir": str(args.output_dir), "global_step": trainer.state.global_step}
            summary.update({k: round(v, 6) if isinstance(v, float) else v for k, v in result.metrics.items()})
            if args.merge:
                merged = merge_lora(args.output_dir, args.output_dir / "merged", base_model=args.model)
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
