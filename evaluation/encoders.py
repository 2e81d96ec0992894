"""Image / text embeddings from a saved dual-encoder folder (HQRS-CLIP ``CLIPModel``, ResNet-CLIP or RS-CoCa).

Any model whose class has ``get_image_features(pixel_values=...)`` and
``get_text_features(input_ids=..., attention_mask=...)`` returning transformers 5's
``BaseModelOutputWithPooling`` (``pooler_output`` = the projected embedding, as ``CLIPModel``; every
family of :mod:`hqrs.modeling.families` does) works; the folder must also hold its processor
(tokenizer + image processor). Embeddings come back L2-normalised, float32, on the CPU.

Example:
    >>> enc = DualEncoder.from_pretrained("path/to/hqrs-clip")  # doctest: +SKIP
    >>> enc.encode_texts(["a satellite photo of a farm."]).shape  # doctest: +SKIP
    torch.Size([1, 512])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..modeling.families import family_of, register_auto_classes
from .data import load_image

logger = logging.getLogger(__name__)


def _pooled(out: Any, method: str):
    """``pooler_output`` of a ``get_*_features`` output (transformers 5 ``BaseModelOutputWithPooling``)."""
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ValueError(
            f"{method} returned {type(out).__name__}, not an output with a pooler_output tensor "
            "(transformers 5's BaseModelOutputWithPooling, as CLIPModel returns)"
        )
    return pooled


class _ImageBatches:
    """``torch.utils.data.Dataset`` of preprocessed single images (runs in DataLoader workers)."""

    def __init__(self, items: Sequence[Any], image_processor: Any) -> None:
        self.items, self.image_processor = items, image_processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image = load_image(self.items[i])
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


@dataclass
class DualEncoder:
    """A loaded model + processor with batched, normalised ``encode_images`` / ``encode_texts``."""

    model: Any
    processor: Any
    name: str
    device: str = "cpu"
    batch_size: int = 64
    num_workers: int = 0

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str | None = None,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        batch_size: int = 64,
        num_workers: int | None = None,
    ) -> DualEncoder:
        import torch
        from transformers import AutoModel, AutoProcessor

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"--model {str(path)!r} is not a saved model folder (no config.json); save one with "
                "model.save_pretrained() and processor.save_pretrained()"
            )
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if dtype not in dtypes:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(dtypes)}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        register_auto_classes()  # RS-CoCa folders load with hqrs' classes, never the folder's code
        model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=dtypes[dtype])
        for method in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, method, None)):
                raise ValueError(
                    f"model in {str(path)!r} ({type(model).__name__}) has no {method}(); zero-shot and "
                    "retrieval need a dual encoder such as CLIPModel or RS-CoCa"
                )
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        for part in ("tokenizer", "image_processor"):
            if getattr(processor, part, None) is None:
                raise ValueError(
                    f"processor in {str(path)!r} has no {part}; save the full processor with the model"
                )
        model.to(device).eval()
        if num_workers is None:
            num_workers = min(4, max(0, (os.cpu_count() or 1) - 1))
        return cls(model, processor, path.name, device, batch_size, num_workers)

    @property
    def text_padding(self) -> str:
        """Captions are padded to the longest in a batch only where the family's text embedding does not depend
        on padding (HQRS-CLIP); otherwise (RS-CoCa appends its CLS token after the padding, like open_clip's
        CoCa; any model outside the registry) to the fixed length the tokenizer was built for."""
        try:
            return family_of(self.model).text_padding
        except ValueError:
            return "max_length"

    @property
    def max_text_length(self) -> int:
        tok_max = getattr(self.processor.tokenizer, "model_max_length", None) or 77
        cfg = getattr(self.model.config, "text_config", None)
        pos = getattr(cfg, "max_position_embeddings", None)
        return min(int(tok_max), int(pos)) if pos else int(min(tok_max, 10_000))

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None):
        """``[len(texts), dim]`` normalised embeddings; texts are batched by length to cut padding."""
        import torch

        if not texts:
            raise ValueError("no texts to encode")
        bs = batch_size or max(self.batch_size, 256)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                enc = self.processor.tokenizer(
                    [texts[i] for i in idx],
                    padding=self.text_padding,
                    truncation=True,
                    max_length=self.max_text_length,
                    return_tensors="pt",
                )
                inputs = {
                    k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
                }
                emb = _pooled(self.model.get_text_features(**inputs), "get_text_features").float()
                emb = torch.nn.functional.normalize(emb, dim=-1).cpu()
                for row, i in enumerate(idx):
                    out[i] = emb[row]
        return torch.stack(out)

    def encode_images(self, items: Sequence[Any], progress: bool = True):
        """``[len(items), dim]`` normalised embeddings of images given as paths or PIL images."""
        import torch
        from torch.utils.data import DataLoader

        if len(items) == 0:
            raise ValueError("no images to encode")
        loader = DataLoader(
            _ImageBatches(items, self.processor.image_processor),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle=False,
        )
        dtype = next(self.model.parameters()).dtype
        chunks = []
        with torch.inference_mode():
            for pixels in tqdm(loader, desc="images", unit="batch", disable=not progress):
                out = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
                emb = _pooled(out, "get_image_features").float()
                chunks.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(chunks)
