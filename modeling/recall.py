"""Recall@k of image-text retrieval, the clip_benchmark / RemoteCLIP protocol.

Shared by training's evaluation loop (:func:`hqrs.modeling.training.retrieval_metrics`) and
``hqrs eval retrieval`` (:mod:`hqrs.evaluation.retrieval`); it lives in the modeling layer so that
training never imports the evaluation layer above it.

Every caption of an image is a text query whose positives are that image (text→image), and every image
is a query whose positives are all its captions (image→text). Recall@k is the percentage of queries
with at least one positive among the k highest cosine similarities — clip_benchmark's ``recall_at_k``
followed by ``> 0`` and the mean, times 100. ``mean_recall`` averages the six R@{1,5,10} values
(RemoteCLIP's "mR").

Example:
    >>> import torch
    >>> img = torch.eye(2); txt = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> retrieval_metrics(img, txt, [0, 0, 1], ks=(1,))
    {'image_to_text_R@1': 100.0, 'text_to_image_R@1': 100.0, 'mean_recall': 100.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_KS = (1, 5, 10)


def hits_at_k(scores, positives, ks: Sequence[int]) -> dict[int, Any]:
    """Per-query booleans: is any positive among the top-k columns of ``scores`` (queries × items)?

    ``k`` larger than the number of items is clamped (every positive is then found).
    """
    import torch

    if scores.shape != positives.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ in shape"
        )
    n_items = scores.shape[1]
    kmax = min(max(ks), n_items)
    top = torch.topk(scores, kmax, dim=1).indices
    found = positives.gather(1, top).bool()  # queries × kmax
    cum = found.cumsum(dim=1) > 0
    return {k: cum[:, min(k, n_items) - 1] for k in ks}


def retrieval_metrics(image_emb, text_emb, text_to_image: Sequence[int], ks: Sequence[int] = DEFAULT_KS):
    """R@k in percent for both directions and their mean; embeddings must be L2-normalised."""
    import torch

    if len(text_to_image) != text_emb.shape[0]:
        raise ValueError(f"{len(text_to_image)} text→image links for {text_emb.shape[0]} text embeddings")
    n_img = image_emb.shape[0]
    t2i = torch.as_tensor(list(text_to_image), dtype=torch.long)
    if t2i.numel() and (t2i.min() < 0 or t2i.max() >= n_img):
        raise ValueError(f"text_to_image holds an image index outside 0..{n_img - 1}")
    positives = torch.zeros(text_emb.shape[0], n_img, dtype=torch.bool)
    positives[torch.arange(len(t2i)), t2i] = True
    scores = text_emb.float() @ image_emb.float().T  # texts × images
    t2i_hits = hits_at_k(scores, positives, ks)
    i2t_hits = hits_at_k(scores.T.contiguous(), positives.T.contiguous(), ks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float(i2t_hits[k].float().mean() * 100)
    for k in ks:
        out[f"text_to_image_R@{k}"] = float(t2i_hits[k].float().mean() * 100)
    out["mean_recall"] = sum(out.values()) / len(out)
    return out
