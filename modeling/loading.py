"""Load a model family's model and processor, with the classes the family registry names.

``hqrs train`` (:mod:`hqrs.modeling.training`), ``hqrs train merge-lora`` (:mod:`hqrs.modeling.training_lora`)
and ``hqrs eval`` (:mod:`hqrs.evaluation.encoders`) load models through here; which classes load which
``model_type`` is :mod:`hqrs.modeling.families`' business, so that an RS-CoCa folder always loads with the
package's own classes (:func:`~hqrs.modeling.families.register_auto_classes`), never with the folder's code.

Example:
    >>> from hqrs.modeling.loading import KINDS, looks_local
    >>> KINDS["coca"]
    ('rs_coca',)
    >>> looks_local("./my-model"), looks_local("openai/clip-vit-base-patch32")
    (True, False)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import PretrainedConfig

from .families import FAMILIES, ModelFamily, family_for_model_type, register_auto_classes

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

__all__ = [
    "KINDS",
    "check_local_model",
    "load_model_and_processor",
    "looks_local",
    "model_kind",
    "register_rs_coca_auto_classes",
]

#: ``hqrs train`` kinds and the ``model_type`` of ``config.json`` each accepts (from the family registry).
KINDS = {
    kind: tuple(f.model_type for f in FAMILIES if f.train_kind == kind)
    for kind in dict.fromkeys(f.train_kind for f in FAMILIES)
}


def register_rs_coca_auto_classes() -> None:
    """Register hqrs' RS-CoCa classes with the transformers auto classes (idempotent); see
    :func:`hqrs.modeling.families.register_auto_classes`, which this calls."""
    register_auto_classes()


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_local(model: str | os.PathLike) -> bool:
    """Whether ``model`` can only mean a local path (``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``, ``x/`` or
    ``dir/x`` where ``dir`` exists here), not a Hub id ``NAME`` / ``ORG/NAME``."""
    text = os.fspath(model)
    if isinstance(model, Path) or not _HUB_ID.fullmatch(text):
        return True
    return "/" in text and Path(text.split("/", 1)[0]).is_dir()


def check_local_model(model: str | os.PathLike, what: str = "model") -> None:
    """Raise ``FileNotFoundError`` at once for a local-looking ``model`` path that does not exist.

    Without this, transformers takes it for a Hub id and retries huggingface.co for ~30 s before failing.
    """
    path = Path(model).expanduser()
    if not path.exists() and looks_local(model):
        raise FileNotFoundError(
            f"{what} folder {os.fspath(model)!r} does not exist (resolved to {str(path.resolve())!r}); give a "
            "folder written by save_pretrained (e.g. by `hqrs convert`) or a Hub id ORG/NAME"
        )


def _read_model_type(model: str | os.PathLike) -> str | None:
    check_local_model(model)
    path = Path(model).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(
                f"model folder {str(model)!r} has no config.json; give a folder written by save_pretrained "
                "(e.g. by `hqrs convert`)"
            )
        try:
            return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(config_file)!r} is not valid JSON: {exc}") from None
    if path.exists():
        raise ValueError(f"model {str(model)!r} is a file; give the model folder")
    config_dict, _ = PretrainedConfig.get_config_dict(str(model))
    return config_dict.get("model_type")


def model_kind(model: str | os.PathLike | PreTrainedModel) -> str:
    """``"clip"`` or ``"coca"`` for a model folder / Hub id / model object; ``ValueError`` otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None and isinstance(model, (str, os.PathLike)):
        model_type = _read_model_type(model)
    for kind, types in KINDS.items():
        if model_type in types:
            return kind
    accepted = ", ".join(f"{t!r} ({k})" for k, ts in KINDS.items() for t in ts)
    name = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    raise ValueError(
        f"{name!r} is not a CLIP or RS-CoCa model: model_type is {model_type!r}, expected {accepted}"
    )


def _family(model_type: str | None) -> ModelFamily:
    family = family_for_model_type(model_type)
    if family.auto_classes:  # the package's classes load these folders: no folder code runs, nothing prompts
        register_auto_classes()
    return family


def load_model_and_processor(
    kind: str,
    model: str | os.PathLike | PreTrainedModel,
    *,
    processor: Any = None,
    require_processor: bool = True,
) -> tuple[PreTrainedModel, Any]:
    """Load (or check) the model of ``kind`` and its processor.

    Args:
        kind: ``"clip"`` or ``"coca"``.
        model: a model folder, a Hub id or a model object.
        processor: a processor object, or a folder to load it from; default: the model folder.
        require_processor: raise when no processor can be found (else return ``None`` for it).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    found = model_kind(model)
    if found != kind:
        raise ValueError(
            f"model {_name(model)!r} is a {found!r} model, not {kind!r}; use `hqrs train {found}`"
        )
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None and isinstance(model, (str, os.PathLike)):
        model_type = _read_model_type(model)
    family = _family(model_type)
    model_cls, processor_cls = family.load_model_class(), family.load_processor_class()
    if isinstance(model, (str, os.PathLike)):
        loaded = model_cls.from_pretrained(os.fspath(model))
    elif isinstance(model, nn.Module):
        loaded = model
    else:
        raise ValueError(f"model must be a folder, a Hub id or a model object, got {type(model).__name__}")
    source = processor if processor is not None else model if isinstance(model, (str, os.PathLike)) else None
    if source is None or not isinstance(source, (str, os.PathLike)):
        if source is None and require_processor:
            raise ValueError("a model object was given without its processor; pass processor=")
        return loaded, source
    try:
        return loaded, processor_cls.from_pretrained(os.fspath(source))
    except (OSError, ValueError, TypeError) as exc:
        if not require_processor:
            return loaded, None
        raise ValueError(
            f"no usable processor in {os.fspath(source)!r} ({type(exc).__name__}: {exc}); save one next to the "
            "model with processor.save_pretrained(folder) or pass --processor"
        ) from exc


def _name(model: Any) -> str:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
