"""RS-CoCa processor: a CLIP image processor plus a CLIP BPE tokenizer with open_clip's ids and padding.

Shipped as remote code next to the RS-CoCa model files; it imports nothing from ``hqrs``.
"""

from __future__ import annotations

from transformers import CLIPTokenizer, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

__all__ = ["RSCoCaProcessor"]


class RSCoCaProcessor(ProcessorMixin):
    r"""Image processor + tokenizer for [`RSCoCaModel`].

    ``__call__`` tokenizes like open_clip's CoCa tokenizer by default: ``<start_of_text>`` caption
    ``<end_of_text>``, padded with the tokenizer's pad id to ``tokenizer.model_max_length`` (76 for CoCa) and
    truncated there. ``batch_decode`` turns generated ids into captions: each sequence is cut at its first
    ``<end_of_text>`` and the ``<start_of_text>`` tokens are dropped (so a real ``"!"`` in a caption survives even
    though ``"!"`` is open_clip's pad token).

    Example:

    >>> from hqrs.modeling.open_clip_processing import build_image_processor, build_tokenizer
    >>> from hqrs.modeling.processing_rs_coca import RSCoCaProcessor
    >>> processor = RSCoCaProcessor(build_image_processor("coca_ViT-B-32"), build_tokenizer(model_max_length=76))
    >>> batch = processor(text=["Many planes are parked."], return_tensors="pt")
    >>> batch["input_ids"].shape
    torch.Size([1, 76])
    >>> processor.batch_decode(batch["input_ids"])
    ['many planes are parked .']
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if tokenizer is not None and getattr(tokenizer, "pad_token", None) == "!":
            # "!" is open_clip's pad id 0 *and* an ordinary BPE token: never cut it out of the text as a
            # special token (folders written before this was saved in tokenizer_config.json get it here)
            tokenizer.split_special_tokens = True
            tokenizer.init_kwargs["split_special_tokens"] = True
        super().__init__(image_processor, tokenizer)

    @classmethod
    def _load_tokenizer_from_pretrained(
        cls, sub_processor_type, pretrained_model_name_or_path, subfolder="", **kwargs
    ):
        """The tokenizer is always the CLIP BPE tokenizer saved next to the processor: load that class directly.

        transformers' default (``AutoTokenizer``) first reads ``config.json`` to choose a tokenizer class. In a
        process where ``rs_coca`` is not a registered model type, that asked whether to run the folder's code
        and then warned "You are using a model of type `rs_coca` to instantiate a model of type ``". The class
        is known here, so neither the model config nor remote code is consulted.
        """
        kwargs.pop("trust_remote_code", None)
        if sub_processor_type != "tokenizer":  # no other tokenizer attribute exists; keep transformers' rule
            return super()._load_tokenizer_from_pretrained(
                sub_processor_type, pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
        return CLIPTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

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
        """Returns ``pixel_values`` for ``images`` and ``input_ids``/``attention_mask`` for ``text``."""
        if images is None and text is None:
            raise ValueError("RSCoCaProcessor needs images, text or both; got neither.")
        data = {}
        if text is not None:
            encoded = self.tokenizer(
                text,
                padding=padding,
                truncation=truncation,
                max_length=max_length or self.tokenizer.model_max_length,
                return_tensors=return_tensors,
                **{k: v for k, v in kwargs.items() if k in ("add_special_tokens",)},
            )
            data.update(encoded)
        if images is not None:
            pixel = self.image_processor(images, return_tensors=return_tensors)
            data["pixel_values"] = pixel["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _trim(self, ids) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        eos, bos = self.tokenizer.eos_token_id, self.tokenizer.bos_token_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return [i for i in ids if i != bos]

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Captions from token ids: cut at the first ``<end_of_text>``, drop ``<start_of_text>``, strip.

        With ``skip_special_tokens=False`` this is the tokenizer's plain ``batch_decode``."""
        if not skip_special_tokens:
            return self.tokenizer.batch_decode(sequences, skip_special_tokens=False, **kwargs)
        return [
            self.tokenizer.decode(self._trim(seq), skip_special_tokens=False, **kwargs).strip()
            for seq in sequences
        ]

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:
        """One caption; see :meth:`batch_decode`."""
        return self.batch_decode([token_ids], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Used by the ``image-text-to-text`` pipeline; same as :meth:`batch_decode`."""
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]
