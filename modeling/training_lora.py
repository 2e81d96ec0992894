"""LoRA for HQRS-CLIP and RS-CoCa with peft: adapters on attention and MLP projections, and merging.

The adapters go on every ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (attention) and ``fc1``/``fc2``
(MLP) linear layer of the model: both towers of CLIP, and for RS-CoCa also the attentional pooler and
the multimodal (captioning) decoder, whose layers use the same names. Everything else is frozen.

:func:`merge_lora` folds a saved adapter into its base model and writes a plain transformers folder
that loads without peft (``CLIPModel.from_pretrained(out)``).

Example:
    >>> from transformers import CLIPConfig, CLIPModel
    >>> tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    >>> model = CLIPModel(CLIPConfig(text_config=dict(tiny, vocab_size=99),
    ...                              vision_config=dict(tiny, image_size=32, patch_size=16)))
    >>> peft_model = apply_lora(model, LoraArguments(lora_r=4))
    >>> sorted({n.split(".")[-3] for n, p in peft_model.named_parameters() if p.requires_grad})
    ['lora_A', 'lora_B']
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .families import LORA_TARGET_MODULES as DEFAULT_LORA_TARGETS
from .families import family_of
from .loading import check_local_model, load_model_and_processor, looks_local, model_kind

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_LORA_TARGETS", "LoraArguments", "apply_lora", "merge_lora", "merge_lora_model"]

#: Linear layers that get adapters (transformers' CLIP/RS-CoCa names for attention and MLP projections).


@dataclass
class LoraArguments:
    """peft LoRA settings: the one place their defaults live (``hqrs train --lora``, :func:`apply_lora`).

    The field names are the ``hqrs train`` flags (``--lora-r`` ...), parsed by ``HfArgumentParser``.

    Args:
        lora_r: adapter rank.
        lora_alpha: scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout: dropout on the adapter input.
        lora_target_modules: names of the linear layers to adapt (suffix match, as in peft); a comma-separated
            string or items with commas are split.

    Raises:
        ValueError: a rank below 1, a non-positive alpha, a dropout outside [0, 1) or no target module, quoting
            the value.
    """

    lora_r: int = field(default=16, metadata={"help": "LoRA adapter rank"})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA adapter input"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "linear layer names to adapt (comma- or space-separated)"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 1:
            raise ValueError(f"LoraArguments.lora_r must be a positive int, got {self.lora_r!r}")
        if not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ValueError(f"LoraArguments.lora_alpha must be positive, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraArguments.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        items = (
            [self.lora_target_modules]
            if isinstance(self.lora_target_modules, str)
            else self.lora_target_modules
        )
        self.lora_target_modules = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
        if not self.lora_target_modules:
            raise ValueError("LoraArguments.lora_target_modules must name at least one module")

    def to_peft(self) -> Any:
        """The peft ``LoraConfig``."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.lora_target_modules),
        )


def apply_lora(model: PreTrainedModel, options: LoraArguments | dict | None = None) -> PeftModel:
    """Wrap ``model`` in a ``PeftModel`` with LoRA adapters on :attr:`LoraArguments.lora_target_modules`.

    ``options`` is a :class:`LoraArguments`, a dict of its fields, or ``None`` (the defaults).

    Raises ``ValueError`` naming the model's linear layer names when none of the targets exists.
    """
    from peft import get_peft_model
    from torch import nn

    options = LoraArguments(**options) if isinstance(options, dict) else options or LoraArguments()
    names = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)
    }
    missing = [t for t in options.lora_target_modules if t not in names]
    if len(missing) == len(options.lora_target_modules):
        raise ValueError(
            f"none of the LoRA target modules {list(options.lora_target_modules)} exists in "
            f"{type(model).__name__}; its linear layers are named {sorted(names)}"
        )
    if missing:
        logger.info("LoRA targets not present in %s: %s", type(model).__name__, ", ".join(missing))
    peft_model = get_peft_model(model, options.to_peft())
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(
        "LoRA: %d trainable parameters of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1)
    )
    return peft_model


def merge_lora_model(peft_model: PeftModel) -> PreTrainedModel:
    """The base model with the adapters folded into its weights (``merge_and_unload``); no peft left."""
    from peft import PeftModel

    if not isinstance(peft_model, PeftModel):
        raise ValueError(f"merge_lora_model needs a peft PeftModel, got {type(peft_model).__name__}")
    return peft_model.merge_and_unload()


def resolve_recorded_base(adapter_dir: str | Path, recorded: str) -> str:
    """The base model an adapter records (``base_model_name_or_path``), as a usable folder or Hub id.

    A relative path is tried relative to the adapter folder first (``hqrs train --lora`` records it so), then
    relative to the working directory; a local-looking path found in neither is a ``FileNotFoundError`` that
    says where it looked and suggests ``--base``. Anything else is a Hub id and returned unchanged.
    """
    adapter_dir = Path(adapter_dir)
    path = Path(recorded).expanduser()
    candidates = [path] if path.is_absolute() else [adapter_dir / path, path]
    for candidate in candidates:
        if candidate.is_dir():
            return os.fspath(candidate)
    if looks_local(recorded) or any(c.exists() for c in candidates):
        tried = ", ".join(repr(str(c.resolve())) for c in candidates)
        raise FileNotFoundError(
            f"the base model {recorded!r} recorded in {str(adapter_dir / 'adapter_config.json')!r} is not a folder "
            f"(looked at {tried}); pass the base model folder with --base"
        )
    return recorded


def record_base_relative_to_adapter(adapter_dir: str | Path) -> None:
    """Rewrite a local ``base_model_name_or_path`` in ``adapter_dir/adapter_config.json`` relative to the adapter,
    so ``merge-lora`` finds the base from any working directory (and after moving both folders together)."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    recorded = config.get("base_model_name_or_path")
    if not recorded or not Path(recorded).expanduser().is_dir():
        return  # a Hub id, or nothing to record
    relative = os.path.relpath(Path(recorded).expanduser().resolve(), Path(adapter_dir).resolve())
    config["base_model_name_or_path"] = relative
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, *, base_model: str | Path | None = None) -> Path:
    """Fold the adapter saved in ``adapter_dir`` into its base model and save a full model to ``out_dir``.

    Args:
        adapter_dir: folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (what
            ``hqrs train --lora`` writes, with the processor next to them).
        out_dir: where the merged model and its processor are written.
        base_model: the base model folder or Hub id; default: ``base_model_name_or_path`` recorded in
            the adapter config.

    The processor is copied from ``adapter_dir`` when it holds one, else from the base model.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{str(adapter_dir)!r} is not a LoRA adapter folder (no adapter_config.json); give the output "
            "folder of `hqrs train --lora` or one of its checkpoint-* folders"
        )
    try:
        recorded = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(config_file)!r} is not valid JSON: {exc}") from None
    if base_model is not None:
        check_local_model(base_model, what="--base model")
        base = base_model
    elif not recorded:
        raise ValueError(
            f"{str(config_file)!r} records no base model (base_model_name_or_path); pass the base model folder "
            "(--base)"
        )
    else:
        base = resolve_recorded_base(adapter_dir, recorded)
    kind = model_kind(base)
    has_own = any((adapter_dir / n).is_file() for n in ("processor_config.json", "preprocessor_config.json"))
    model, processor = load_model_and_processor(
        kind, base, processor=adapter_dir if has_own else None, require_processor=False
    )
    merged = merge_lora_model(PeftModel.from_pretrained(model, str(adapter_dir)))
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    if processor is not None:
        processor.save_pretrained(out_dir)
    family_of(merged).write_remote_code(out_dir)  # loads without hqrs, like every RS-CoCa folder hqrs writes
    logger.info("merged %s into %s -> %s", adapter_dir, base, out_dir)
    return out_dir
