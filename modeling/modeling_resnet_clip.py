"""ResNet-CLIP: open_clip's ModifiedResNet CLIP (RN50, RN101, ...) as a transformers model.

Architecture (the same computation as open_clip 3.x ``CLIP`` with a ``ModifiedResNet`` visual tower):

* ``vision_model`` (:class:`ResNetCLIPVisionModel`):

  - ``embedder``: three 3x3 convolutions (the first with stride 2), each with BatchNorm + ReLU, then a 2x2
    average pool: ``(batch, 3, S, S) -> (batch, width, S/4, S/4)``;
  - ``encoder``: 4 stages of bottleneck blocks (1x1, 3x3, 1x1 convolutions). A stride-2 block downsamples with a
    2x2 average pool after its 3x3 convolution, and its shortcut with an average pool before a 1x1 convolution
    (anti-aliased ResNet-D style): ``-> (batch, 32 * width, S/32, S/32)``;
  - ``attention_pool``: the feature map becomes ``(S/32)**2`` tokens, their mean is prepended, a learned
    ``position_embedding`` added, and the mean token attends over all tokens with ``num_attention_heads``
    heads (``q_proj``/``k_proj``/``v_proj``); ``out_proj`` (open_clip's ``c_proj``) maps the result to the
    joint space: ``-> (batch, projection_dim)``. This attention pool *is* CLIP's visual projection, so the
    model has no separate ``visual_projection``.

* ``text_model``: transformers' ``CLIPTextModel`` (causal transformer pooled at the first ``<end_of_text>``),
  then ``text_projection`` (no bias): ``-> (batch, projection_dim)``.

``get_image_features`` / ``get_text_features`` return ``BaseModelOutputWithPooling`` whose ``pooler_output`` is
the projected (not normalised) embedding, as ``CLIPModel`` does in transformers 5; ``forward`` returns a
``CLIPOutput`` (``logits_per_image`` for the zero-shot pipeline, the symmetric contrastive loss with
``return_loss=True``).

This file ships as remote code next to ``configuration_resnet_clip.py``; it imports nothing from ``hqrs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.utils import can_return_tuple

from .configuration_resnet_clip import ResNetCLIPConfig, ResNetCLIPVisionConfig

__all__ = ["ResNetCLIPModel", "ResNetCLIPPreTrainedModel", "ResNetCLIPVisionModel"]

_EXPANSION = 4  # bottleneck output channels = 4 x its inner width


class ResNetCLIPConvLayer(nn.Module):
    """``convolution`` (no bias) -> ``normalization`` (BatchNorm2d) [-> ReLU]."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, eps: float, activation: bool
    ):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.normalization = nn.BatchNorm2d(out_channels, eps=eps)
        self.activation = nn.ReLU() if activation else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(hidden_states)))


class ResNetCLIPEmbeddings(nn.Module):
    """The 3-convolution stem: ``(batch, C, S, S) -> (batch, width, S/4, S/4)``."""

    def __init__(self, config: ResNetCLIPVisionConfig):
        super().__init__()
        half, eps = config.width // 2, config.batch_norm_eps
        self.layers = nn.ModuleList(
            [
                ResNetCLIPConvLayer(config.num_channels, half, 3, 2, eps, True),
                ResNetCLIPConvLayer(half, half, 3, 1, eps, True),
                ResNetCLIPConvLayer(half, config.width, 3, 1, eps, True),
            ]
        )
        self.pool = nn.AvgPool2d(2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = pixel_values
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.pool(hidden_states)


class ResNetCLIPShortcut(nn.Module):
    """Projection shortcut: ``AvgPool(stride)`` (when strided) -> 1x1 convolution -> BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, eps: float):
        super().__init__()
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.convolution = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.normalization(self.convolution(self.pool(hidden_states)))


class ResNetCLIPBottleneckLayer(GradientCheckpointingLayer):
    """open_clip's ``Bottleneck``: 1x1 -> 3x3 -> [AvgPool(stride)] -> 1x1 (x4 channels), plus the shortcut, ReLU.

    ``(batch, in_channels, H, W) -> (batch, 4 * channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, eps: float):
        super().__init__()
        out_channels = channels * _EXPANSION
        self.layer = nn.ModuleList(
            [
                ResNetCLIPConvLayer(in_channels, channels, 1, 1, eps, True),
                ResNetCLIPConvLayer(channels, channels, 3, 1, eps, True),
                ResNetCLIPConvLayer(channels, out_channels, 1, 1, eps, False),
            ]
        )
        self.layer[2].normalization.zero_init_scale = True  # random init only (see _init_weights)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        needs_projection = stride > 1 or in_channels != out_channels
        self.shortcut = (
            ResNetCLIPShortcut(in_channels, out_channels, stride, eps) if needs_projection else None
        )
        self.activation = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.shortcut is None else self.shortcut(hidden_states)
        out = self.layer[1](self.layer[0](hidden_states))
        out = self.layer[2](self.pool(out))
        return self.activation(out + residual)


class ResNetCLIPStage(nn.Module):
    def __init__(self, in_channels: int, channels: int, depth: int, stride: int, eps: float):
        super().__init__()
        blocks = [ResNetCLIPBottleneckLayer(in_channels, channels, stride, eps)]
        blocks += [
            ResNetCLIPBottleneckLayer(channels * _EXPANSION, channels, 1, eps) for _ in range(depth - 1)
        ]
        self.layers = nn.ModuleList(blocks)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            hidden_states = block(hidden_states)
        return hidden_states


class ResNetCLIPEncoder(nn.Module):
    """4 stages: ``(batch, width, S/4, S/4) -> (batch, 32 * width, S/32, S/32)``."""

    def __init__(self, config: ResNetCLIPVisionConfig):
        super().__init__()
        stages, in_channels = [], config.width
        for i, depth in enumerate(config.layers):
            channels = config.width * 2**i
            stages.append(
                ResNetCLIPStage(in_channels, channels, depth, 1 if i == 0 else 2, config.batch_norm_eps)
            )
            in_channels = channels * _EXPANSION
        self.stages = nn.ModuleList(stages)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            hidden_states = stage(hidden_states)
        return hidden_states


class ResNetCLIPAttentionPool(nn.Module):
    """open_clip's ``AttentionPool2d``: the mean token attends over ``[mean; tokens] + position_embedding``.

    ``(batch, hidden_size, G, G) -> (batch, projection_dim)``; heads follow ``nn.MultiheadAttention`` (scale
    ``head_dim ** -0.5``, biases on every projection). Only the mean token's output is computed (open_clip keeps
    only that one too).
    """

    def __init__(self, config: ResNetCLIPVisionConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.position_embedding = nn.Parameter(torch.empty(config.grid_size**2 + 1, dim))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, config.projection_dim)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        batch = feature_map.shape[0]
        tokens = feature_map.flatten(2).transpose(1, 2)  # (batch, G*G, dim)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.position_embedding.to(tokens.dtype)
        query = self.q_proj(tokens[:, :1]).view(batch, 1, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(tokens).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(tokens).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(query, key, value)  # (batch, heads, 1, head_dim)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, -1))


class ResNetCLIPPreTrainedModel(PreTrainedModel):
    config: ResNetCLIPConfig
    config_class = ResNetCLIPConfig
    base_model_prefix = "resnet_clip"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["ResNetCLIPBottleneckLayer", "CLIPEncoderLayer", "CLIPTextEmbeddings"]

    def _init_weights(self, module: nn.Module) -> None:
        """open_clip-style initialisation (random-init models only; loaded weights are left untouched).

        The text tower (a ``CLIPTextModel``) is initialised by its own ``_init_weights``."""
        factor = self.config.initializer_factor
        if isinstance(module, ResNetCLIPAttentionPool):
            dim = module.q_proj.in_features
            init.normal_(module.position_embedding, std=dim**-0.5)
            for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                init.normal_(proj.weight, std=dim**-0.5 * factor)
                init.zeros_(proj.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            # open_clip zero-initialises the last BatchNorm of each bottleneck (the block starts as identity).
            (init.zeros_ if getattr(module, "zero_init_scale", False) else init.ones_)(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, ResNetCLIPModel):
            init.normal_(module.text_projection.weight, std=module.text_projection.in_features**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class ResNetCLIPVisionModel(nn.Module):
    """The ModifiedResNet image tower with its attention pool (see the module docstring)."""

    def __init__(self, config: ResNetCLIPVisionConfig):
        super().__init__()
        self.config = config
        self.embedder = ResNetCLIPEmbeddings(config)
        self.encoder = ResNetCLIPEncoder(config)
        self.attention_pool = ResNetCLIPAttentionPool(config)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """``pixel_values`` ``(batch, num_channels, image_size, image_size)`` ->
        ``last_hidden_state`` ``(batch, 32 * width, image_size / 32, image_size / 32)`` (the last stage's
        feature map) and ``pooler_output`` ``(batch, projection_dim)`` (the attention pool: the projected,
        not normalised, image embedding).

        Raises:
            ValueError: ``pixel_values`` is not ``(batch, num_channels, image_size, image_size)`` (the attention
                pool has a position embedding for one grid size only).
        """
        cfg = self.config
        expected = (cfg.num_channels, cfg.image_size, cfg.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; ResNet-CLIP expects (batch, "
                f"{expected[0]}, {expected[1]}, {expected[2]}): resize/crop images to {cfg.image_size}px with "
                "the model's image processor"
            )
        features = self.encoder(self.embedder(pixel_values))
        return BaseModelOutputWithPooling(
            last_hidden_state=features, pooler_output=self.attention_pool(features)
        )


class ResNetCLIPModel(ResNetCLIPPreTrainedModel):
    r"""ResNet-CLIP dual encoder: image/text embeddings, ``logits_per_image`` and the CLIP contrastive loss.

    Example (a tiny random model; real weights come from ``hqrs convert open-clip --model-name RN50``):

    >>> import torch
    >>> from hqrs.modeling.configuration_resnet_clip import ResNetCLIPConfig
    >>> from hqrs.modeling.modeling_resnet_clip import ResNetCLIPModel
    >>> config = ResNetCLIPConfig(
    ...     vision_config={"layers": [1, 1, 1, 1], "width": 8, "head_width": 8, "image_size": 64,
    ...                    "projection_dim": 16},
    ...     text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    ...                  "num_attention_heads": 2},
    ...     projection_dim=16,
    ... )
    >>> model = ResNetCLIPModel(config).eval()
    >>> input_ids = torch.tensor([[49406, 320, 1125, 49407, 0], [49406, 320, 49407, 0, 0]])
    >>> out = model(pixel_values=torch.randn(3, 3, 64, 64), input_ids=input_ids, return_loss=False)
    >>> out.logits_per_image.shape, out.image_embeds.shape
    (torch.Size([3, 2]), torch.Size([3, 16]))
    >>> model.get_image_features(pixel_values=torch.randn(1, 3, 64, 64)).pooler_output.shape
    torch.Size([1, 16])
    """

    def __init__(self, config: ResNetCLIPConfig):
        super().__init__(config)
        self.projection_dim = config.projection_dim
        self.vision_model = ResNetCLIPVisionModel(config.vision_config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def train(self, mode: bool = True) -> ResNetCLIPModel:
        """``nn.Module.train``, except that BatchNorm layers whose weights are all frozen stay in eval mode.

        A frozen BatchNorm (LoRA, a locked image tower) then keeps normalising with its running statistics and
        does not update them, like open_clip's ``lock(freeze_bn_stats=True)``: training sees the same image
        tower as inference, and an adapter saved without the BatchNorm buffers reproduces the trained model.
        """
        super().train(mode)
        if mode:
            for module in self.vision_model.modules():
                if isinstance(module, nn.BatchNorm2d) and not any(
                    p.requires_grad for p in module.parameters()
                ):
                    module.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.token_embedding = value

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """``pooler_output``: projected (not normalised) image embeddings ``(batch, projection_dim)``;
        ``last_hidden_state``: the last ResNet stage ``(batch, 32 * width, G, G)``."""
        return self.vision_model(pixel_values, return_dict=True)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """``input_ids`` ``(batch, seq_len)`` (each row holding ``<end_of_text>``) -> ``pooler_output``: projected
        (not normalised) text embeddings ``(batch, projection_dim)``; ``last_hidden_state`` ``(batch, seq_len,
        hidden_size)``. Causal attention pooled at the first ``<end_of_text>``: padding after it does not change
        the embedding.

        Raises:
            ValueError: a row has no ``<end_of_text>`` (``config.text_config.eos_token_id``): there is nothing to
                pool (tokenize with the model's processor, which always ends a row with it).
        """
        eos = self.config.text_config.eos_token_id
        if input_ids is not None and isinstance(eos, int):
            no_eos = (~(input_ids == eos).any(dim=-1)).nonzero().flatten().tolist()
            if no_eos:
                raise ValueError(
                    f"input_ids rows {no_eos[:10]} have no <end_of_text> token (id {eos}); the text embedding is "
                    "pooled there. Tokenize with the model's processor/tokenizer (truncation keeps the token)."
                )
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True
        )
        text_outputs.pooler_output = self.text_projection(text_outputs.pooler_output)
        return text_outputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> CLIPOutput:
        """Both modalities -> ``CLIPOutput`` with normalised ``image_embeds`` ``(n_images, projection_dim)`` /
        ``text_embeds`` ``(n_texts, projection_dim)``, ``logits_per_image`` ``(n_images, n_texts)`` (scaled
        cosine similarity), ``logits_per_text`` (its transpose) and, with ``return_loss``, the symmetric CLIP
        cross-entropy (needs ``n_images == n_texts``).

        Raises:
            ValueError: ``pixel_values`` or ``input_ids`` missing, or ``return_loss`` with unpaired batches.
        """
        if pixel_values is None or input_ids is None:
            missing = "pixel_values" if pixel_values is None else "input_ids"
            raise ValueError(
                f"ResNetCLIPModel.forward needs pixel_values and input_ids ({missing} is None); use "
                "get_image_features / get_text_features for one modality"
            )
        vision_outputs = self.get_image_features(pixel_values=pixel_values, return_dict=True)
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True
        )
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logits_per_text = text_embeds @ image_embeds.t().to(text_embeds.device)
        logits_per_text = logits_per_text * self.logit_scale.exp().to(text_embeds.device)
        logits_per_image = logits_per_text.t()
        loss = None
        if return_loss:
            if logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError(
                    f"return_loss needs one caption per image; got {logits_per_image.shape[0]} images and "
                    f"{logits_per_image.shape[1]} texts"
                )
            targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
            loss = (
                F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_image, targets)
            ) / 2
        return CLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


# Saving a model (save_pretrained, the Trainer, merge-lora) copies this file and the configuration next to the
# weights and writes their auto_map, so every saved folder loads without hqrs.
ResNetCLIPConfig.register_for_auto_class("AutoConfig")
ResNetCLIPModel.register_for_auto_class("AutoModel")
