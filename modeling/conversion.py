"""The one open_clip ⇄ transformers converter protocol the three model families implement.

A family's converter (:class:`OpenClipConverter` subclass, one instance ``CONVERTER`` per ``convert_*`` module)
says only what differs between families: the config (:meth:`~OpenClipConverter.config_from_open_clip`), the
declarative key table (:meth:`~OpenClipConverter.key_table`), the model class, the processor and, when the family
ships remote code, how a folder gets it. Everything else is shared here and behaves the same for every family:

* **empty-weight init**: the model is built under ``accelerate.init_empty_weights(include_buffers=False)``
  (parameters on the meta device, buffers real: non-persistent buffers such as ``position_ids`` need no
  rebuilding), then the converted tensors are *assigned* (``load_state_dict(assign=True)``), not copied: peak
  memory stays at about one checkpoint and a memory-mapped checkpoint stays file-backed;
* **strict keys and shapes**: every source key mapped, every model weight filled with the right shape
  (:func:`~hqrs.modeling.key_mapping.check_complete`), one floating-point dtype for all weights (recorded as
  ``config.dtype``);
* **shared storage**: tensors that share storage (``q/k/v`` split from a fused ``in_proj``) stay views in
  memory; ``save_pretrained``'s safetensors handling gives them their own storage when it writes the file, and
  :func:`save_open_clip_state_dict` does the same for the open_clip file;
* **the way back**: :meth:`~OpenClipConverter.to_open_clip` inverts the key table and, when
  ``config.open_clip_model_name`` is an open_clip architecture, checks keys and shapes against
  ``open_clip.create_model(name)`` (built on the meta device); :meth:`~OpenClipConverter.save_open_clip` writes
  the file (``safetensors`` or ``pt``) atomically.

Example:
    >>> from hqrs.modeling.convert_rs_coca import CONVERTER
    >>> CONVERTER.model_type
    'rs_coca'
    >>> model = CONVERTER.to_hf("coca_ViT-B-32", open_clip_state_dict)  # doctest: +SKIP
    >>> CONVERTER.save_hf(model, None, "rs-coca-b32")  # doctest: +SKIP
    >>> CONVERTER.save_open_clip(model, "back.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .key_mapping import OPEN_CLIP_DERIVED_KEYS, KeyTable, check_complete, open_clip_expected_shapes
from .open_clip_processing import build_image_processor, build_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["OpenClipConverter", "open_clip_model_config", "open_clip_processor", "save_open_clip_state_dict"]

#: ``save_open_clip`` formats.
OPEN_CLIP_FORMATS = ("safetensors", "pt")


class OpenClipConverter(ABC):
    """open_clip state dict ⇄ one transformers model family (see the module docstring for the shared behaviour).

    Subclasses set :attr:`model_type` and implement :meth:`config_from_open_clip`, :meth:`key_table`,
    :meth:`model_class` and :meth:`build_processor`; the hooks :meth:`check_source`, :meth:`explain_mismatch`,
    :meth:`finish_model` and :meth:`write_remote_code` default to doing nothing.
    """

    #: ``config.json`` ``model_type`` of the converted folders.
    model_type: ClassVar[str]
    #: the family's name in messages.
    display: ClassVar[str]

    # -- what differs between families ---------------------------------------------------------------------
    @abstractmethod
    def config_from_open_clip(
        self, model_name: str, model_cfg: Mapping[str, Any] | None = None, force_quick_gelu: bool = False
    ) -> PretrainedConfig:
        """The transformers config equal to open_clip's architecture ``model_name`` (or ``model_cfg``).

        Raises:
            ValueError: unknown name, another family's architecture, or an option the family cannot represent.
        """

    @abstractmethod
    def key_table(self, config: PretrainedConfig) -> KeyTable:
        """open_clip → transformers key table for ``config`` (its ``inverted()`` is the way back)."""

    @abstractmethod
    def model_class(self) -> type[PreTrainedModel]:
        """The transformers model class of the family."""

    @abstractmethod
    def build_processor(self, model_name: str, config: PretrainedConfig) -> Any:
        """open_clip's eval transform for ``model_name`` + the offline CLIP BPE tokenizer, as the family's processor."""

    def check_source(self, model_name: str, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` when ``state_dict`` is plainly another family's checkpoint (before mapping keys)."""
        return None

    def explain_mismatch(
        self, exc: ValueError, model_name: str, state_dict: Mapping[str, torch.Tensor], converted: Mapping
    ) -> ValueError:
        """The error to raise when the converted weights do not fit the config (default: ``exc`` itself)."""
        return exc

    def finish_model(self, model: PreTrainedModel) -> None:
        """Last touches on a freshly converted model (e.g. its ``generation_config``)."""
        return None

    def write_remote_code(self, folder: Path) -> None:
        """Make a saved ``folder`` load without ``hqrs`` (remote-code families; default: nothing to do)."""
        return None

    # -- shared behaviour ----------------------------------------------------------------------------------
    def to_hf(
        self,
        model_name: str,
        state_dict: Mapping[str, torch.Tensor],
        model_cfg: Mapping[str, Any] | None = None,
        force_quick_gelu: bool = False,
    ) -> PreTrainedModel:
        """Convert an open_clip state dict of architecture ``model_name`` into the family's model (eval mode).

        The model takes over the tensors of ``state_dict`` (no copy): pass a copy if you keep using the source.

        Raises:
            ValueError: the config cannot be built, another family's checkpoint, mixed dtypes;
                ``UnmappedKeysError`` for keys no rule maps; ``MissingKeysError`` for missing keys and wrong
                shapes (weights of another size).
        """
        config = self.config_from_open_clip(model_name, model_cfg, force_quick_gelu=force_quick_gelu)
        self.check_source(model_name, state_dict)
        sd = {k: v for k, v in state_dict.items() if k not in OPEN_CLIP_DERIVED_KEYS}
        converted = self.key_table(config).convert(sd)
        context = f"open_clip {model_name!r} checkpoint -> {self.display}"
        return self.model_from_converted(config, converted, context, model_name=model_name, source=sd)

    def model_from_converted(
        self,
        config: PretrainedConfig,
        converted: Mapping[str, torch.Tensor],
        context: str,
        model_name: str | None = None,
        source: Mapping[str, torch.Tensor] | None = None,
    ) -> PreTrainedModel:
        """The model of ``config`` holding ``converted`` (transformers keys): empty-weight init, strict check,
        one dtype, tensors assigned."""
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = self.model_class()(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        try:
            check_complete(converted, expected, context=context)
        except ValueError as exc:
            raise self.explain_mismatch(exc, model_name or "", source or {}, converted) from None
        dtype = _one_floating_dtype(converted, context)
        model.load_state_dict({k: v.contiguous() for k, v in converted.items()}, strict=True, assign=True)
        model.config.dtype = dtype
        self.finish_model(model)
        return model.eval()

    def to_open_clip(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        """The open_clip state dict of ``model`` (exact inverse of :meth:`to_hf`).

        When ``config.open_clip_model_name`` is an open_clip architecture, keys and shapes are checked against
        ``open_clip.create_model(name)``, so ``load_state_dict(sd, strict=True)`` accepts the result.
        """
        import open_clip

        state = self.key_table(model.config).inverted().convert(model.state_dict())
        name = getattr(model.config, "open_clip_model_name", None)
        if name and open_clip.get_model_config(name) is not None:
            check_complete(
                state, open_clip_expected_shapes(name), context=f"{self.display} -> open_clip {name!r}"
            )
        return state

    def save_hf(self, model: PreTrainedModel, processor: Any, out_dir: str | os.PathLike) -> Path:
        """Write ``model`` (safetensors + ``config.json``), its processor and, for remote-code families, the code.

        ``processor=None`` builds one from ``config.open_clip_model_name``. Returns the folder.

        Raises:
            ValueError: no processor and no ``open_clip_model_name`` to build one from.
        """
        out = Path(out_dir)
        if processor is None:
            name = getattr(model.config, "open_clip_model_name", None)
            if not name:
                raise ValueError(
                    f"saving a {self.display} model without a processor needs model.config.open_clip_model_name "
                    "(it tells which image preprocessing to use); pass the processor"
                )
            processor = self.build_processor(name, model.config)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        self.write_remote_code(out)
        return out

    def save_open_clip(self, model: PreTrainedModel, out: str | os.PathLike, fmt: str = "safetensors") -> int:
        """Write :meth:`to_open_clip` of ``model`` to ``out`` (``fmt``: ``safetensors`` or ``pt``); returns the
        number of tensors written."""
        state = self.to_open_clip(model)
        save_open_clip_state_dict(state, out, fmt)
        return len(state)


def open_clip_model_config(model_name: str, family: str, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """``open_clip.get_model_config(model_name)`` (registered configs included) for the ``family`` converter.

    Raises:
        ValueError: not a non-empty string, or no such architecture (the message lists open_clip's names that
            start with ``prefixes``, the family's architectures).
    """
    import open_clip

    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be an open_clip architecture name, got {model_name!r}")
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        names = [m for m in open_clip.list_models() if m.startswith(prefixes)]
        raise ValueError(
            f"unknown open_clip architecture {model_name!r}; {family} converts open_clip architectures such as "
            f"{', '.join(names[:12])}{', …' if len(names) > 12 else ''} (see open_clip.list_models())"
        )
    return cfg


def open_clip_processor(
    processor_class: type, model_name: str, *, max_length: int, pad_token_id: int, eos_token_id: int
) -> Any:
    """``processor_class(image_processor, tokenizer)``: open_clip's eval transform for ``model_name`` and the
    offline CLIP BPE tokenizer (``max_length`` tokens).

    Raises:
        ValueError: the tokenizer's pad / eos ids differ from the model config's ``pad_token_id`` / ``eos_token_id``.
    """
    tokenizer = build_tokenizer(model_max_length=max_length)
    if (tokenizer.pad_token_id, tokenizer.eos_token_id) != (pad_token_id, eos_token_id):
        raise ValueError(
            f"tokenizer ids (pad={tokenizer.pad_token_id}, eos={tokenizer.eos_token_id}) differ from the model "
            f"config (pad={pad_token_id}, eos={eos_token_id})"
        )
    return processor_class(build_image_processor(model_name), tokenizer)


def _one_floating_dtype(converted: Mapping[str, torch.Tensor], context: str) -> torch.dtype:
    """The one floating dtype of the weights (integer buffers such as BatchNorm's ``num_batches_tracked`` aside)."""
    dtypes = {v.dtype for k, v in converted.items() if not k.endswith("num_batches_tracked")}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ValueError(
            f"{context}: expected one floating-point dtype for all weights, got {sorted(map(str, dtypes))}"
        )
    return next(iter(dtypes))


def save_open_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor], out: str | os.PathLike, fmt: str
) -> Path:
    """Write an open_clip state dict to ``out`` atomically (``out.partial`` renamed when complete).

    Tensors are made contiguous; one that shares storage with an earlier one gets its own copy (safetensors
    refuses shared storage, and a ``.pt`` file would otherwise keep the whole shared storage per view).

    Raises:
        ValueError: ``fmt`` is not ``safetensors`` or ``pt``.
    """
    if fmt not in OPEN_CLIP_FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {OPEN_CLIP_FORMATS}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
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
    return out
