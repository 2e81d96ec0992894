"""ResNet-CLIP model configuration (HQRS-CLIP RN50 / RN101).

ResNet-CLIP is OpenAI's / open_clip's ModifiedResNet CLIP (``RN50``, ``RN101``, ``RN50x4`` ...) as a transformers
model: a ResNet image tower with a 3-convolution stem, anti-aliased (average-pool) downsampling and a multi-head
attention pool instead of global average pooling, next to CLIP's causal text transformer (transformers'
``CLIPTextModel``, configured by a ``CLIPTextConfig``).

This file is shipped next to ``modeling_resnet_clip.py`` and ``processing_resnet_clip.py`` in every saved
ResNet-CLIP folder (remote code), so it imports nothing from ``hqrs``.
"""

from __future__ import annotations

from transformers import CLIPTextConfig, PretrainedConfig

__all__ = ["ResNetCLIPConfig", "ResNetCLIPVisionConfig"]

# open_clip's CLIP BPE tokenizer: pad id 0, <start_of_text> 49406, <end_of_text> 49407. Defaults only.
_CLIP_PAD_ID = 0
_CLIP_SOT_ID = 49406
_CLIP_EOT_ID = 49407

#: ``auto_map`` every saved folder carries, so that the Auto classes (and the zero-shot pipeline) find the code.
AUTO_MAP = {
    "AutoConfig": "configuration_resnet_clip.ResNetCLIPConfig",
    "AutoModel": "modeling_resnet_clip.ResNetCLIPModel",
    "AutoModelForZeroShotImageClassification": "modeling_resnet_clip.ResNetCLIPModel",
}


class ResNetCLIPVisionConfig(PretrainedConfig):
    r"""Image tower of ResNet-CLIP: open_clip's ``ModifiedResNet`` with its attention pool.

    Args:
        layers: bottleneck blocks per stage (open_clip ``vision_cfg.layers``): ``(3, 4, 6, 3)`` for RN50,
            ``(3, 4, 23, 3)`` for RN101. Exactly 4 positive ints.
        width: stem width (open_clip ``vision_cfg.width``, 64 for RN50/RN101). Stage ``i`` has
            ``width * 2**i`` bottleneck channels and ``4 * width * 2**i`` output channels; the attention pool
            works on ``hidden_size = 32 * width`` channels.
        head_width: channels per attention-pool head (open_clip ``vision_cfg.head_width``, 64); the pool has
            ``hidden_size // head_width`` heads.
        image_size: input side in pixels (a multiple of 32: the tower downsamples by 32 and the attention pool
            has one position embedding per cell of the ``image_size // 32`` grid, plus the mean token).
        num_channels: input channels (3).
        projection_dim: output size of the attention pool's ``out_proj`` (open_clip ``embed_dim``); this is the
            joint image-text embedding size and must equal :class:`ResNetCLIPConfig`'s ``projection_dim``.
        batch_norm_eps: BatchNorm epsilon (torch's default 1e-5, as open_clip).

    Example:

    >>> from hqrs.modeling.configuration_resnet_clip import ResNetCLIPVisionConfig
    >>> cfg = ResNetCLIPVisionConfig(layers=[3, 4, 23, 3], projection_dim=512)
    >>> cfg.hidden_size, cfg.num_attention_heads
    (2048, 32)
    """

    model_type = "resnet_clip_vision_model"
    base_config_key = "vision_config"

    layers: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    head_width: int = 64
    image_size: int = 224
    num_channels: int = 3
    projection_dim: int = 1024
    batch_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        layers = self.layers
        if (
            not isinstance(layers, (list, tuple))
            or len(layers) != 4
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers)
        ):
            raise ValueError(
                f"vision_config: layers={layers!r} must be 4 positive ints (blocks per ResNet stage), e.g. "
                "[3, 4, 6, 3] for RN50"
            )
        self.layers = list(layers)
        for name in ("width", "head_width", "image_size", "num_channels", "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"vision_config: {name}={value!r} must be a positive int")
        if self.width % 2:
            raise ValueError(
                f"vision_config: width={self.width} must be even (the stem starts at width // 2)"
            )
        if self.image_size % 32:
            raise ValueError(
                f"vision_config: image_size={self.image_size} must be a multiple of 32 (the ResNet downsamples by 32)"
            )
        if self.hidden_size % self.head_width:
            raise ValueError(
                f"vision_config: attention-pool width 32 * width = {self.hidden_size} is not a multiple of "
                f"head_width={self.head_width}"
            )
        super().__post_init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Channels of the last stage, which the attention pool attends over (``32 * width``)."""
        return self.width * 32

    @property
    def num_attention_heads(self) -> int:
        """Heads of the attention pool (``hidden_size // head_width``, 32 for RN50)."""
        return self.hidden_size // self.head_width

    @property
    def grid_size(self) -> int:
        """Side of the final feature map (``image_size // 32``)."""
        return self.image_size // 32


class ResNetCLIPConfig(PretrainedConfig):
    r"""Configuration of [`ResNetCLIPModel`]: a ModifiedResNet image tower, a CLIP text tower, a contrastive head.

    Args:
        vision_config: :class:`ResNetCLIPVisionConfig` or its dict.
        text_config: transformers ``CLIPTextConfig`` or its dict (open_clip's text transformer is exactly
            ``CLIPTextModel``; ``hidden_act="quick_gelu"`` for ``-quickgelu`` / OpenAI-initialised weights).
        projection_dim: joint embedding size (open_clip ``embed_dim``: 1024 for RN50, 512 for RN101); must equal
            ``vision_config.projection_dim``.
        logit_scale_init_value: initial ``logit_scale`` (log inverse temperature), open_clip's ``log(1 / 0.07)``.
        open_clip_model_name: open_clip architecture this model converts to and from (``"RN50"`` ...), or ``None``.
        open_clip_force_quick_gelu: converted with ``force_quick_gelu`` (a plain name with a QuickGELU text tower);
            open_clip must then be created with ``force_quick_gelu=True`` for the weights to mean the same.

    Raises:
        ValueError: inconsistent sizes (the message quotes the values).

    Example:

    >>> from hqrs.modeling.configuration_resnet_clip import ResNetCLIPConfig
    >>> cfg = ResNetCLIPConfig(
    ...     vision_config={"layers": [1, 1, 1, 1], "width": 8, "head_width": 8, "image_size": 64,
    ...                    "projection_dim": 16},
    ...     text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    ...                  "num_attention_heads": 2},
    ...     projection_dim=16,
    ... )
    >>> cfg.vision_config.num_attention_heads, cfg.text_config.eos_token_id, cfg.text_config.pad_token_id
    (32, 49407, 0)
    """

    model_type = "resnet_clip"
    sub_configs_defaults = {"vision_config": ResNetCLIPVisionConfig, "text_config": CLIPTextConfig}

    vision_config: dict | ResNetCLIPVisionConfig | None = None
    text_config: dict | CLIPTextConfig | None = None
    projection_dim: int = 1024
    logit_scale_init_value: float = 2.6592
    open_clip_model_name: str | None = None
    open_clip_force_quick_gelu: bool = False
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        text = self.text_config
        if isinstance(text, dict):
            # open_clip's tokenizer ids and LayerNorm epsilon unless the dict says otherwise.
            text = {
                "pad_token_id": _CLIP_PAD_ID,
                "bos_token_id": _CLIP_SOT_ID,
                "eos_token_id": _CLIP_EOT_ID,
                "layer_norm_eps": 1e-5,
                "hidden_act": "gelu",
                **text,
            }
            self.text_config = text
        elif text is None:
            self.text_config = {
                "pad_token_id": _CLIP_PAD_ID,
                "bos_token_id": _CLIP_SOT_ID,
                "eos_token_id": _CLIP_EOT_ID,
                "hidden_act": "gelu",
            }
        super().__post_init__(**kwargs)
        vision, text = self.vision_config, self.text_config
        if vision.projection_dim != self.projection_dim:
            raise ValueError(
                f"vision_config.projection_dim={vision.projection_dim} must equal projection_dim="
                f"{self.projection_dim}: the attention pool's out_proj writes the joint embedding"
            )
        if text.hidden_size % text.num_attention_heads:
            raise ValueError(
                f"text_config: hidden_size={text.hidden_size} is not a multiple of num_attention_heads="
                f"{text.num_attention_heads}"
            )
        if text.hidden_act not in ("gelu", "quick_gelu"):
            raise ValueError(f"text_config: hidden_act={text.hidden_act!r} must be 'gelu' or 'quick_gelu'")
        text.projection_dim = self.projection_dim
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
