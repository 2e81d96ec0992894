"""RS-CoCa: open_clip's CoCa as a transformers model (contrastive embeddings, CoCa loss and ``generate``).

Architecture (same computation as open_clip 3.x ``CoCa`` with ``attentional_pool=True`` and ``embed_cls=True``):

* ``vision_model``: ViT (``RSCoCaEncoderLayer`` blocks) -> attentional pooler with ``attn_pooler_queries`` queries
  -> ``post_layernorm``. Query 0 is the contrastive token (``visual_projection`` -> ``image_embeds``), the other
  queries are the ``image_tokens`` the multimodal decoder cross-attends to.
* ``text_model``: causal transformer over the caption tokens with a learned CLS embedding appended; the CLS state
  (``final_layer_norm`` -> ``text_projection``) is the contrastive text embedding, the token states feed the
  decoder.
* ``multimodal_decoder``: per layer a causal self-attention block and a cross-attention block (each with an MLP),
  then ``final_layer_norm`` and ``lm_head`` over the vocabulary.

Captioning runs through transformers' ``GenerationMixin`` as an encoder-decoder model: the image is encoded once
per ``generate`` call (``get_encoder()`` is the vision tower) and expanded for beams by transformers; the text tower
and decoder self-attention keys/values live in an ``EncoderDecoderCache.self_attention_cache`` (text layers first,
then decoder layers) and the cross-attention keys/values, computed at the first step, in its
``cross_attention_cache``.

This file ships as remote code next to ``configuration_rs_coca.py``; it imports nothing from ``hqrs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_rs_coca import RSCoCaConfig, RSCoCaMultimodalConfig, RSCoCaTextConfig, RSCoCaVisionConfig

__all__ = ["RSCoCaModel", "RSCoCaOutput", "RSCoCaPreTrainedModel", "RSCoCaVisionOutput"]


@dataclass
class RSCoCaVisionOutput(ModelOutput):
    """Output of the RS-CoCa vision tower (also the ``encoder_outputs`` of ``generate``).

    Args:
        image_tokens: ``(batch, attn_pooler_queries - 1, pooler_hidden_size)`` pooled tokens the decoder reads.
        pooler_output: ``(batch, pooler_hidden_size)`` contrastive token before ``visual_projection``.
        last_hidden_state: ``(batch, 1 + num_patches, hidden_size)`` ViT output before the pooler.
    """

    image_tokens: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class RSCoCaOutput(ModelOutput):
    """Output of [`RSCoCaModel.forward`].

    Args:
        loss: ``contrastive_loss + caption_loss`` (both already weighted) when ``return_loss`` and both modalities
            are given.
        contrastive_loss: ``config.contrastive_loss_weight`` x symmetric CLIP cross-entropy.
        caption_loss: ``config.caption_loss_weight`` x next-token cross-entropy (padding ignored).
        logits: ``(batch, seq_len, vocab_size)`` caption logits; position ``i`` predicts token ``i + 1``.
        logits_per_image / logits_per_text: scaled cosine similarities, ``(n_images, n_texts)`` and transpose.
        text_embeds / image_embeds: L2-normalised projected embeddings.
        cache: decoding cache (``EncoderDecoderCache``) when ``use_cache``.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    cache: Cache | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``allowed`` (True = attend) -> additive float mask."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def _causal_allowed(query_len: int, key_len: int, device: torch.device) -> torch.Tensor:
    """``(query_len, key_len)``: query ``i`` (absolute position ``key_len - query_len + i``) sees keys <= it."""
    offset = key_len - query_len
    q = torch.arange(query_len, device=device)[:, None] + offset
    k = torch.arange(key_len, device=device)[None, :]
    return k <= q


class RSCoCaAttention(nn.Module):
    """Multi-head attention with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (``nn.MultiheadAttention``
    semantics: scale ``head_dim ** -0.5``, biases on all projections). ``kv_dim`` allows keys/values of another
    width (attentional pooler)."""

    def __init__(
        self,
        config,
        embed_dim: int,
        num_heads: int,
        kv_dim: int | None = None,
        layer_idx: int | None = None,
        is_cross_attention: bool = False,
    ):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.is_causal = False  # masks are always passed explicitly
        kv_dim = kv_dim or embed_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(kv_dim, embed_dim)
        self.v_proj = nn.Linear(kv_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        query = self._shape(self.q_proj(hidden_states))
        if self.is_cross_attention and isinstance(cache, EncoderDecoderCache):
            if cache.is_updated.get(self.layer_idx):
                layer = cache.cross_attention_cache.layers[self.layer_idx]
                key, value = layer.keys, layer.values
            else:
                key = self._shape(self.k_proj(key_value_states))
                value = self._shape(self.v_proj(key_value_states))
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key = self._shape(self.k_proj(source))
            value = self._shape(self.v_proj(source))
            if cache is not None:
                self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                key, value = self_cache.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        attn_output = attn_output.reshape(*hidden_states.shape[:-1], self.embed_dim).contiguous()
        return self.out_proj(attn_output)


class RSCoCaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class RSCoCaEncoderLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block (open_clip ``ResidualAttentionBlock``)."""

    def __init__(self, config: RSCoCaVisionConfig | RSCoCaTextConfig, layer_idx: int | None = None):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = RSCoCaAttention(
            config, config.hidden_size, config.num_attention_heads, layer_idx=layer_idx
        )
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = RSCoCaMLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(
            self.layer_norm1(hidden_states), attention_mask=attention_mask, cache=cache
        )
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class RSCoCaDecoderLayer(GradientCheckpointingLayer):
    """Multimodal decoder layer: causal self-attention block, then cross-attention block over the image tokens
    (open_clip ``MultimodalTransformer``: ``resblocks[i]`` then ``cross_attn[i]``, each with its own MLP)."""

    def __init__(self, config: RSCoCaMultimodalConfig, self_cache_idx: int, cross_cache_idx: int):
        super().__init__()
        hidden, heads, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = RSCoCaAttention(config, hidden, heads, layer_idx=self_cache_idx)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = RSCoCaMLP(hidden, config.intermediate_size, config.hidden_act)
        self.encoder_attn_layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.encoder_attn_kv_layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.encoder_attn = RSCoCaAttention(
            config, hidden, heads, layer_idx=cross_cache_idx, is_cross_attention=True
        )
        self.encoder_mlp_layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.encoder_mlp = RSCoCaMLP(hidden, config.intermediate_size, config.hidden_act)

    def forward(
        self,
        hidden_states: torch.Tensor,
        image_tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(
            self.layer_norm1(hidden_states), attention_mask=attention_mask, cache=cache
        )
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        cross_ready = isinstance(cache, EncoderDecoderCache) and cache.is_updated.get(
            self.encoder_attn.layer_idx
        )
        kv = None if cross_ready else self.encoder_attn_kv_layer_norm(image_tokens)
        hidden_states = hidden_states + self.encoder_attn(
            self.encoder_attn_layer_norm(hidden_states), key_value_states=kv, cache=cache
        )
        return hidden_states + self.encoder_mlp(self.encoder_mlp_layer_norm(hidden_states))


class RSCoCaVisionEmbeddings(nn.Module):
    def __init__(self, config: RSCoCaVisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)
        self.image_size = config.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values must have shape (batch, channels, {self.image_size}, {self.image_size}); got "
                f"{tuple(pixel_values.shape)}. Use the model's image processor."
            )
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(dtype)


class RSCoCaAttentionalPooler(nn.Module):
    """Learned queries cross-attending to the ViT tokens (open_clip ``AttentionalPooler``)."""

    def __init__(self, config: RSCoCaVisionConfig):
        super().__init__()
        dim = config.pooler_hidden_size
        self.query = nn.Parameter(torch.zeros(config.attn_pooler_queries, dim))
        self.query_layernorm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.context_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = RSCoCaAttention(config, dim, config.attn_pooler_heads, kv_dim=config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        context = self.context_layernorm(hidden_states)
        query = self.query_layernorm(self.query).expand(hidden_states.shape[0], -1, -1)
        return self.attn(query, key_value_states=context)


class RSCoCaVisionTransformer(nn.Module):
    """ViT + attentional pooler + ``post_layernorm``; ``forward`` returns [`RSCoCaVisionOutput`]."""

    def __init__(self, config: RSCoCaVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = RSCoCaVisionEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([RSCoCaEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.attn_pool = RSCoCaAttentionalPooler(config)
        self.post_layernorm = nn.LayerNorm(config.pooler_hidden_size, eps=config.layer_norm_eps)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> RSCoCaVisionOutput:
        hidden_states = self.pre_layernorm(self.embeddings(pixel_values))
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        pooled = self.post_layernorm(self.attn_pool(hidden_states))
        return RSCoCaVisionOutput(
            image_tokens=pooled[:, 1:], pooler_output=pooled[:, 0], last_hidden_state=hidden_states
        )


class RSCoCaTextTransformer(nn.Module):
    """Causal text transformer; with ``add_cls`` a learned CLS embedding is appended after the tokens.

    A token is padding only where ``attention_mask`` is 0 (default: no padding). The token id never decides:
    the pad id 0 is also the BPE token ``"!"``, which real captions contain. With ``config.correct_cls_mask=False`` (open_clip's and the released weights' behaviour) the
    key mask is shifted right by one position, so key ``j`` is masked when token ``j - 1`` is padding.
    """

    def __init__(self, config: RSCoCaTextConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings + 1, config.hidden_size)
        self.cls_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.layers = nn.ModuleList(
            [RSCoCaEncoderLayer(config, layer_idx=i) for i in range(config.num_hidden_layers)]
        )
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        add_cls: bool = True,
    ) -> torch.Tensor:
        """Returns the hidden states ``(batch, seq_len [+ 1 with CLS], hidden)`` before ``final_layer_norm``.

        ``attention_mask`` covers the cached tokens plus ``input_ids`` (``(batch, past + seq_len)``)."""
        batch, seq_len = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if add_cls and past:
            raise ValueError(
                "The CLS token (contrastive text embedding) cannot be computed with a decoding cache."
            )
        total = past + seq_len + int(add_cls)
        if total > self.position_embedding.num_embeddings:
            limit = self.config.max_position_embeddings
            raise ValueError(
                f"Text of {past + seq_len} tokens is longer than text_config.max_position_embeddings={limit}; "
                f"truncate captions to {limit} tokens (processor max_length) or lower max_length in generate."
            )
        hidden = self.token_embedding(input_ids)
        if add_cls:
            hidden = torch.cat([hidden, self.cls_embedding.to(hidden.dtype).expand(batch, 1, -1)], dim=1)
        positions = torch.arange(past, total, device=input_ids.device)
        hidden = hidden + self.position_embedding(positions)

        if attention_mask is None:
            token_valid = torch.ones(batch, past + seq_len, dtype=torch.bool, device=input_ids.device)
        else:
            if attention_mask.shape != (batch, past + seq_len):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(batch, past + seq_len)} "
                    "(cached plus new tokens)."
                )
            token_valid = attention_mask.bool()
        ones = torch.ones(batch, 1, dtype=torch.bool, device=input_ids.device)
        if self.config.correct_cls_mask:
            key_valid = torch.cat([token_valid, ones], dim=1) if add_cls else token_valid
        else:
            key_valid = torch.cat([ones, token_valid if add_cls else token_valid[:, :-1]], dim=1)
        query_len = hidden.shape[1]
        allowed = (
            _causal_allowed(query_len, key_valid.shape[1], input_ids.device)[None] & key_valid[:, None, :]
        )
        mask = _additive_mask(allowed[:, None], hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, cache=cache)
        return hidden


class RSCoCaMultimodalDecoder(nn.Module):
    """Causal decoder over the text tower's token states with cross-attention to the image tokens."""

    def __init__(self, config: RSCoCaMultimodalConfig, cache_offset: int):
        super().__init__()
        self.config = config
        self.cache_offset = cache_offset
        self.layers = nn.ModuleList(
            [
                RSCoCaDecoderLayer(config, self_cache_idx=cache_offset + i, cross_cache_idx=i)
                for i in range(config.num_hidden_layers)
            ]
        )
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, image_tokens: torch.Tensor | None, cache: Cache | None = None
    ) -> torch.Tensor:
        past = 0
        if cache is not None:
            self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
            past = self_cache.get_seq_length(self.cache_offset)
        query_len = hidden_states.shape[1]
        if past + query_len > self.config.max_position_embeddings:
            raise ValueError(
                f"Caption of {past + query_len} tokens exceeds multimodal_config.max_position_embeddings="
                f"{self.config.max_position_embeddings}; lower max_length / max_new_tokens."
            )
        allowed = _causal_allowed(query_len, past + query_len, hidden_states.device)
        mask = _additive_mask(allowed[None, None], hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(hidden_states, image_tokens, attention_mask=mask, cache=cache)
        return self.final_layer_norm(hidden_states)


class RSCoCaPreTrainedModel(PreTrainedModel):
    config: RSCoCaConfig
    config_class = RSCoCaConfig
    base_model_prefix = "rs_coca"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["RSCoCaEncoderLayer", "RSCoCaDecoderLayer", "RSCoCaVisionEmbeddings"]

    def _init_weights(self, module: nn.Module) -> None:
        """open_clip-style initialisation (random-init models only; loaded weights are left untouched)."""
        factor = self.config.initializer_factor
        if isinstance(module, RSCoCaVisionEmbeddings):
            width = module.class_embedding.shape[0]
            init.normal_(module.class_embedding, std=width**-0.5 * factor)
            init.normal_(module.position_embedding.weight, std=width**-0.5 * factor)
        elif isinstance(module, RSCoCaTextTransformer):
            init.normal_(module.token_embedding.weight, std=0.02 * factor)
            init.normal_(module.position_embedding.weight, std=0.01 * factor)
            init.normal_(module.cls_embedding, std=0.01 * factor)
        elif isinstance(module, RSCoCaAttentionalPooler):
            init.normal_(module.query, std=1.0 * factor)
        elif isinstance(module, RSCoCaAttention):
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                init.normal_(proj.weight, std=module.embed_dim**-0.5 * factor)
                init.zeros_(proj.bias)
            init.normal_(module.out_proj.weight, std=module.embed_dim**-0.5 * factor)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, RSCoCaMLP):
            width = module.fc1.in_features
            init.normal_(module.fc1.weight, std=(2 * width) ** -0.5 * factor)
            init.zeros_(module.fc1.bias)
            init.normal_(module.fc2.weight, std=width**-0.5 * factor)
            init.zeros_(module.fc2.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.normal_(module.weight, std=0.02 * factor)
        elif isinstance(module, RSCoCaModel):
            init.normal_(module.visual_projection.weight, std=module.visual_projection.in_features**-0.5)
            init.normal_(module.text_projection.weight, std=module.text_projection.in_features**-0.5)
            init.normal_(module.lm_head.weight, std=module.lm_head.in_features**-0.5)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class RSCoCaModel(RSCoCaPreTrainedModel, GenerationMixin):
    r"""RS-CoCa: contrastive image/text embeddings, CoCa training loss and captioning with ``generate``.

    Example (a tiny random model; real checkpoints come from ``hqrs convert open-clip``):

    >>> import torch
    >>> from hqrs.modeling.configuration_rs_coca import RSCoCaConfig
    >>> from hqrs.modeling.modeling_rs_coca import RSCoCaModel
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
    >>> model = RSCoCaModel(config).eval()
    >>> pixel_values = torch.randn(2, 3, 32, 32)
    >>> input_ids = torch.tensor([[49406, 320, 1125, 49407, 0], [49406, 320, 49407, 0, 0]])
    >>> out = model(pixel_values=pixel_values, input_ids=input_ids)
    >>> out.logits_per_image.shape, out.logits.shape, out.loss.ndim
    (torch.Size([2, 2]), torch.Size([2, 5, 49408]), 0)
    >>> model.generate(pixel_values, max_new_tokens=4, min_new_tokens=4).shape
    torch.Size([2, 5])
    """

    def __init__(self, config: RSCoCaConfig):
        super().__init__(config)
        vision, text, multimodal = config.vision_config, config.text_config, config.multimodal_config
        self.vision_model = RSCoCaVisionTransformer(vision)
        self.text_model = RSCoCaTextTransformer(text)
        self.multimodal_decoder = RSCoCaMultimodalDecoder(multimodal, cache_offset=text.num_hidden_layers)
        self.visual_projection = nn.Linear(vision.pooler_hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text.hidden_size, config.projection_dim, bias=False)
        self.lm_head = nn.Linear(multimodal.hidden_size, multimodal.vocab_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        # Attention dispatch (eager / sdpa) follows the model-level setting, also after set_attn_implementation.
        for module in self.modules():
            if isinstance(module, RSCoCaAttention):
                module.config = config
        self.post_init()

    # -- encoder hooks used by GenerationMixin -------------------------------------------------------------
    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return self.vision_model

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.token_embedding = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The self-attention cache spans text-tower and decoder layers, more than any single sub-config lists, so
        # the cache is created lazily in `forward` (a config-sized `DynamicCache` would be too short).
        return False

    # -- contrastive side ----------------------------------------------------------------------------------
    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Contrastive image features, as ``CLIPModel.get_image_features`` in transformers 5.

        Args:
            pixel_values: ``(batch, num_channels, image_size, image_size)`` from the processor.
            return_dict: ``False`` returns the tuple ``(last_hidden_state, pooler_output)`` (default: ``config``).

        Returns:
            ``BaseModelOutputWithPooling`` with ``pooler_output`` ``(batch, projection_dim)``: the projected, not
            normalised, image embedding (``visual_projection`` of the pooler's contrastive token), and
            ``last_hidden_state`` ``(batch, 1 + num_patches, hidden_size)``: the ViT output before the pooler.
        """
        vision = self.vision_model(pixel_values, return_dict=True)
        return BaseModelOutputWithPooling(
            last_hidden_state=vision.last_hidden_state,
            pooler_output=self.visual_projection(vision.pooler_output),
        )

    @can_return_tuple
    def get_text_features(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Contrastive text features from the CLS state, as ``CLIPModel.get_text_features`` in transformers 5.

        Args:
            input_ids: ``(batch, seq_len)`` caption tokens (the processor pads them to the model's fixed length).
            attention_mask: ``(batch, seq_len)``, 0 marks padding.
            return_dict: ``False`` returns the tuple ``(last_hidden_state, pooler_output)`` (default: ``config``).

        Returns:
            ``BaseModelOutputWithPooling`` with ``pooler_output`` ``(batch, projection_dim)``: the projected, not
            normalised, text embedding (``text_projection`` of the CLS state), and ``last_hidden_state``
            ``(batch, seq_len + 1, hidden_size)``: the token states and, last, the CLS state after
            ``final_layer_norm``.
        """
        hidden = self.text_model.final_layer_norm(self.text_model(input_ids, attention_mask=attention_mask))
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=self.text_projection(hidden[:, -1])
        )

    # -- forward -------------------------------------------------------------------------------------------
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        labels: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: RSCoCaVisionOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> RSCoCaOutput:
        r"""Two modes.

        * Contrastive + captioning (``input_ids``): returns ``image_embeds``/``text_embeds``, ``logits_per_*``,
          teacher-forced caption ``logits`` and, with ``return_loss`` and both modalities, the CoCa ``loss``.
          Caption targets are ``labels`` (``-100`` ignored) or, by default, ``input_ids`` where ``attention_mask``
          is 1 (padding is what the mask marks 0, never a token id: ``"!"`` shares the pad id 0);
          position ``i`` is scored against target ``i + 1``. Caption logits and the loss need one caption per
          image; with a different number of texts (zero-shot classification) only the contrastive outputs are
          returned.
        * Caption decoding (``decoder_input_ids``, used by ``generate``): caption ``logits`` only, with an
          incremental ``cache``. ``decoder_attention_mask`` marks non-padding tokens over cache + new tokens.
        """
        if decoder_input_ids is not None:
            return self._decode(
                decoder_input_ids, decoder_attention_mask, pixel_values, encoder_outputs, cache, use_cache
            )
        if pixel_values is None and input_ids is None:
            raise ValueError(
                "Pass pixel_values, input_ids (contrastive/captioning) or decoder_input_ids (decoding)."
            )

        vision_out = None
        image_embeds = text_embeds = logits = logits_per_image = logits_per_text = None
        if pixel_values is not None:
            vision_out = self._vision(pixel_values, encoder_outputs)
            image_embeds = F.normalize(self.visual_projection(vision_out.pooler_output), dim=-1)
        if input_ids is not None:
            hidden = self.text_model(input_ids, attention_mask=attention_mask)
            pooled = self.text_model.final_layer_norm(hidden[:, -1])
            text_embeds = F.normalize(self.text_projection(pooled), dim=-1)
            if vision_out is not None:
                logits_per_text = self.logit_scale.exp() * text_embeds @ image_embeds.t()
                logits_per_image = logits_per_text.t()
                if input_ids.shape[0] == vision_out.image_tokens.shape[0]:
                    # paired (image i, caption i) batch: teacher-forced caption logits
                    decoded = self.multimodal_decoder(hidden[:, :-1], vision_out.image_tokens)
                    logits = self.lm_head(decoded)
                elif labels is not None:
                    raise ValueError(
                        f"labels need one caption per image; got {input_ids.shape[0]} texts for "
                        f"{vision_out.image_tokens.shape[0]} images."
                    )

        loss = contrastive_loss = caption_loss = None
        if return_loss and logits is not None:
            contrastive_loss = self.config.contrastive_loss_weight * _clip_loss(logits_per_image)
            caption_loss = self.config.caption_loss_weight * self._caption_loss(
                logits, input_ids, labels, attention_mask
            )
            loss = contrastive_loss + caption_loss
        return RSCoCaOutput(
            loss=loss,
            contrastive_loss=contrastive_loss,
            caption_loss=caption_loss,
            logits=logits,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
        )

    def _vision(self, pixel_values, encoder_outputs) -> RSCoCaVisionOutput:
        if encoder_outputs is not None:
            if isinstance(encoder_outputs, tuple):
                encoder_outputs = RSCoCaVisionOutput(*encoder_outputs)
            return encoder_outputs
        if pixel_values is None:
            raise ValueError("Captioning needs pixel_values or encoder_outputs (the vision tower's output).")
        return self.vision_model(pixel_values, return_dict=True)

    def _caption_loss(self, logits, input_ids, labels, attention_mask=None) -> torch.Tensor:
        if labels is None:
            labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
        elif labels.shape != input_ids.shape:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} must equal input_ids shape {tuple(input_ids.shape)}."
            )
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    def _decode(
        self, decoder_input_ids, decoder_attention_mask, pixel_values, encoder_outputs, cache, use_cache
    ):
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        image_tokens = None
        cross_ready = isinstance(cache, EncoderDecoderCache) and all(
            cache.is_updated.get(layer.encoder_attn.layer_idx) for layer in self.multimodal_decoder.layers
        )
        if not cross_ready:
            image_tokens = self._vision(pixel_values, encoder_outputs).image_tokens
        hidden = self.text_model(
            decoder_input_ids, attention_mask=decoder_attention_mask, cache=cache, add_cls=False
        )
        logits = self.lm_head(self.multimodal_decoder(hidden, image_tokens, cache=cache))
        return RSCoCaOutput(logits=logits, cache=cache if use_cache else None)

    # -- generation ----------------------------------------------------------------------------------------
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Cache | None = None,
        encoder_outputs: RSCoCaVisionOutput | None = None,
        use_cache: bool | None = None,
        next_sequence_length: int | None = None,
        **kwargs,
    ) -> dict:
        # Every prompt and generated token is real (the prompt is cut at its first <end_of_text>); a generated
        # id 0 is the BPE token "!", not padding (open_clip masks it by id; we do not).
        token_valid = torch.ones_like(input_ids, dtype=torch.bool)
        past = cache.get_seq_length() if cache is not None else 0
        return {
            "decoder_input_ids": input_ids[:, past:],
            "decoder_attention_mask": token_valid,
            "encoder_outputs": encoder_outputs,
            "cache": cache,
            "use_cache": use_cache,
        }

    def _caption_prompt(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Processor ``input_ids`` (``<sot> prompt <eot> pad...``) -> decoder prompt ``<sot> prompt``."""
        eos = self.config.eos_token_id
        lengths = []
        for i, row in enumerate(input_ids):
            stops = (row == eos).nonzero()
            if len(stops):
                lengths.append(int(stops[0]))
            elif attention_mask is not None:
                lengths.append(int(attention_mask[i].sum()))
            else:
                lengths.append(row.shape[0])
        if len(set(lengths)) != 1:
            raise ValueError(
                f"Caption prompts in one batch must have the same number of tokens; got lengths {lengths}. "
                "Caption without a prompt (text='') or batch prompts of equal length."
            )
        return input_ids[:, : lengths[0]]

    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        r"""Caption images. ``input_ids`` from the processor (optional) is a caption prompt: everything from its
        first ``<end_of_text>`` on is dropped. All other arguments are those of
        ``transformers.GenerationMixin.generate`` (greedy, ``num_beams``, ``do_sample``, ``min_new_tokens``,
        ``max_new_tokens``, stopping criteria ...); defaults come from ``generation_config.json``. Returns token
        ids that start with ``<start_of_text>``; decode them with the processor's ``batch_decode``."""
        if input_ids is not None and kwargs.get("decoder_input_ids") is None:
            kwargs["decoder_input_ids"] = self._caption_prompt(input_ids, attention_mask)
        if pixel_values is None and kwargs.get("encoder_outputs") is None:
            raise ValueError("generate needs pixel_values (from the processor) or encoder_outputs.")
        return super().generate(pixel_values, **kwargs)


def _clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (open_clip ``ClipLoss``, single process)."""
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    logits = logits_per_image.float()
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
