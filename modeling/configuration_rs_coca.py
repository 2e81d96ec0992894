"""RS-CoCa model configuration.

RS-CoCa is open_clip's CoCa (Contrastive Captioners, Yu et al. 2022) as a transformers model: a ViT image tower
with an attentional pooler, a causal text tower with an appended CLS token, and a multimodal decoder whose
layers alternate causal self-attention and cross-attention to the pooled image tokens.

This file is shipped next to ``modeling_rs_coca.py`` and ``processing_rs_coca.py`` in every saved RS-CoCa folder
(remote code), so it imports nothing from ``hqrs``.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

__all__ = ["RSCoCaConfig", "RSCoCaMultimodalConfig", "RSCoCaTextConfig", "RSCoCaVisionConfig"]

# open_clip's CLIP BPE tokenizer: id 0 is the pad id open_clip pads with, 49406 is <start_of_text>,
# 49407 is <end_of_text>. These are config defaults only; the model reads them from the config.
_CLIP_PAD_ID = 0
_CLIP_SOT_ID = 49406
_CLIP_EOT_ID = 49407
_ACTIVATIONS = ("gelu", "quick_gelu")


def _check_heads(name: str, hidden_size: int, num_heads: int) -> None:
    if num_heads <= 0 or hidden_size % num_heads != 0:
        raise ValueError(
            f"{name}: hidden_size={hidden_size} must be a positive multiple of num_attention_heads={num_heads}."
        )


def _check_act(name: str, act: str) -> None:
    if act not in _ACTIVATIONS:
        raise ValueError(f"{name}: hidden_act={act!r} is not supported; use one of {_ACTIVATIONS}.")


class RSCoCaVisionConfig(PretrainedConfig):
    r"""Vision tower of RS-CoCa: a ViT whose output goes through an attentional pooler.

    Args:
        hidden_size: width of the ViT (open_clip ``vision_cfg.width``).
        intermediate_size: MLP width (``width * mlp_ratio``).
        num_hidden_layers / num_attention_heads: ViT depth and heads (``width // head_width``).
        image_size / patch_size / num_channels: input geometry.
        pooler_hidden_size: width of the attentional pooler output (open_clip's ``embed_dim``); the multimodal
            decoder cross-attends to these tokens, so it must equal ``multimodal_config.hidden_size``.
        attn_pooler_queries: number of pooler queries; the first becomes the contrastive image token, the other
            ``attn_pooler_queries - 1`` are the image tokens the decoder reads.
        attn_pooler_heads: attention heads of the pooler.
        hidden_act: ``"gelu"`` (exact) or ``"quick_gelu"``.
        layer_norm_eps: LayerNorm epsilon (open_clip uses torch's default 1e-5).

    Example:

    >>> from hqrs.modeling.configuration_rs_coca import RSCoCaVisionConfig
    >>> RSCoCaVisionConfig(hidden_size=64, num_attention_heads=4).num_attention_heads
    4
    """

    model_type = "rs_coca_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    pooler_hidden_size: int = 512
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        _check_heads("vision_config", self.hidden_size, self.num_attention_heads)
        _check_heads("vision_config (attentional pooler)", self.pooler_hidden_size, self.attn_pooler_heads)
        _check_act("vision_config", self.hidden_act)
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"vision_config: image_size={self.image_size} must be a multiple of patch_size={self.patch_size}."
            )
        if self.attn_pooler_queries < 2:
            raise ValueError(
                f"vision_config: attn_pooler_queries={self.attn_pooler_queries} must be >= 2 (one contrastive "
                "token plus at least one caption token)."
            )
        super().__post_init__(**kwargs)


class RSCoCaTextConfig(PretrainedConfig):
    r"""Text tower of RS-CoCa: a causal transformer with a learned CLS embedding appended after the tokens.

    Args:
        vocab_size: tokenizer vocabulary size (49408 for the CLIP BPE).
        hidden_size / intermediate_size / num_hidden_layers / num_attention_heads: transformer shape.
        max_position_embeddings: text context length (open_clip ``context_length``, 76 for CoCa); the CLS token
            takes one more position.
        correct_cls_mask: open_clip's padding mask for the CLS model is shifted by one position (key ``j`` is
            masked when token ``j - 1`` is padding); released CoCa weights were trained with that mask, so the
            default ``False`` reproduces it. ``True`` masks padding keys themselves.
        pad_token_id: id whose positions are padding (open_clip pads with 0).
        hidden_act / layer_norm_eps: as in the vision config.
    """

    model_type = "rs_coca_text_model"
    base_config_key = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 76
    correct_cls_mask: bool = False
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int | None = _CLIP_PAD_ID
    bos_token_id: int | None = _CLIP_SOT_ID
    eos_token_id: int | None = _CLIP_EOT_ID

    def __post_init__(self, **kwargs):
        _check_heads("text_config", self.hidden_size, self.num_attention_heads)
        _check_act("text_config", self.hidden_act)
        super().__post_init__(**kwargs)


class RSCoCaMultimodalConfig(PretrainedConfig):
    r"""Multimodal text decoder of RS-CoCa (open_clip ``multimodal_cfg``).

    Each of the ``num_hidden_layers`` layers is a causal self-attention block followed by a cross-attention block
    over the image tokens; each block has its own MLP. ``vocab_size`` is the size of the caption head.
    """

    model_type = "rs_coca_multimodal_model"
    base_config_key = "multimodal_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 76
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        _check_heads("multimodal_config", self.hidden_size, self.num_attention_heads)
        _check_act("multimodal_config", self.hidden_act)
        super().__post_init__(**kwargs)


class RSCoCaConfig(PretrainedConfig):
    r"""Configuration of [`RSCoCaModel`]: the three sub-configs plus the contrastive head and the loss weights.

    Args:
        vision_config / text_config / multimodal_config: sub-configs (dicts or config objects).
        projection_dim: joint embedding size of ``image_embeds`` / ``text_embeds`` (open_clip ``embed_dim``).
        logit_scale_init_value: initial ``logit_scale`` (log of the inverse temperature), ``log(1 / 0.07)``.
        contrastive_loss_weight / caption_loss_weight: CoCa loss = contrastive weight x CLIP loss + caption
            weight x caption cross-entropy (open_clip_train defaults 1.0 and 2.0).
        pad_token_id / bos_token_id / eos_token_id: the tokenizer's pad, ``<start_of_text>`` and
            ``<end_of_text>`` ids; captions start with ``bos_token_id`` (``decoder_start_token_id``).
        open_clip_model_name: open_clip architecture this model was converted from (``coca_ViT-B-32`` ...), or
            ``None``.

    Example:

    >>> from hqrs.modeling.configuration_rs_coca import RSCoCaConfig
    >>> config = RSCoCaConfig(
    ...     vision_config={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
    ...                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
    ...                    "pooler_hidden_size": 32, "attn_pooler_queries": 8, "attn_pooler_heads": 4},
    ...     text_config={"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
    ...                  "num_attention_heads": 4},
    ...     multimodal_config={"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
    ...                        "num_attention_heads": 4},
    ...     projection_dim=32,
    ... )
    >>> config.caption_loss_weight, config.decoder_start_token_id
    (2.0, 49406)
    """

    model_type = "rs_coca"
    sub_configs_defaults = {
        "vision_config": RSCoCaVisionConfig,
        "text_config": RSCoCaTextConfig,
        "multimodal_config": RSCoCaMultimodalConfig,
    }

    vision_config: dict | RSCoCaVisionConfig | None = None
    text_config: dict | RSCoCaTextConfig | None = None
    multimodal_config: dict | RSCoCaMultimodalConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = math.log(1 / 0.07)
    contrastive_loss_weight: float = 1.0
    caption_loss_weight: float = 2.0
    pad_token_id: int | None = _CLIP_PAD_ID
    bos_token_id: int | None = _CLIP_SOT_ID
    eos_token_id: int | None = _CLIP_EOT_ID
    decoder_start_token_id: int | None = None
    open_clip_model_name: str | None = None
    initializer_factor: float = 1.0
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id
        vision, text, multimodal = self.vision_config, self.text_config, self.multimodal_config
        if vision.pooler_hidden_size != multimodal.hidden_size:
            raise ValueError(
                f"vision_config.pooler_hidden_size={vision.pooler_hidden_size} must equal "
                f"multimodal_config.hidden_size={multimodal.hidden_size}: the decoder cross-attends to the pooled "
                "image tokens without a projection (as in open_clip's CoCa)."
            )
        if text.hidden_size != multimodal.hidden_size:
            raise ValueError(
                f"text_config.hidden_size={text.hidden_size} must equal multimodal_config.hidden_size="
                f"{multimodal.hidden_size}: the decoder reads the text tower's token states directly."
            )
        if multimodal.max_position_embeddings > text.max_position_embeddings:
            raise ValueError(
                f"multimodal_config.max_position_embeddings={multimodal.max_position_embeddings} exceeds "
                f"text_config.max_position_embeddings={text.max_position_embeddings}."
            )
        for name in ("contrastive_loss_weight", "caption_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        # The text tower masks padding by id; keep the sub-config in sync with the top-level ids.
        text.pad_token_id, text.bos_token_id, text.eos_token_id = (
            self.pad_token_id,
            self.bos_token_id,
            self.eos_token_id,
        )
