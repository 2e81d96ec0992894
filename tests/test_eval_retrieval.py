"""Retrieval recall@k: parity with clip_benchmark's own recall_at_k, and the Karpathy input."""

from __future__ import annotations

import json

import pytest
import torch

from hqrs.evaluation.data import karpathy_entries, load_karpathy, resolve_images
from hqrs.modeling.recall import hits_at_k, retrieval_metrics


def _clip_benchmark_metrics(image_emb, text_emb, text_to_image, ks):
    """clip_benchmark.metrics.zeroshot_retrieval.evaluate's scoring, with its own recall_at_k."""
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    scores = text_emb @ image_emb.T
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), torch.as_tensor(text_to_image)] = True
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (
            recall_at_k(scores.T, positive_pairs.T, k) > 0
        ).float().mean().item() * 100
    for k in ks:
        out[f"text_to_image_R@{k}"] = (recall_at_k(scores, positive_pairs, k) > 0).float().mean().item() * 100
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_clip_benchmark(seed):
    g = torch.Generator().manual_seed(seed)
    n_img, dim = 40, 8
    caps = torch.randint(1, 6, (n_img,), generator=g)  # 1..5 captions per image, like RS sets
    text_to_image = torch.repeat_interleave(torch.arange(n_img), caps).tolist()
    image_emb = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    noise = torch.randn(len(text_to_image), dim, generator=g)
    text_emb = torch.nn.functional.normalize(image_emb[text_to_image] + 1.2 * noise, dim=-1)
    ks = (1, 5, 10)
    ours = retrieval_metrics(image_emb, text_emb, text_to_image, ks)
    theirs = _clip_benchmark_metrics(image_emb, text_emb, text_to_image, ks)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-4), key
    assert ours["mean_recall"] == pytest.approx(sum(theirs.values()) / 6, abs=1e-4)
    assert 0 < ours["text_to_image_R@1"] < ours["text_to_image_R@10"] < 100


def test_perfect_and_k_larger_than_items():
    emb = torch.eye(3)
    t2i = [0, 0, 1, 2, 2]
    out = retrieval_metrics(emb, emb[t2i], t2i, ks=(1, 5))
    assert all(v == 100.0 for v in out.values())
    hits = hits_at_k(torch.tensor([[0.1, 0.9]]), torch.tensor([[True, False]]), ks=(1, 50))
    assert hits[1].tolist() == [False] and hits[50].tolist() == [True]


def test_bad_links_raise():
    with pytest.raises(ValueError, match="outside 0..1"):
        retrieval_metrics(torch.eye(2), torch.eye(2), [0, 2])
    with pytest.raises(ValueError, match="3 text→image links for 2"):
        retrieval_metrics(torch.eye(2), torch.eye(2), [0, 1, 1])


def test_karpathy_real_files(rs_real):
    ucm = load_karpathy(rs_real / "ucm_captions/dataset_ucm_subset.json", "test")
    assert len(ucm) == 63 and all(len(e.captions) == 5 for e in ucm)
    assert len(resolve_images(ucm, rs_real / "ucm_captions/images")) == 63
    rsicd = load_karpathy(rs_real / "rsicd/dataset_rsicd_subset.json", "test")
    assert len(rsicd) == 95
    with pytest.raises(ValueError, match=r"no image in split 'test'; splits present: \['train'\]"):
        load_karpathy(rs_real / "sydney_captions/dataset_sydney_subset.json", "test")
    with pytest.raises(FileNotFoundError, match="63 of 63 images are missing"):
        resolve_images(ucm, rs_real / "rsicd/images")
    with pytest.raises(ValueError, match="sentences\\[0\\] has no 'raw'"):
        karpathy_entries(
            json.loads('{"images": [{"filename": "a.tif", "split": "test", "sentences": [{}]}]}')
        )
