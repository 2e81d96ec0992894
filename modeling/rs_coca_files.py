"""RS-CoCa folders as remote code: the one place that writes the code files and the ``auto_map`` entries.

RS-CoCa is not a transformers model type, so a folder loads in a process without ``hqrs`` only when it holds
``configuration_rs_coca.py``, ``modeling_rs_coca.py``, ``processing_rs_coca.py`` and the ``auto_map`` entries
that point at them. Every writer of an RS-CoCa folder calls :func:`save_rs_coca_remote_code` after its
``save_pretrained`` calls: :func:`~hqrs.modeling.convert_rs_coca.save_hf_coca` (``hqrs convert``), the
Trainer's ``save_model`` and every ``checkpoint-N`` (``hqrs train coca``), ``merge-lora``'s merged folder and
``hqrs push``'s staged folder. The code always comes from this package, never from the folder being copied.

Inside ``hqrs`` the package's own classes load RS-CoCa folders:
:func:`hqrs.modeling.families.register_auto_classes` registers them with the transformers auto classes,
so ``AutoModel``/``AutoProcessor`` and ``RSCoCaProcessor.from_pretrained`` use them without running (or asking
to run) a folder's own code. The family registry (:data:`hqrs.modeling.families.RS_COCA`) names this module's
:func:`save_rs_coca_remote_code` as the family's remote-code writer; this module stays free of torch and
transformers (``hqrs push`` uses it).

Example:
    >>> from hqrs.modeling.rs_coca_files import REMOTE_CODE_FILES
    >>> REMOTE_CODE_FILES
    ('configuration_rs_coca.py', 'modeling_rs_coca.py', 'processing_rs_coca.py')
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

__all__ = [
    "CONFIG_AUTO_MAP",
    "MODEL_TYPE",
    "PROCESSOR_AUTO_MAP",
    "REMOTE_CODE_FILES",
    "is_rs_coca_folder",
    "save_rs_coca_remote_code",
]

MODEL_TYPE = "rs_coca"
REMOTE_CODE_FILES = ("configuration_rs_coca.py", "modeling_rs_coca.py", "processing_rs_coca.py")
# The same class serves the captioning auto-class (and so the image-text-to-text pipeline).
CONFIG_AUTO_MAP = {
    "AutoConfig": "configuration_rs_coca.RSCoCaConfig",
    "AutoModel": "modeling_rs_coca.RSCoCaModel",
    "AutoModelForImageTextToText": "modeling_rs_coca.RSCoCaModel",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_rs_coca.RSCoCaProcessor"}
# files that carry the processor's auto_map (AutoProcessor reads processor_config.json first; the
# tokenizer and image-processor files carry it so their own auto classes resolve the processor too)
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} holds a JSON {type(data).__name__}, expected an object")
    return data


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def is_rs_coca_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder/config.json`` says ``model_type: rs_coca`` (``False`` without a config.json)."""
    config = Path(folder) / "config.json"
    return config.is_file() and _read_json(config).get("model_type") == MODEL_TYPE


def save_rs_coca_remote_code(folder: str | os.PathLike) -> Path:
    """Make ``folder`` (already holding what ``save_pretrained`` wrote) load as RS-CoCa remote code.

    Copies :data:`REMOTE_CODE_FILES` from this package and sets :data:`CONFIG_AUTO_MAP` in ``config.json``
    (when present: a LoRA adapter folder has none) and :data:`PROCESSOR_AUTO_MAP` in the processor's files
    (``processor_config.json``, also inside its nested ``image_processor``; ``preprocessor_config.json``;
    ``tokenizer_config.json``), keeping every other key. Idempotent.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: ``config.json`` is not an ``rs_coca`` config, or a JSON file is malformed.
    """
    out = Path(folder)
    if not out.is_dir():
        raise FileNotFoundError(f"{str(out)!r} is not a folder; save the model/processor there first")
    source = resources.files("hqrs.modeling")
    for name in REMOTE_CODE_FILES:
        (out / name).write_bytes(source.joinpath(name).read_bytes())
    config_path = out / "config.json"
    if config_path.is_file():
        config = _read_json(config_path)
        if config.get("model_type") != MODEL_TYPE:
            raise ValueError(
                f"{str(config_path)!r} has model_type {config.get('model_type')!r}, not {MODEL_TYPE!r}: "
                "RS-CoCa remote code belongs only in RS-CoCa folders"
            )
        config["auto_map"] = {**(config.get("auto_map") or {}), **CONFIG_AUTO_MAP}
        _write_json(config_path, config)
    for name in _PROCESSOR_FILES:
        path = out / name
        if not path.is_file():
            continue
        data = _read_json(path)
        data["auto_map"] = {**(data.get("auto_map") or {}), **PROCESSOR_AUTO_MAP}
        if name == "tokenizer_config.json":
            data["processor_class"] = "RSCoCaProcessor"
        if isinstance(data.get("image_processor"), dict):
            nested = data["image_processor"]
            nested["auto_map"] = {**(nested.get("auto_map") or {}), **PROCESSOR_AUTO_MAP}
        _write_json(path, data)
    return out
