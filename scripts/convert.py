"""``hqrs convert``: open_clip checkpoints ↔ transformers folders (every family of :mod:`hqrs.modeling.families`).

``hqrs convert open-clip --model-name NAME --checkpoint PATH --out DIR``
    open_clip state dict (``.pt``/``.pth``/``.bin``/``.safetensors``, also open_clip_train's
    ``{"state_dict": ...}`` with ``module.`` prefixes; read with ``weights_only=True``) → a folder
    that ``from_pretrained`` loads; the registry (:func:`~hqrs.modeling.families.family_of_open_clip`) picks
    the family: CLIP ViT names give a transformers ``CLIPModel`` folder, ``RN50``/``RN101`` a ResNet-CLIP folder,
    ``coca_*`` names an RS-CoCa folder; the family's converter writes it.

``hqrs convert to-open-clip DIR --out PATH [--format safetensors|pt]``
    a converted folder → an open_clip state dict that
    ``open_clip.create_model(NAME).load_state_dict(sd, strict=True)`` accepts; NAME is read from the
    folder's ``config.json`` (``open_clip_model_name``, written by the forward conversion).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from .cli import leaf_parser

logger = logging.getLogger("hqrs.convert")

# `hqrs convert --help`: plain text (the module docstring above is reST for the API docs)
CONVERT_HELP = """\
hqrs convert open-clip --model-name NAME --checkpoint PATH --out DIR
    open_clip state dict (.pt/.pth/.bin/.safetensors, also open_clip_train's {"state_dict": ...}
    with module. prefixes; read weights-only) -> a folder that from_pretrained loads. CLIP ViT names
    give a transformers CLIPModel folder, RN50/RN101 a ResNet-CLIP folder, coca_* names an RS-CoCa
    folder (both with their remote code).

hqrs convert to-open-clip DIR --out PATH [--format safetensors|pt]
    a converted folder -> an open_clip state dict that
    open_clip.create_model(NAME).load_state_dict(sd, strict=True) accepts; NAME is read from the
    folder's config.json (open_clip_model_name, written by the forward conversion)."""


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert open_clip checkpoints to transformers folders and back",
        description=CONVERT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="convert_command", metavar="SUBCOMMAND", required=True)

    fwd = leaf_parser(
        sub,
        "open-clip",
        parents,
        help="open_clip checkpoint → transformers folder (CLIPModel or RS-CoCa)",
        description="Convert an open_clip state dict into a folder that from_pretrained loads offline.",
    )
    fwd.add_argument(
        "--model-name",
        default=None,
        help="open_clip architecture of the checkpoint: ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14, "
        "ViT-bigG-14 "
        "(add -quickgelu for OpenAI-initialised weights such as HQRS-CLIP), coca_ViT-B-32, coca_ViT-L-14 "
        "(required unless --model-config names it)",
    )
    fwd.add_argument(
        "--model-config",
        type=Path,
        default=None,
        metavar="JSON",
        help="an open_clip model config of your own (open_clip's format: embed_dim, vision_cfg, text_cfg, and "
        "multimodal_cfg for CoCa); registered with open_clip under its file name without .json (coca_*.json "
        "for a CoCa), which is the architecture name",
    )
    fwd.add_argument("--checkpoint", required=True, type=Path, help=".pt/.pth/.bin/.safetensors state dict")
    fwd.add_argument(
        "--out", required=True, type=Path, help="output folder (created; must be empty if it exists)"
    )
    fwd.add_argument(
        "--force-quick-gelu",
        action="store_true",
        help="QuickGELU activation with a plain name (open_clip's force_quick_gelu; CLIP only)",
    )
    fwd.add_argument("--overwrite", action="store_true", help="allow a non-empty --out folder")
    fwd.set_defaults(func=run_open_clip)

    back = leaf_parser(
        sub,
        "to-open-clip",
        parents,
        help="transformers folder written by `hqrs convert open-clip` → open_clip state dict",
        description="Write the open_clip state dict of a converted folder.",
    )
    back.add_argument("folder", type=Path, help="folder written by `hqrs convert open-clip`")
    back.add_argument("--out", required=True, type=Path, help="output file (.safetensors or .pt)")
    back.add_argument(
        "--format",
        choices=("safetensors", "pt"),
        default=None,
        help="file format (default: from the --out suffix, safetensors unless it ends in .pt/.pth/.bin)",
    )
    back.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    back.add_argument(
        "--model-config",
        type=Path,
        default=None,
        metavar="JSON",
        help="the open_clip config JSON the folder was converted with (--model-config of open-clip): the "
        "state dict is then checked key by key against that architecture",
    )
    back.set_defaults(func=run_to_open_clip)


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {str(out)!r} is not empty; choose a new folder or pass --overwrite")


def register_model_config(path: Path, model_name: str | None) -> str:
    """Register the open_clip model config JSON at ``path`` (``open_clip.add_model_config``); returns its name.

    open_clip names a config file by its stem, so ``coca_mini.json`` is the architecture ``coca_mini``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: not a JSON object with ``embed_dim``, ``vision_cfg`` and ``text_cfg``; a stem that is one of
            open_clip's own architectures; or ``model_name`` given and different from the stem.
    """
    import open_clip

    if not path.is_file():
        raise FileNotFoundError(f"--model-config {str(path)!r} is not a file")
    if path.suffix != ".json":
        raise ValueError(
            f"--model-config {str(path)!r} must be a .json file (open_clip names it by its stem)"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--model-config {str(path)!r} is not valid JSON: {exc}") from None
    missing = [
        k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg
    ]
    if missing:
        raise ValueError(
            f"--model-config {str(path)!r} lacks {', '.join(missing)}: give an open_clip model config "
            "(embed_dim, vision_cfg, text_cfg[, multimodal_cfg]) as in open_clip's model_configs/"
        )
    name = path.stem
    if model_name is not None and model_name != name:
        raise ValueError(
            f"--model-name {model_name!r} differs from the architecture {name!r} that --model-config "
            f"{str(path)!r} registers (open_clip names a config by its file name); drop --model-name"
        )
    known = open_clip.get_model_config(name)
    if known is not None and known != cfg:
        raise ValueError(
            f"--model-config {str(path)!r} would replace open_clip's own architecture {name!r}; rename the file"
        )
    open_clip.add_model_config(path)
    return name


def run_open_clip(args: argparse.Namespace) -> int:
    from ..modeling.families import family_of_open_clip
    from ..modeling.key_mapping import load_checkpoint

    _check_out_dir(args.out, args.overwrite)
    if args.model_config is not None:
        args.model_name = register_model_config(args.model_config, args.model_name)
    elif args.model_name is None:
        raise ValueError("give --model-name (an open_clip architecture) or --model-config (a config JSON)")
    name = args.model_name
    family = family_of_open_clip(name)  # ViT CLIP, ModifiedResNet CLIP or CoCa: the registry decides
    converter = family.load_converter()
    # unknown / unsupported architectures fail before the (large) checkpoint is read
    converter.config_from_open_clip(name, force_quick_gelu=args.force_quick_gelu)
    logger.info("reading %s", args.checkpoint)
    state_dict = load_checkpoint(args.checkpoint)
    model = converter.to_hf(name, state_dict, force_quick_gelu=args.force_quick_gelu)
    del state_dict
    converter.save_hf(model, None, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    remote = ", remote code" if family.ships_remote_code else ""
    load = "; load with trust_remote_code=True" if family.ships_remote_code else ""
    print(
        f"wrote {args.out} ({type(model).__name__}{remote}, {n_params / 1e6:.1f}M parameters, from open_clip "
        f"{name}){load}"
    )
    return 0


def _folder_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json; give a folder written by `hqrs convert open-clip`"
        )
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(config_file)!r} is not valid JSON: {exc}") from None


def run_to_open_clip(args: argparse.Namespace) -> int:
    from ..modeling.families import FAMILIES, family_for_model_type

    folder: Path = args.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    fmt = args.format or ("pt" if args.out.suffix.lower() in (".pt", ".pth", ".bin") else "safetensors")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"--out {str(args.out)!r} exists; pass --overwrite to replace it")
    config = _folder_config(folder)
    model_type = config.get("model_type")
    name = config.get("open_clip_model_name")
    if args.model_config is not None:
        register_model_config(args.model_config, name)
    try:
        family = family_for_model_type(model_type)
    except ValueError:
        known = ", ".join(f"{f.model_type!r} ({f.display})" for f in FAMILIES)
        raise ValueError(
            f"{str(folder)!r} holds model_type {model_type!r}; to-open-clip converts {known} folders"
        ) from None
    # hqrs' own class, not the folder's copy of the code: converting back runs no code from the folder
    model = family.load_model_class().from_pretrained(folder)
    n_tensors = family.load_converter().save_open_clip(model, args.out, fmt)
    how = f"open_clip.create_model({name!r}" if name else "open_clip.create_model(NAME"
    if config.get("open_clip_force_quick_gelu"):
        how += ", force_quick_gelu=True"
    print(f"wrote {args.out} ({fmt}, {n_tensors} tensors); load with {how}).load_state_dict(sd, strict=True)")
    return 0
