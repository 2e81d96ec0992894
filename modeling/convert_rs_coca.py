"""open_clip CoCa ⇄ RS-CoCa (transformers) conversion, as a declarative key table.

* :func:`coca_config_from_open_clip` — ``RSCoCaConfig`` from ``open_clip.get_model_config(name)``.
* :func:`coca_key_table` — the :class:`~hqrs.modeling.key_mapping.KeyTable` open_clip → HF for a config.
* :func:`convert_open_clip_coca` — open_clip state dict → :class:`RSCoCaModel` (strict: every key mapped).
* :func:`coca_to_open_clip_state_dict` — the inverse; ``open_clip.create_model(name).load_state_dict(sd,
  strict=True)`` accepts it and it equals the source state dict exactly.
* :func:`save_hf_coca` — write a folder that ``AutoModel`` / ``AutoModelForImageTextToText`` /
  ``AutoProcessor.from_pretrained(DIR, trust_remote_code=True)`` load without ``hqrs`` installed.

Example:
    >>> import open_clip
    >>> from hqrs.modeling.convert_rs_coca import convert_open_clip_coca, coca_to_open_clip_state_dict
    >>> oc = open_clip.create_model("coca_ViT-B-32", pretrained=None)  # doctest: +SKIP
    >>> model = convert_open_clip_coca("coca_ViT-B-32", oc.state_dict())  # doctest: +SKIP
    >>> oc.load_state_dict(coca_to_open_clip_state_dict(model), strict=True)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .configuration_rs_coca import RSCoCaConfig
from .conversion import OpenClipConverter, open_clip_model_config, open_clip_processor
from .key_mapping import (
    OPEN_CLIP_PLAIN_TEXT,
    OPEN_CLIP_PLAIN_VISION,
    KeyTable,
    Rule,
    resblock_rules,
)
from .modeling_rs_coca import RSCoCaModel
from .processing_rs_coca import RSCoCaProcessor
from .rs_coca_files import MODEL_TYPE, save_rs_coca_remote_code

__all__ = [
    "CAPTION_AUTO_CLASS",
    "CONVERTER",
    "GENERATION_DEFAULTS",
    "coca_config_from_open_clip",
    "coca_key_table",
    "coca_to_open_clip_state_dict",
    "convert_open_clip_coca",
    "default_generation_config",
    "RSCoCaConverter",
    "save_hf_coca",
]

# The captioning auto-class transformers 5 offers (AutoModelForVision2Seq was removed in v5).
CAPTION_AUTO_CLASS = "AutoModelForImageTextToText"

# generation_config.json defaults, chosen to match open_clip's CoCa.generate: max_length=30 is open_clip's
# seq_len=30 (total tokens with <start_of_text>), min_length=5 its min_seq_len=5, repetition_penalty=1.0;
# beam search with 3 beams (open_clip uses 6 beams in 3 diverse groups, which transformers 5 no longer ships).
# A max_length in generation_config.json also keeps the image-text-to-text pipeline from imposing its own
# 256-token default; a max_new_tokens passed to generate takes precedence over it (transformers warns).
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_length": 30,
    "min_length": 5,
    "num_beams": 3,
    "do_sample": False,
    "early_stopping": True,
}

# open_clip options whose non-default values RS-CoCa does not implement.
_UNSUPPORTED = {
    "vision_cfg": {**OPEN_CLIP_PLAIN_VISION, "patch_dropout": 0.0},
    "text_cfg": OPEN_CLIP_PLAIN_TEXT,
    "multimodal_cfg": {"ls_init_value": None},
}


def _open_clip_cfg(model_name: str) -> dict:
    cfg = open_clip_model_config(model_name, "RS-CoCa", ("coca_",))
    if "multimodal_cfg" not in cfg:
        raise ValueError(
            f"open_clip architecture {model_name!r} is not a CoCa model (its config has no multimodal_cfg); "
            "convert CLIP architectures with the HQRS-CLIP converter instead"
        )
    return cfg


def coca_config_from_open_clip(model_name: str, model_cfg: Mapping[str, Any] | None = None) -> RSCoCaConfig:
    """The :class:`RSCoCaConfig` equal to open_clip's architecture ``model_name`` (e.g. ``coca_ViT-B-32``).

    ``model_cfg`` (optional) is an open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``,
    ``multimodal_cfg``) to use instead of ``open_clip.get_model_config(model_name)``, e.g. for a custom size.

    Raises:
        ValueError: unknown name, not a CoCa model, or an open_clip option RS-CoCa does not implement
            (layer scale, timm / Hugging Face towers, custom attention blocks, ...).
    """
    from open_clip.coca_model import MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    cfg = _open_clip_cfg(model_name) if model_cfg is None else dict(model_cfg)
    return _config_from_cfgs(
        model_name,
        cfg["embed_dim"],
        CLIPVisionCfg(**cfg["vision_cfg"]),
        CLIPTextCfg(**cfg["text_cfg"]),
        MultimodalCfg(**cfg["multimodal_cfg"]),
        quick_gelu=bool(cfg.get("quick_gelu", False)),
    )


def _config_from_cfgs(model_name, embed_dim, vision, text, multimodal, quick_gelu=False) -> RSCoCaConfig:
    bad = []
    for section, obj in (("vision_cfg", vision), ("text_cfg", text), ("multimodal_cfg", multimodal)):
        for name, default in _UNSUPPORTED[section].items():
            if getattr(obj, name, default) != default:
                bad.append(f"{section}.{name}={getattr(obj, name)!r}")
    if isinstance(vision.layers, (list, tuple)):
        bad.append(f"vision_cfg.layers={vision.layers!r} (ModifiedResNet)")
    if vision.attentional_pool is not True:
        bad.append(f"vision_cfg.attentional_pool={vision.attentional_pool!r} (RS-CoCa needs True)")
    if not text.embed_cls:
        bad.append("text_cfg.embed_cls=False (RS-CoCa needs the CoCa CLS token)")
    if bad:
        raise ValueError(
            f"open_clip architecture {model_name!r} uses options RS-CoCa does not implement: {', '.join(bad)}"
        )
    act = "quick_gelu" if quick_gelu else "gelu"
    return RSCoCaConfig(
        vision_config={
            "hidden_size": vision.width,
            "intermediate_size": int(vision.width * vision.mlp_ratio),
            "num_hidden_layers": vision.layers,
            "num_attention_heads": vision.width // vision.head_width,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "pooler_hidden_size": embed_dim,
            "attn_pooler_queries": vision.attn_pooler_queries,
            "attn_pooler_heads": vision.attn_pooler_heads,
            "hidden_act": act,
        },
        text_config={
            "vocab_size": text.vocab_size,
            "hidden_size": text.width,
            "intermediate_size": int(text.width * text.mlp_ratio),
            "num_hidden_layers": text.layers,
            "num_attention_heads": text.heads,
            "max_position_embeddings": text.context_length,
            "hidden_act": act,
        },
        multimodal_config={
            "vocab_size": multimodal.vocab_size,
            "hidden_size": multimodal.width,
            # open_clip's _build_text_decoder_tower does not pass mlp_ratio on: the decoder MLP is always 4x.
            "intermediate_size": multimodal.width * 4,
            "num_hidden_layers": multimodal.layers,
            "num_attention_heads": multimodal.heads,
            "max_position_embeddings": multimodal.context_length,
            "hidden_act": act,
        },
        projection_dim=embed_dim,
        pad_token_id=text.pad_id,
        open_clip_model_name=model_name,
    )


def coca_key_table(config: RSCoCaConfig) -> KeyTable:
    """open_clip CoCa → RS-CoCa key table for ``config``.

    The attentional pooler's ``nn.MultiheadAttention`` stores separate ``q/k/v_proj_weight`` when the ViT width
    differs from the pooler width (all released CoCa models) and a fused ``in_proj_weight`` otherwise; the table
    follows the config so that its inverse is unambiguous.
    """
    dec_cross = "text_decoder.cross_attn.{layer}"
    hf_dec = "multimodal_decoder.layers.{layer}"
    pool = "visual.attn_pool.attn"
    hf_pool = "vision_model.attn_pool.attn"
    if config.vision_config.hidden_size == config.vision_config.pooler_hidden_size:
        pool_weights = [
            Rule(f"{pool}.in_proj_weight", tuple(f"{hf_pool}.{p}_proj.weight" for p in "qkv"), "split_qkv")
        ]
    else:
        pool_weights = [Rule(f"{pool}.{p}_proj_weight", f"{hf_pool}.{p}_proj.weight") for p in "qkv"]
    rules = [
        Rule("logit_scale", "logit_scale"),
        # vision tower
        Rule("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
        Rule("visual.class_embedding", "vision_model.embeddings.class_embedding"),
        Rule("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
        Rule("visual.ln_pre.weight", "vision_model.pre_layernorm.weight"),
        Rule("visual.ln_pre.bias", "vision_model.pre_layernorm.bias"),
        *resblock_rules("visual.transformer.resblocks.{layer}", "vision_model.layers.{layer}"),
        Rule("visual.attn_pool.query", "vision_model.attn_pool.query"),
        Rule("visual.attn_pool.ln_q.weight", "vision_model.attn_pool.query_layernorm.weight"),
        Rule("visual.attn_pool.ln_q.bias", "vision_model.attn_pool.query_layernorm.bias"),
        Rule("visual.attn_pool.ln_k.weight", "vision_model.attn_pool.context_layernorm.weight"),
        Rule("visual.attn_pool.ln_k.bias", "vision_model.attn_pool.context_layernorm.bias"),
        *pool_weights,
        Rule(f"{pool}.in_proj_bias", tuple(f"{hf_pool}.{p}_proj.bias" for p in "qkv"), "split_qkv"),
        Rule(f"{pool}.out_proj.weight", f"{hf_pool}.out_proj.weight"),
        Rule(f"{pool}.out_proj.bias", f"{hf_pool}.out_proj.bias"),
        Rule("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
        Rule("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
        Rule("visual.proj", "visual_projection.weight", "transpose"),
        # text tower
        Rule("text.token_embedding.weight", "text_model.token_embedding.weight"),
        Rule("text.positional_embedding", "text_model.position_embedding.weight"),
        Rule("text.cls_emb", "text_model.cls_embedding"),
        *resblock_rules("text.transformer.resblocks.{layer}", "text_model.layers.{layer}"),
        Rule("text.ln_final.weight", "text_model.final_layer_norm.weight"),
        Rule("text.ln_final.bias", "text_model.final_layer_norm.bias"),
        Rule("text.text_projection", "text_projection.weight", "transpose"),
        # multimodal decoder: resblocks[i] is the self-attention block, cross_attn[i] the cross-attention block
        *resblock_rules("text_decoder.resblocks.{layer}", hf_dec),
        Rule(f"{dec_cross}.ln_1.weight", f"{hf_dec}.encoder_attn_layer_norm.weight"),
        Rule(f"{dec_cross}.ln_1.bias", f"{hf_dec}.encoder_attn_layer_norm.bias"),
        Rule(f"{dec_cross}.ln_1_kv.weight", f"{hf_dec}.encoder_attn_kv_layer_norm.weight"),
        Rule(f"{dec_cross}.ln_1_kv.bias", f"{hf_dec}.encoder_attn_kv_layer_norm.bias"),
        Rule(
            f"{dec_cross}.attn.in_proj_weight",
            tuple(f"{hf_dec}.encoder_attn.{p}_proj.weight" for p in "qkv"),
            "split_qkv",
        ),
        Rule(
            f"{dec_cross}.attn.in_proj_bias",
            tuple(f"{hf_dec}.encoder_attn.{p}_proj.bias" for p in "qkv"),
            "split_qkv",
        ),
        Rule(f"{dec_cross}.attn.out_proj.weight", f"{hf_dec}.encoder_attn.out_proj.weight"),
        Rule(f"{dec_cross}.attn.out_proj.bias", f"{hf_dec}.encoder_attn.out_proj.bias"),
        Rule(f"{dec_cross}.ln_2.weight", f"{hf_dec}.encoder_mlp_layer_norm.weight"),
        Rule(f"{dec_cross}.ln_2.bias", f"{hf_dec}.encoder_mlp_layer_norm.bias"),
        Rule(f"{dec_cross}.mlp.c_fc.weight", f"{hf_dec}.encoder_mlp.fc1.weight"),
        Rule(f"{dec_cross}.mlp.c_fc.bias", f"{hf_dec}.encoder_mlp.fc1.bias"),
        Rule(f"{dec_cross}.mlp.c_proj.weight", f"{hf_dec}.encoder_mlp.fc2.weight"),
        Rule(f"{dec_cross}.mlp.c_proj.bias", f"{hf_dec}.encoder_mlp.fc2.bias"),
        Rule("text_decoder.ln_final.weight", "multimodal_decoder.final_layer_norm.weight"),
        Rule("text_decoder.ln_final.bias", "multimodal_decoder.final_layer_norm.bias"),
        Rule("text_decoder.text_projection", "lm_head.weight", "transpose"),
    ]
    return KeyTable("open_clip CoCa -> RS-CoCa", rules)


class RSCoCaConverter(OpenClipConverter):
    """RS-CoCa's :class:`~hqrs.modeling.conversion.OpenClipConverter`: open_clip CoCa ⇄ :class:`RSCoCaModel`."""

    model_type = MODEL_TYPE
    display = "RS-CoCa"

    def config_from_open_clip(self, model_name, model_cfg=None, force_quick_gelu=False) -> RSCoCaConfig:
        if force_quick_gelu:
            raise ValueError(
                f"force_quick_gelu applies to CLIP architectures only, not to the CoCa architecture {model_name!r} "
                "(its config's quick_gelu decides)"
            )
        return coca_config_from_open_clip(model_name, model_cfg)

    def key_table(self, config: RSCoCaConfig) -> KeyTable:
        return coca_key_table(config)

    def model_class(self) -> type[RSCoCaModel]:
        return RSCoCaModel

    def build_processor(self, model_name: str, config: RSCoCaConfig) -> RSCoCaProcessor:
        return build_rs_coca_processor(model_name, config)

    def finish_model(self, model: RSCoCaModel) -> None:
        model.generation_config = default_generation_config(model.config)

    def write_remote_code(self, folder: Path) -> None:
        save_rs_coca_remote_code(folder)


#: The RS-CoCa converter (``hqrs.modeling.families.RS_COCA.converter``).
CONVERTER = RSCoCaConverter()


def convert_open_clip_coca(
    model_name: str, state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any] | None = None
) -> RSCoCaModel:
    """Convert an open_clip CoCa state dict of architecture ``model_name`` into an :class:`RSCoCaModel`.

    ``state_dict`` is e.g. ``hqrs.modeling.key_mapping.load_checkpoint(path)`` (prefixes already stripped).
    Every key must be mapped and every model weight present with the right shape; otherwise a
    ``ValueError`` lists the offending keys (wrong architecture for the checkpoint shows up here).
    ``model_cfg`` as in :func:`coca_config_from_open_clip`. The returned model takes over the tensors of
    ``state_dict`` (no copy; a memory-mapped checkpoint stays file-backed; ``q/k/v`` split from a fused
    ``in_proj`` stay views of it until ``save_pretrained`` writes them): pass a copy if you keep using the
    source model (:meth:`~hqrs.modeling.conversion.OpenClipConverter.to_hf`).
    """
    return CONVERTER.to_hf(model_name, state_dict, model_cfg)


def coca_to_open_clip_state_dict(model: RSCoCaModel) -> dict[str, torch.Tensor]:
    """The open_clip CoCa state dict of ``model`` (exact inverse of :func:`convert_open_clip_coca`)."""
    return CONVERTER.to_open_clip(model)


def default_generation_config(config: RSCoCaConfig):
    """``GenerationConfig`` with :data:`GENERATION_DEFAULTS` and the tokenizer's special ids from ``config``."""
    from transformers import GenerationConfig

    return GenerationConfig(
        **GENERATION_DEFAULTS,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )


def build_rs_coca_processor(model_name: str, config: RSCoCaConfig) -> RSCoCaProcessor:
    """Processor for an open_clip CoCa architecture: open_clip's eval transform + CLIP BPE tokenizer."""
    return open_clip_processor(
        RSCoCaProcessor,
        model_name,
        max_length=config.text_config.max_position_embeddings,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
    )


def save_hf_coca(model: RSCoCaModel, processor: RSCoCaProcessor | None, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors + config + ``generation_config.json`` + remote code) and ``processor``.

    The folder loads with ``AutoModel``, ``AutoModelForImageTextToText`` and ``AutoProcessor``
    ``.from_pretrained(out_dir, trust_remote_code=True)``; the model code is copied into it, so ``hqrs`` is
    not needed to load it. Without ``processor``, one is built from ``config.open_clip_model_name``.
    """
    return CONVERTER.save_hf(model, processor, out_dir)
