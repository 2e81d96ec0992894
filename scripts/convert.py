"""``hqrs convert``: open_clip checkpoints ↔ transformers folders (HQRS-CLIP and RS-CoCa).

``hqrs convert open-clip --model-name NAME --checkpoint PATH --out DIR``
    open_clip state dict (``.pt``/``.pth``/``.bin``/``.safetensors``, also open_clip_train's
    ``{"state_dict": ...}`` with ``module.`` prefixes; read with ``weights_only=True``) → a folder
    that ``from_pretrained`` loads. CLIP ViT names give a transformers ``CLIPModel`` folder;
    ``coca_*`` names give an RS-CoCa folder (``hqrs.modeling.convert_rs_coca``).

``hqrs convert to-open-clip DIR --out PATH [--format safetensors|pt]``
    a converted folder → an open_clip state dict that
    ``open_clip.create_model(NAME).load_state_dict(sd, strict=True)`` accepts; NAME is read from the
    folder's ``config.json`` (``open_clip_model_name``, written by the forward conversion).
"""

from __future__ import annotations

import argparse
import importlib
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

RS_COCA_MODULE = "hqrs.modeling.convert_rs_coca"
RS_COCA_MODEL_TYPE = "rs_coca"


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


def _rs_coca_module():
    try:
        return importlib.import_module(RS_COCA_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != RS_COCA_MODULE:
            raise
        raise ValueError(
            f"RS-CoCa conversion needs {RS_COCA_MODULE}, which this hqrs install lacks"
        ) from None


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
    from ..modeling.key_mapping import load_checkpoint

    _check_out_dir(args.out, args.overwrite)
    if args.model_config is not None:
        args.model_name = register_model_config(args.model_config, args.model_name)
    elif args.model_name is None:
        raise ValueError("give --model-name (an open_clip architecture) or --model-config (a config JSON)")
    name = args.model_name
    if _resnet_clip_name(name):  # RN50 / RN101 ...: the ResNet-CLIP remote-code family
        return _run_open_clip_resnet(args)
    if not name.startswith("coca_"):
        from ..modeling.convert_clip import clip_config_from_open_clip

        clip_config_from_open_clip(name)  # unknown / RN50 / unsupported names fail before the file is read
    logger.info("reading %s", args.checkpoint)
    state_dict = load_checkpoint(args.checkpoint)
    if name.startswith("coca_"):
        if args.force_quick_gelu:
            raise ValueError("--force-quick-gelu applies to CLIP architectures only, not to coca_* names")
        coca = _rs_coca_module()
        model = coca.convert_open_clip_coca(name, state_dict)
        del state_dict
        coca.save_hf_coca(model, None, args.out)
    else:
        from ..modeling.convert_clip import convert_open_clip_clip, save_hf_clip

        model = convert_open_clip_clip(name, state_dict, force_quick_gelu=args.force_quick_gelu)
        del state_dict
        save_hf_clip(model, None, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.out} ({type(model).__name__}, {n_params / 1e6:.1f}M parameters, from open_clip {name})"
    )
    return 0


# -- ResNet-CLIP (open_clip ModifiedResNet: RN50, RN101, ...) ------------------------------------------------
RESNET_CLIP_MODEL_TYPE = "resnet_clip"


def _resnet_clip_name(name: str) -> bool:
    from ..modeling.convert_resnet_clip import is_resnet_clip_name

    return is_resnet_clip_name(name)


def _run_open_clip_resnet(args: argparse.Namespace) -> int:
    from ..modeling.convert_resnet_clip import convert_open_clip_resnet_clip, save_hf_resnet_clip
    from ..modeling.key_mapping import load_checkpoint

    logger.info("reading %s", args.checkpoint)
    state_dict = load_checkpoint(args.checkpoint)
    model = convert_open_clip_resnet_clip(args.model_name, state_dict, force_quick_gelu=args.force_quick_gelu)
    del state_dict
    save_hf_resnet_clip(model, None, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.out} ({type(model).__name__}, remote code, {n_params / 1e6:.1f}M parameters, from open_clip "
        f"{args.model_name}); load with trust_remote_code=True"
    )
    return 0


def _resnet_clip_to_open_clip(folder: Path) -> dict:
    from ..modeling.convert_resnet_clip import resnet_clip_to_open_clip_state_dict
    from ..modeling.modeling_resnet_clip import ResNetCLIPModel

    # hqrs' own class, not the folder's copy of the code: converting back runs no code from the folder
    return resnet_clip_to_open_clip_state_dict(ResNetCLIPModel.from_pretrained(folder))


# --------------------------------------------------------------------------------------------------------------


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


def _save_state_dict(state_dict: dict, out: Path, fmt: str) -> None:
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    # safetensors refuses tensors that share storage: give each its own contiguous memory.
    plain, seen = {}, set()
    for key, value in state_dict.items():
        value = value.detach().contiguous()
        storage = value.untyped_storage().data_ptr()
        plain[key] = value.clone() if storage in seen else value
        seen.add(storage)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(plain, str(tmp))
    else:
        torch.save(plain, tmp)
    tmp.replace(out)


def run_to_open_clip(args: argparse.Namespace) -> int:
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
    if model_type == RS_COCA_MODEL_TYPE:
        coca = _rs_coca_module()
        from ..modeling.modeling_rs_coca import RSCoCaModel

        # the package's own class: the folder's modeling_rs_coca.py is data here and never runs
        model = RSCoCaModel.from_pretrained(folder)
        state_dict = coca.coca_to_open_clip_state_dict(model)
    elif model_type == RESNET_CLIP_MODEL_TYPE:
        state_dict = _resnet_clip_to_open_clip(folder)
    elif model_type == "clip":
        from transformers import CLIPModel

        from ..modeling.convert_clip import clip_to_open_clip_state_dict

        model = CLIPModel.from_pretrained(folder)
        state_dict = clip_to_open_clip_state_dict(model)
    else:
        raise ValueError(
            f"{str(folder)!r} holds model_type {model_type!r}; to-open-clip converts 'clip' (HQRS-CLIP), "
            f"{RESNET_CLIP_MODEL_TYPE!r} (ResNet-CLIP: RN50, RN101) and {RS_COCA_MODEL_TYPE!r} (RS-CoCa) folders"
        )
    _save_state_dict(state_dict, args.out, fmt)
    how = f"open_clip.create_model({name!r}" if name else "open_clip.create_model(NAME"
    if config.get("open_clip_force_quick_gelu"):
        how += ", force_quick_gelu=True"
    print(
        f"wrote {args.out} ({fmt}, {len(state_dict)} tensors); load with {how}).load_state_dict(sd, strict=True)"
    )
    return 0
