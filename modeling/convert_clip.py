"""HQRS-CLIP: exact conversion between open_clip ViT CLIP checkpoints and transformers' ``CLIPModel``.

HQRS-CLIP needs no model code of its own: open_clip's ViT CLIP (``open_clip.model.CLIP`` with a
``VisionTransformer`` and the built-in text transformer) is transformers' ``CLIPModel`` with other
weight names. :data:`OPEN_CLIP_TO_HF_CLIP` is the declarative key table between the two; its
:meth:`~hqrs.modeling.key_mapping.KeyTable.inverted` table is the way back, so
open_clip → HF → open_clip reproduces every tensor bit for bit.

Supported: open_clip ViT architectures whose config transformers can represent (``ViT-B-32``,
``ViT-B-16``, ``ViT-L-14``, ``ViT-L-14-336``, ``ViT-H-14`` (head width 80), ``ViT-g-14`` and ``ViT-bigG-14``
(head width 104, ``mlp_ratio`` 4.9231 -> ``int(width * mlp_ratio)`` as open_clip), and their ``-quickgelu``
variants, or any config with the same building blocks). The key table is per-layer, so one table serves
every depth and width. The activation follows the open_clip config: ``-quickgelu`` names (and
``force_quick_gelu=True``, open_clip's flag of the same name) give ``hidden_act="quick_gelu"``,
plain names give exact GELU — as ``open_clip.create_model(name)`` builds them. Checkpoints
fine-tuned from OpenAI weights (HQRS-CLIP is) were trained with QuickGELU: convert them with the
``-quickgelu`` name or ``force_quick_gelu=True``.

Not supported: ``RN50``/``RN101``/``RN50x*`` (open_clip ``ModifiedResNet``). transformers has no
ModifiedResNet CLIP vision tower, and hqrs does not half-support it; those names raise ``ValueError``.

Example:
    >>> import open_clip, torch
    >>> from hqrs.modeling.convert_clip import convert_open_clip_clip, clip_to_open_clip_state_dict
    >>> oc = open_clip.create_model("ViT-B-32", pretrained=None)  # doctest: +SKIP
    >>> hf = convert_open_clip_clip("ViT-B-32", oc.state_dict())  # doctest: +SKIP
    >>> back = clip_to_open_clip_state_dict(hf)  # doctest: +SKIP
    >>> all(torch.equal(back[k], v) for k, v in oc.state_dict().items())  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .conversion import OpenClipConverter, open_clip_model_config
from .key_mapping import (
    OPEN_CLIP_CLIP_TEXT,
    OPEN_CLIP_CLIP_TOP_LEVEL,
    OPEN_CLIP_PLAIN_VISION,
    WEIGHT_OR_BIAS,
    KeyTable,
    MissingKeysError,
    Rule,
    resblock_rules,
)
from .open_clip_processing import build_clip_processor

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "CONVERTER",
    "OPEN_CLIP_TO_HF_CLIP",
    "CLIPConverter",
    "clip_config_from_open_clip",
    "clip_to_open_clip_state_dict",
    "convert_open_clip_clip",
    "save_hf_clip",
]

# Attributes hqrs adds to the saved config.json: the way back to open_clip.
OPEN_CLIP_NAME_ATTR = "open_clip_model_name"
OPEN_CLIP_QUICK_GELU_ATTR = "open_clip_force_quick_gelu"

_WB = WEIGHT_OR_BIAS


def _tower_rules(src: str, dst: str) -> list[Rule]:
    """Rules for one open_clip ``Transformer`` (``src``) → HF ``CLIPEncoder`` (``dst``)."""
    return resblock_rules(f"{src}.resblocks.{{layer}}", f"{dst}.layers.{{layer}}")


#: open_clip ``CLIP`` (ViT tower, built-in text tower) → transformers ``CLIPModel``.
OPEN_CLIP_TO_HF_CLIP = KeyTable(
    "open_clip CLIP → transformers CLIPModel",
    [
        Rule("logit_scale", "logit_scale"),
        # text tower
        Rule("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        Rule("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        *_tower_rules("transformer", "text_model.encoder"),
        Rule(f"ln_final.{_WB}", "text_model.final_layer_norm.{p}"),
        # open_clip computes x @ text_projection; nn.Linear computes x @ W.T
        Rule("text_projection", "text_projection.weight", "transpose"),
        # vision tower
        Rule("visual.class_embedding", "vision_model.embeddings.class_embedding"),
        Rule("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
        Rule("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
        Rule(f"visual.ln_pre.{_WB}", "vision_model.pre_layrnorm.{p}"),
        *_tower_rules("visual.transformer", "vision_model.encoder"),
        Rule(f"visual.ln_post.{_WB}", "vision_model.post_layernorm.{p}"),
        Rule("visual.proj", "visual_projection.weight", "transpose"),
    ],
)


# open_clip config fields that transformers' CLIPModel cannot represent unless at these values.
_VISION_FIXED = {**OPEN_CLIP_PLAIN_VISION, "attentional_pool": False}

_MODIFIED_RESNET_MSG = (
    "{what} is an open_clip ModifiedResNet (RN50-style) CLIP. transformers has no ModifiedResNet CLIP "
    "vision tower, so it does not convert to CLIPModel; it converts to the ResNet-CLIP remote-code family "
    "(hqrs.modeling.convert_resnet_clip; `hqrs convert open-clip --model-name RN50` picks it)."
)


def clip_config_from_open_clip(
    model_name: str, force_quick_gelu: bool = False, model_cfg: Mapping[str, Any] | None = None
) -> CLIPConfig:
    """The transformers ``CLIPConfig`` equivalent to open_clip's config for ``model_name``.

    Every number comes from ``open_clip.get_model_config(model_name)`` (or ``model_cfg``, an open_clip model
    config dict, when given; with open_clip's dataclass defaults for fields the json leaves out). ``hidden_act`` is ``"quick_gelu"`` when the config sets
    ``quick_gelu`` or ``force_quick_gelu`` is true, else ``"gelu"``. The config remembers the open_clip
    name (``config.open_clip_model_name``) for the way back.

    Raises:
        ValueError: unknown name, ModifiedResNet (RN50…) config, or a config feature ``CLIPModel`` lacks
            (timm/HF towers, attention pooling, layer scale, SigLIP bias, ...).

    Example:
        >>> cfg = clip_config_from_open_clip("ViT-L-14-336")
        >>> cfg.vision_config.image_size, cfg.vision_config.patch_size, cfg.projection_dim
        (336, 14, 768)
        >>> clip_config_from_open_clip("ViT-B-32-quickgelu").text_config.hidden_act
        'quick_gelu'
    """
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from transformers import CLIPConfig

    cfg = open_clip_model_config(model_name, "HQRS-CLIP", ("ViT-",)) if model_cfg is None else dict(model_cfg)
    if "multimodal_cfg" in cfg or model_name.startswith("coca_"):
        raise ValueError(
            f"{model_name!r} is a CoCa architecture; it converts to RS-CoCa (hqrs.modeling.convert_rs_coca), "
            "not to CLIPModel"
        )
    extra = sorted(set(cfg) - OPEN_CLIP_CLIP_TOP_LEVEL)
    if extra or cfg.get("custom_text", False):
        raise ValueError(
            f"open_clip config {model_name!r} uses {extra or ['custom_text']}, which transformers' CLIPModel "
            "cannot represent"
        )
    vision_raw, text_raw = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    if isinstance(vision_raw.get("layers"), (list, tuple)):
        raise ValueError(_MODIFIED_RESNET_MSG.format(what=repr(model_name)))
    known_v, known_t = {f.name for f in fields(CLIPVisionCfg)}, {f.name for f in fields(CLIPTextCfg)}
    unknown = [f"vision_cfg.{k}" for k in vision_raw if k not in known_v]
    unknown += [f"text_cfg.{k}" for k in text_raw if k not in known_t]
    if unknown:
        raise ValueError(f"open_clip config {model_name!r} has fields hqrs does not know: {unknown}")
    vision, text = CLIPVisionCfg(**vision_raw), CLIPTextCfg(**text_raw)
    bad = [
        f"vision_cfg.{k}={getattr(vision, k)!r}" for k, v in _VISION_FIXED.items() if getattr(vision, k) != v
    ]
    bad += [
        f"text_cfg.{k}={getattr(text, k)!r}" for k, v in OPEN_CLIP_CLIP_TEXT.items() if getattr(text, k) != v
    ]
    if bad:
        raise ValueError(
            f"open_clip config {model_name!r} uses {', '.join(bad)}; transformers' CLIPModel has no such option"
        )
    image_size, patch_size = vision.image_size, vision.patch_size
    for what, value in (("image_size", image_size), ("patch_size", patch_size)):
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ValueError(f"open_clip config {model_name!r}: non-square {what} {tuple(value)}")
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    if vision.width % vision.head_width:
        raise ValueError(
            f"open_clip config {model_name!r}: vision width {vision.width} is not a multiple of head_width "
            f"{vision.head_width}"
        )
    act = "quick_gelu" if (cfg.get("quick_gelu", False) or force_quick_gelu) else "gelu"
    embed_dim = int(cfg["embed_dim"])
    text_config = {
        "vocab_size": text.vocab_size,
        "hidden_size": text.width,
        "intermediate_size": int(text.width * text.mlp_ratio),
        "num_hidden_layers": text.layers,
        "num_attention_heads": text.heads,
        "max_position_embeddings": text.context_length,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,  # torch.nn.LayerNorm default, which open_clip uses
        "projection_dim": embed_dim,
        # open_clip's tokenizer: <|startoftext|> 49406, <|endoftext|> 49407, zero padding
        "bos_token_id": text.vocab_size - 2,
        "eos_token_id": text.vocab_size - 1,
        "pad_token_id": text.pad_id,
    }
    vision_config = {
        "hidden_size": vision.width,
        "intermediate_size": int(vision.width * vision.mlp_ratio),
        "num_hidden_layers": vision.layers,
        "num_attention_heads": vision.width // vision.head_width,
        "image_size": int(image_size),
        "patch_size": int(patch_size),
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "projection_dim": embed_dim,
    }
    config = CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=embed_dim,
        logit_scale_init_value=float(cfg.get("init_logit_scale", 2.6592)),
    )
    setattr(config, OPEN_CLIP_NAME_ATTR, model_name)
    setattr(config, OPEN_CLIP_QUICK_GELU_ATTR, bool(force_quick_gelu))
    return config


def _describe_checkpoint(sd: Mapping[str, torch.Tensor]) -> str:
    """Architecture numbers read off an open_clip ViT CLIP state dict (for error messages)."""
    parts = []
    conv = sd.get("visual.conv1.weight")
    if conv is not None and conv.ndim == 4:
        vis_layers = {
            m.group(1) for k in sd if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", k))
        }
        parts.append(f"vision width {conv.shape[0]}, patch {conv.shape[-1]}, {len(vis_layers)} layers")
        pos = sd.get("visual.positional_embedding")
        if pos is not None and pos.ndim == 2:
            grid = int(round((pos.shape[0] - 1) ** 0.5))
            parts.append(f"image size {grid * conv.shape[-1]}")
    tok = sd.get("token_embedding.weight")
    if tok is not None:
        txt_layers = {m.group(1) for k in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
        parts.append(f"text width {tok.shape[1]}, {len(txt_layers)} layers")
    proj = sd.get("text_projection")
    if proj is not None and proj.ndim == 2:
        parts.append(f"embed dim {proj.shape[1]}")
    return "; ".join(parts) or "no ViT CLIP weights recognised"


def _fitting_architectures(expected_by_name: dict[str, dict[str, tuple]], converted: Mapping) -> list[str]:
    return [
        name
        for name, shapes in expected_by_name.items()
        if shapes.keys() == converted.keys()
        and all(tuple(converted[k].shape) == s for k, s in shapes.items())
    ]


def _guess_architectures(converted: Mapping[str, torch.Tensor]) -> list[str]:
    """open_clip names whose ``CLIPModel`` shapes equal those of ``converted`` (for error messages)."""
    import open_clip
    from transformers import CLIPModel

    def n_layers(prefix: str) -> int:
        return len({m.group(1) for k in converted if (m := re.match(rf"{prefix}\.(\d+)\.", k))})

    patch = converted.get("vision_model.embeddings.patch_embedding.weight")
    tokens = converted.get("text_model.embeddings.token_embedding.weight")
    if patch is None or tokens is None or patch.ndim != 4 or tokens.ndim != 2:
        return []
    seen = (
        patch.shape[0],
        patch.shape[-1],
        n_layers("vision_model.encoder.layers"),
        tokens.shape[1],
        n_layers("text_model.encoder.layers"),
    )
    candidates = {}
    for name in open_clip.list_models():
        try:
            config = clip_config_from_open_clip(name)
        except ValueError:
            continue
        v, t = config.vision_config, config.text_config
        if (v.hidden_size, v.patch_size, v.num_hidden_layers, t.hidden_size, t.num_hidden_layers) != seen:
            continue  # cheap pre-filter before building a (meta-device) model
        with torch.device("meta"):
            model = CLIPModel(config)
        candidates[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _fitting_architectures(candidates, converted)


def _check_source_kind(model_name: str, sd: Mapping[str, torch.Tensor]) -> None:
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in sd):
        raise ValueError(_MODIFIED_RESNET_MSG.format(what=f"the checkpoint given for {model_name!r}"))
    if any(k.startswith("text_decoder.") for k in sd):
        raise ValueError(
            f"the checkpoint given for {model_name!r} is a CoCa checkpoint (it has text_decoder.* weights); "
            "convert it with its coca_* architecture name"
        )


class CLIPConverter(OpenClipConverter):
    """HQRS-CLIP's :class:`~hqrs.modeling.conversion.OpenClipConverter`: open_clip ViT CLIP ⇄ ``CLIPModel``."""

    model_type = "clip"
    display = "HQRS-CLIP"

    def config_from_open_clip(self, model_name, model_cfg=None, force_quick_gelu=False) -> CLIPConfig:
        return clip_config_from_open_clip(model_name, force_quick_gelu=force_quick_gelu, model_cfg=model_cfg)

    def key_table(self, config) -> KeyTable:
        return OPEN_CLIP_TO_HF_CLIP  # per layer: one table for every depth and width

    def model_class(self) -> type[CLIPModel]:
        from transformers import CLIPModel

        return CLIPModel

    def build_processor(self, model_name: str, config) -> CLIPProcessor:
        return build_clip_processor(model_name)

    def check_source(self, model_name, state_dict) -> None:
        _check_source_kind(model_name, state_dict)

    def explain_mismatch(self, exc, model_name, state_dict, converted) -> ValueError:
        """Missing keys / wrong shapes: add the checkpoint's own numbers and the open_clip names it fits."""
        if not isinstance(exc, MissingKeysError):
            return exc
        fits = _guess_architectures(converted)
        hint = f"it fits: {', '.join(fits)}" if fits else "it fits no built-in open_clip ViT name"
        return MissingKeysError(
            exc.missing,
            exc.unexpected,
            exc.mismatched,
            context=(
                f"checkpoint does not fit open_clip {model_name!r} (checkpoint: {_describe_checkpoint(state_dict)}; "
                f"{hint}). Details"
            ),
        )


#: The HQRS-CLIP converter (``hqrs.modeling.families.HQRS_CLIP.converter``).
CONVERTER = CLIPConverter()


def convert_open_clip_clip(
    model_name: str, state_dict: Mapping[str, torch.Tensor], force_quick_gelu: bool = False
) -> CLIPModel:
    """Build a transformers ``CLIPModel`` holding the open_clip ViT CLIP weights ``state_dict``.

    Strict: every source key must be mapped by :data:`OPEN_CLIP_TO_HF_CLIP` and every ``CLIPModel``
    weight filled with a tensor of the right shape. The model is built without random init (weights
    are assigned, not copied), so a memory-mapped checkpoint stays file-backed
    (:meth:`~hqrs.modeling.conversion.OpenClipConverter.to_hf`).

    Args:
        model_name: open_clip architecture, e.g. ``"ViT-B-32-quickgelu"``.
        state_dict: open_clip state dict (see :func:`hqrs.modeling.key_mapping.load_checkpoint`).
        force_quick_gelu: use QuickGELU with a plain name (open_clip's ``force_quick_gelu``).

    Raises:
        ValueError: ModifiedResNet/CoCa weights or name, mixed dtypes; ``UnmappedKeysError`` for keys no rule
            maps; ``MissingKeysError`` when the weights belong to another architecture (the message lists the
            missing keys and shape mismatches, the checkpoint's own numbers and the names it fits).
    """
    return CONVERTER.to_hf(model_name, state_dict, force_quick_gelu=force_quick_gelu)


def clip_to_open_clip_state_dict(model: CLIPModel) -> dict[str, torch.Tensor]:
    """The open_clip state dict of a ``CLIPModel`` (exact inverse of :func:`convert_open_clip_clip`).

    ``open_clip.create_model(model.config.open_clip_model_name).load_state_dict(sd, strict=True)``
    accepts the result (checked when that name is an open_clip architecture). Raises ``UnmappedKeysError``
    for weights the table cannot map back (e.g. a CLIPModel with extra heads).
    """
    return CONVERTER.to_open_clip(model)


def save_hf_clip(model: CLIPModel, processor: CLIPProcessor | None, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors) and its processor to ``out_dir``; returns the folder.

    ``processor=None`` builds open_clip's tokenizer and eval transform for the architecture recorded in
    ``model.config.open_clip_model_name``. The folder loads offline with ``CLIPModel.from_pretrained``,
    ``AutoProcessor.from_pretrained`` and ``pipeline("zero-shot-image-classification", model=DIR)``.
    """
    return CONVERTER.save_hf(model, processor, out_dir)
