"""open_clip ModifiedResNet CLIP (RN50, RN101, ...) ⇄ ResNet-CLIP (transformers), as a declarative key table.

* :func:`is_resnet_clip_name` — whether an open_clip architecture name is a ModifiedResNet CLIP.
* :func:`resnet_clip_config_from_open_clip` — :class:`ResNetCLIPConfig` from ``open_clip.get_model_config(name)``.
* :func:`resnet_clip_key_table` — the :class:`~hqrs.modeling.key_mapping.KeyTable` open_clip → HF for a config.
* :func:`convert_open_clip_resnet_clip` — open_clip state dict → :class:`ResNetCLIPModel` (strict: every key
  mapped, every weight filled with the right shape).
* :func:`resnet_clip_to_open_clip_state_dict` — the inverse; it equals the source state dict bit for bit and
  ``open_clip.create_model(name).load_state_dict(sd, strict=True)`` accepts it.
* :func:`save_hf_resnet_clip` — a folder that ``AutoModel`` / ``AutoProcessor`` ``.from_pretrained(DIR,
  trust_remote_code=True)`` and ``pipeline("zero-shot-image-classification", model=DIR, trust_remote_code=True)``
  load without ``hqrs`` installed.

Weight names (open_clip → HF): ``visual.conv{i}``/``bn{i}`` → ``vision_model.embedder.layers.{i-1}.convolution`` /
``.normalization``; ``visual.layer{s}.{b}.conv{i}``/``bn{i}`` → ``vision_model.encoder.stages.{s-1}.layers.{b}
.layer.{i-1}.convolution``/``.normalization``; ``.downsample.0``/``.1`` → ``.shortcut.convolution``/
``.normalization``; ``visual.attnpool.{q,k,v}_proj`` → ``vision_model.attention_pool.{q,k,v}_proj``,
``c_proj`` → ``out_proj``, ``positional_embedding`` → ``position_embedding``; the text tower as in HQRS-CLIP
(``text_model.*`` of transformers' ``CLIPTextModel``), ``text_projection`` transposed into an ``nn.Linear``.

Example:
    >>> import open_clip
    >>> from hqrs.modeling.convert_resnet_clip import convert_open_clip_resnet_clip
    >>> oc = open_clip.create_model("RN50", pretrained=None)  # doctest: +SKIP
    >>> model = convert_open_clip_resnet_clip("RN50", oc.state_dict())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from .configuration_resnet_clip import ResNetCLIPConfig
from .conversion import OpenClipConverter, open_clip_model_config, open_clip_processor
from .key_mapping import (
    OPEN_CLIP_CLIP_TEXT,
    OPEN_CLIP_CLIP_TOP_LEVEL,
    WEIGHT_OR_BIAS,
    KeyTable,
    Rule,
    resblock_rules,
)
from .modeling_resnet_clip import ResNetCLIPModel
from .processing_resnet_clip import ResNetCLIPProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "CONVERTER",
    "MODEL_TYPE",
    "ResNetCLIPConverter",
    "convert_open_clip_resnet_clip",
    "is_resnet_clip_name",
    "resnet_clip_config_from_open_clip",
    "resnet_clip_key_table",
    "resnet_clip_to_open_clip_state_dict",
    "save_hf_resnet_clip",
]

#: ``model_type`` of the saved ``config.json``.
MODEL_TYPE = ResNetCLIPConfig.model_type

_BN = "{p:weight|bias|running_mean|running_var|num_batches_tracked}"


def is_resnet_clip_name(model_name: str) -> bool:
    """True when open_clip knows ``model_name`` and its vision tower is a ModifiedResNet (``layers`` is a list).

    >>> is_resnet_clip_name("RN50"), is_resnet_clip_name("RN101-quickgelu"), is_resnet_clip_name("ViT-B-32")
    (True, True, False)
    """
    import open_clip

    cfg = open_clip.get_model_config(model_name) if isinstance(model_name, str) and model_name else None
    return cfg is not None and isinstance(cfg.get("vision_cfg", {}).get("layers"), (list, tuple))


def resnet_clip_config_from_open_clip(
    model_name: str, model_cfg: Mapping[str, Any] | None = None, force_quick_gelu: bool = False
) -> ResNetCLIPConfig:
    """The :class:`ResNetCLIPConfig` equal to open_clip's architecture ``model_name`` (``RN50``, ``RN101`` ...).

    Args:
        model_name: open_clip architecture; recorded in ``config.open_clip_model_name`` for the way back.
        model_cfg: an open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``) to use instead
            of ``open_clip.get_model_config(model_name)`` (custom sizes, tests).
        force_quick_gelu: QuickGELU in the text tower with a plain name (open_clip's ``force_quick_gelu``).

    Raises:
        ValueError: unknown name, a ViT (not ModifiedResNet) config, or a text-tower option transformers'
            ``CLIPTextModel`` cannot represent; the message names the option and its value.

    Example:
        >>> cfg = resnet_clip_config_from_open_clip("RN101")
        >>> cfg.vision_config.layers, cfg.projection_dim, cfg.text_config.hidden_act
        ([3, 4, 23, 3], 512, 'gelu')
    """
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    cfg = open_clip_model_config(model_name, "ResNet-CLIP", ("RN",)) if model_cfg is None else dict(model_cfg)
    vision_raw, text_raw = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
    if not isinstance(vision_raw.get("layers"), (list, tuple)):
        raise ValueError(
            f"open_clip architecture {model_name!r} is not a ModifiedResNet CLIP (vision_cfg.layers="
            f"{vision_raw.get('layers')!r} is not a list); convert ViT CLIPs with the HQRS-CLIP converter"
        )
    extra = sorted(set(cfg) - OPEN_CLIP_CLIP_TOP_LEVEL)
    if extra or cfg.get("custom_text", False):
        raise ValueError(
            f"open_clip config {model_name!r} uses {extra or ['custom_text']}, which hqrs cannot represent"
        )
    known_v, known_t = {f.name for f in fields(CLIPVisionCfg)}, {f.name for f in fields(CLIPTextCfg)}
    unknown = [f"vision_cfg.{k}" for k in vision_raw if k not in known_v]
    unknown += [f"text_cfg.{k}" for k in text_raw if k not in known_t]
    if unknown:
        raise ValueError(f"open_clip config {model_name!r} has fields hqrs does not know: {unknown}")
    vision, text = CLIPVisionCfg(**vision_raw), CLIPTextCfg(**text_raw)
    bad = [
        f"text_cfg.{k}={getattr(text, k)!r}" for k, v in OPEN_CLIP_CLIP_TEXT.items() if getattr(text, k) != v
    ]
    image_size = vision.image_size
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            bad.append(f"vision_cfg.image_size={tuple(image_size)!r} (not square)")
        image_size = image_size[0]
    if bad:
        raise ValueError(
            f"open_clip config {model_name!r} uses {', '.join(bad)}; ResNet-CLIP has no such option"
        )
    embed_dim = int(cfg["embed_dim"])
    act = "quick_gelu" if (cfg.get("quick_gelu", False) or force_quick_gelu) else "gelu"
    return ResNetCLIPConfig(
        vision_config={
            "layers": list(vision.layers),
            "width": vision.width,
            "head_width": vision.head_width,
            "image_size": int(image_size),
            "projection_dim": embed_dim,
        },
        text_config={
            "vocab_size": text.vocab_size,
            "hidden_size": text.width,
            "intermediate_size": int(text.width * text.mlp_ratio),
            "num_hidden_layers": text.layers,
            "num_attention_heads": text.heads,
            "max_position_embeddings": text.context_length,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "pad_token_id": text.pad_id,
            "bos_token_id": text.vocab_size - 2,
            "eos_token_id": text.vocab_size - 1,
        },
        projection_dim=embed_dim,
        logit_scale_init_value=float(cfg.get("init_logit_scale", 2.6592)),
        open_clip_model_name=model_name,
        open_clip_force_quick_gelu=bool(force_quick_gelu),
    )


def _conv_bn_rules(src: str, dst: str, conv: str, bn: str) -> list[Rule]:
    """open_clip ``{src}.{conv}.weight`` + ``{src}.{bn}.*`` → ``{dst}.convolution.weight`` + ``{dst}.normalization.*``."""
    return [
        Rule(f"{src}.{conv}.weight", f"{dst}.convolution.weight"),
        Rule(f"{src}.{bn}.{_BN}", f"{dst}.normalization.{{p}}"),
    ]


def resnet_clip_key_table(config: ResNetCLIPConfig) -> KeyTable:
    """open_clip ModifiedResNet CLIP → ResNet-CLIP key table for ``config`` (4 stages, ``{block}`` any index).

    The table is written out per stem convolution, stage and bottleneck convolution, because open_clip counts
    them from 1 (``conv1``, ``layer1``) and transformers-style module lists from 0.
    """
    wb = WEIGHT_OR_BIAS
    rules: list[Rule] = [Rule("logit_scale", "logit_scale")]
    for i in range(3):
        rules += _conv_bn_rules("visual", f"vision_model.embedder.layers.{i}", f"conv{i + 1}", f"bn{i + 1}")
    for s in range(len(config.vision_config.layers)):
        src, dst = f"visual.layer{s + 1}.{{block}}", f"vision_model.encoder.stages.{s}.layers.{{block}}"
        for i in range(3):
            rules += _conv_bn_rules(src, f"{dst}.layer.{i}", f"conv{i + 1}", f"bn{i + 1}")
        rules += _conv_bn_rules(src, f"{dst}.shortcut", "downsample.0", "downsample.1")
    pool, hf_pool = "visual.attnpool", "vision_model.attention_pool"
    rules += [
        Rule(f"{pool}.positional_embedding", f"{hf_pool}.position_embedding"),
        *[Rule(f"{pool}.{p}_proj.{wb}", f"{hf_pool}.{p}_proj.{{p}}") for p in "qkv"],
        Rule(f"{pool}.c_proj.{wb}", f"{hf_pool}.out_proj.{{p}}"),
        # text tower: transformers' CLIPTextModel
        Rule("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        Rule("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        *resblock_rules("transformer.resblocks.{layer}", "text_model.encoder.layers.{layer}"),
        Rule(f"ln_final.{wb}", "text_model.final_layer_norm.{p}"),
        # open_clip computes x @ text_projection; nn.Linear computes x @ W.T
        Rule("text_projection", "text_projection.weight", "transpose"),
    ]
    return KeyTable("open_clip ModifiedResNet CLIP -> ResNet-CLIP", rules)


def _check_source_kind(model_name: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    if not any(k.startswith("visual.layer1.") for k in state_dict):
        vit = "; it looks like a ViT CLIP" if "visual.proj" in state_dict else ""
        raise ValueError(
            f"the checkpoint given for {model_name!r} is not an open_clip ModifiedResNet checkpoint (it has no "
            f"visual.layer1.* weights{vit}); give the architecture name it was trained with (e.g. ViT-B-32)"
        )


class ResNetCLIPConverter(OpenClipConverter):
    """ResNet-CLIP's :class:`~hqrs.modeling.conversion.OpenClipConverter`: open_clip ModifiedResNet CLIP ⇄
    :class:`ResNetCLIPModel`."""

    model_type = MODEL_TYPE
    display = "ResNet-CLIP"

    def config_from_open_clip(self, model_name, model_cfg=None, force_quick_gelu=False) -> ResNetCLIPConfig:
        return resnet_clip_config_from_open_clip(model_name, model_cfg, force_quick_gelu=force_quick_gelu)

    def key_table(self, config: ResNetCLIPConfig) -> KeyTable:
        return resnet_clip_key_table(config)

    def model_class(self) -> type[ResNetCLIPModel]:
        return ResNetCLIPModel

    def build_processor(self, model_name: str, config: ResNetCLIPConfig) -> ResNetCLIPProcessor:
        return build_resnet_clip_processor(model_name, config)

    def check_source(self, model_name, state_dict) -> None:
        _check_source_kind(model_name, state_dict)

    # remote code: ResNetCLIPModel/-Config are registered for the auto classes (modeling_resnet_clip.py), so
    # save_pretrained itself copies the code files and writes config.json's auto_map


#: The ResNet-CLIP converter (``hqrs.modeling.families.RESNET_CLIP.converter``).
CONVERTER = ResNetCLIPConverter()


def convert_open_clip_resnet_clip(
    model_name: str,
    state_dict: Mapping[str, torch.Tensor],
    model_cfg: Mapping[str, Any] | None = None,
    force_quick_gelu: bool = False,
) -> ResNetCLIPModel:
    """Convert an open_clip ModifiedResNet CLIP state dict of architecture ``model_name`` into a
    :class:`ResNetCLIPModel` (:meth:`~hqrs.modeling.conversion.OpenClipConverter.to_hf`).

    Args:
        model_name: ``"RN50"``, ``"RN101"``, ``"RN50-quickgelu"`` ...
        state_dict: e.g. ``hqrs.modeling.key_mapping.load_checkpoint(path)`` (``module.`` prefixes stripped);
            the model takes over its tensors (pass a copy if you keep using the source model).
        model_cfg / force_quick_gelu: as in :func:`resnet_clip_config_from_open_clip`.

    Raises:
        ValueError: not a ModifiedResNet checkpoint, mixed dtypes; ``UnmappedKeysError`` for keys no rule maps;
            ``MissingKeysError`` (missing keys, shape mismatches) when the weights belong to another size.
    """
    return CONVERTER.to_hf(model_name, state_dict, model_cfg, force_quick_gelu=force_quick_gelu)


def resnet_clip_to_open_clip_state_dict(model: ResNetCLIPModel) -> dict[str, torch.Tensor]:
    """The open_clip state dict of ``model`` (exact inverse of :func:`convert_open_clip_resnet_clip`).

    When ``config.open_clip_model_name`` is a registered open_clip name, the keys and shapes are checked against
    ``open_clip.create_model(name)`` (on the meta device), so the result loads with ``strict=True``.
    """
    return CONVERTER.to_open_clip(model)


def build_resnet_clip_processor(model_name: str, config: ResNetCLIPConfig) -> ResNetCLIPProcessor:
    """open_clip's eval transform for ``model_name`` + the offline CLIP BPE tokenizer, as a processor."""
    text = config.text_config
    return open_clip_processor(
        ResNetCLIPProcessor,
        model_name,
        max_length=text.max_position_embeddings,
        pad_token_id=text.pad_token_id,
        eos_token_id=text.eos_token_id,
    )


def save_hf_resnet_clip(
    model: ResNetCLIPModel, processor: ResNetCLIPProcessor | None, out_dir: str | os.PathLike
) -> Path:
    """Write ``model`` (safetensors + ``config.json`` with ``auto_map`` + the remote-code files) and its processor.

    Without ``processor``, one is built from ``config.open_clip_model_name``. The folder loads with
    ``AutoModel`` / ``AutoProcessor`` ``.from_pretrained(out_dir, trust_remote_code=True)`` and the
    zero-shot-image-classification pipeline, without ``hqrs``. Returns ``out_dir``.

    Raises:
        ValueError: no processor and no ``open_clip_model_name`` to build one from.
    """
    return CONVERTER.save_hf(model, processor, out_dir)
