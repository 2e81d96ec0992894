"""Image-text retrieval with the clip_benchmark / RemoteCLIP protocol.

Every caption of an image is a text query whose positives are that image (text→image), and every image
is a query whose positives are all its captions (image→text). Recall@k is the percentage of queries
with at least one positive among the k highest cosine similarities — clip_benchmark's ``recall_at_k``
followed by ``> 0`` and the mean, times 100. ``mean_recall`` averages the six R@{1,5,10} values
(RemoteCLIP's "mR").

The recall arithmetic is :func:`hqrs.modeling.recall.retrieval_metrics` (training uses it too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hqrs.modeling.recall import DEFAULT_KS, retrieval_metrics

from .data import load_karpathy, resolve_images


def evaluate_retrieval(
    encoder, karpathy: str | Path, images_dir: str | Path, split: str | None = "test", ks=DEFAULT_KS
) -> dict[str, Any]:
    """Encode a Karpathy split with ``encoder`` (:class:`~hqrs.evaluation.encoders.DualEncoder`) and score it."""
    entries = load_karpathy(karpathy, split)
    paths = resolve_images(entries, images_dir)
    texts: list[str] = []
    text_to_image: list[int] = []
    for i, e in enumerate(entries):
        texts.extend(e.captions)
        text_to_image.extend([i] * len(e.captions))
    image_emb = encoder.encode_images(paths)
    text_emb = encoder.encode_texts(texts)
    metrics = retrieval_metrics(image_emb, text_emb, text_to_image, ks)
    return {"metrics": metrics, "num_images": len(entries), "num_texts": len(texts)}
