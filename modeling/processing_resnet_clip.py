"""ResNet-CLIP processor: a CLIP image processor plus a CLIP BPE tokenizer with open_clip's ids and padding.

Shipped as remote code next to the ResNet-CLIP model files; it imports nothing from ``hqrs``.
"""

from __future__ import annotations

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

__all__ = ["ResNetCLIPProcessor"]


class ResNetCLIPProcessor(ProcessorMixin):
    r"""Image processor + tokenizer for [`ResNetCLIPModel`].

    ``__call__`` tokenizes like ``open_clip.get_tokenizer("RN50")`` by default: ``<start_of_text>`` text
    ``<end_of_text>``, padded with id 0 to ``tokenizer.model_max_length`` (77) and truncated there, so
    ``input_ids`` equal open_clip's token tensor. Images go through the image processor (open_clip's eval
    transform: bicubic resize of the short side, center crop, OpenAI mean/std).

    Args:
        image_processor: a ``CLIPImageProcessor`` (``hqrs.modeling.open_clip_processing.build_image_processor``).
        tokenizer: a ``CLIPTokenizer`` with open_clip's vocabulary (``build_tokenizer``).

    Example:

    >>> from hqrs.modeling.open_clip_processing import build_image_processor, build_tokenizer
    >>> from hqrs.modeling.processing_resnet_clip import ResNetCLIPProcessor
    >>> processor = ResNetCLIPProcessor(build_image_processor("RN50"), build_tokenizer())
    >>> batch = processor(text=["Many planes are parked."], return_tensors="pt")
    >>> batch["input_ids"].shape, int(batch["input_ids"][0, -1])
    (torch.Size([1, 77]), 0)
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    def __call__(
        self,
        images=None,
        text=None,
        padding: bool | str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        """``pixel_values`` ``(n_images, 3, S, S)`` for ``images``; ``input_ids`` / ``attention_mask``
        ``(n_texts, max_length)`` for ``text``.

        Raises:
            ValueError: neither ``images`` nor ``text`` given.
        """
        if images is None and text is None:
            raise ValueError("ResNetCLIPProcessor needs images, text or both; got neither")
        data = {}
        if text is not None:
            data.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length or self.tokenizer.model_max_length,
                    return_tensors=return_tensors,
                )
            )
        if images is not None:
            data["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


# Saving the processor copies this file and writes its auto_map, so AutoProcessor loads it without hqrs.
ResNetCLIPProcessor.register_for_auto_class("AutoProcessor")
