"""``hqrs env``: versions, device and offline state, to paste into a bug report."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any

from .cli import leaf_parser, version

# (label, distribution name); distributions that may be absent are reported as "not installed".
PACKAGES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("transformers", "transformers"),
    ("datasets", "datasets"),
    ("huggingface_hub", "huggingface_hub"),
    ("open_clip", "open_clip_torch"),
    ("peft", "peft"),
    ("accelerate", "accelerate"),
    ("evaluate", "evaluate"),
    ("datatrove", "datatrove"),
    ("vllm", "vllm"),
    ("sglang", "sglang"),
    ("ray", "ray"),
    ("pycocoevalcap", "pycocoevalcap"),
)

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _java_version() -> str:
    java = shutil.which("java")
    if java is None:
        return "not found (pycocoevalcap's PTB tokenizer and METEOR need Java)"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{java} (failed to run: {exc})"
    first = (out.stderr or out.stdout).strip().splitlines()
    return first[0] if first else java


def _device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch cuda build": torch.version.cuda or "none",
        "cuda available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16 supported"] = torch.cuda.is_bf16_supported()
    mps = getattr(torch.backends, "mps", None)
    info["mps available"] = bool(mps is not None and mps.is_available())
    info["device"] = "cuda" if info["cuda available"] else "mps" if info["mps available"] else "cpu"
    info["cpu threads"] = torch.get_num_threads()
    return info


def _offline_info() -> dict[str, Any]:
    from huggingface_hub import constants

    info: dict[str, Any] = {"hub offline (huggingface_hub)": bool(constants.HF_HUB_OFFLINE)}
    for name in OFFLINE_VARIABLES:
        info[name] = os.environ.get(name, "unset")
    info["hf home"] = constants.HF_HOME
    info["hf token set"] = bool(os.environ.get("HF_TOKEN")) or os.path.exists(constants.HF_TOKEN_PATH)
    return info


def collect() -> dict[str, Any]:
    """Everything ``hqrs env`` reports, as a flat mapping (stable keys, JSON-serialisable)."""
    info: dict[str, Any] = {
        "hqrs": version(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    info.update({label: _dist_version(dist) for label, dist in PACKAGES})
    info["java"] = _java_version()
    info.update(_device_info())
    info.update(_offline_info())
    return info


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=False))
    else:
        print("Copy-and-paste the text below in your issue, and fill in what is missing.\n")
        for key, value in info.items():
            print(f"- {key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def register(subparsers, parents) -> None:
    p = leaf_parser(
        subparsers,
        "env",
        parents,
        help="print versions, device and offline state",
        description="Print the environment (package versions, accelerator, Hugging Face offline state).",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a list")
    p.set_defaults(func=run)
