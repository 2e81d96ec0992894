"""Helpers shared by the ``tests/test_train_*.py`` files: a tiny real CLIP folder and real RS image–caption data.

Everything is built locally: the tokenizer from open_clip's shipped BPE vocabulary
(:func:`hqrs.modeling.open_clip_processing.build_tokenizer`), the model from a tiny ``CLIPConfig``, and
the data from the UCM-Captions images and captions of the ``rs_real`` fixture (never copied into the repo).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

IMAGE_SIZE = 32


def tiny_clip_config(vocab_size: int = 49408, projection_dim: int = 16):
    from transformers import CLIPConfig

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        ),
        vision_config=dict(tower, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=projection_dim,
    )


@lru_cache(maxsize=1)
def _tokenizer():
    from hqrs.modeling.open_clip_processing import build_tokenizer

    return build_tokenizer()  # ~5 s: built once per test process


def tiny_processor(tokenizer=None):
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer or _tokenizer())


def make_tiny_clip_dir(path: Path, seed: int = 0, processor=None) -> Path:
    """Save a randomly initialised tiny ``CLIPModel`` and its processor to ``path``."""
    import torch
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config())
    model.save_pretrained(path)
    (processor or tiny_processor()).save_pretrained(path)
    return path


def ucm_records(rs_real: Path, limit: int | None = None) -> list[dict]:
    """One record per UCM-Captions image: image bytes + path, its 5 captions, image id and class label."""
    root = rs_real / "ucm_captions"
    entries = json.loads((root / "dataset_ucm_subset.json").read_text())["images"]
    labels = {}
    for line in (root / "labels.csv").read_text().splitlines()[1:]:
        parts = line.split(",")
        labels[parts[0]] = parts[1]
    records = []
    for entry in entries[:limit]:
        path = root / "images" / entry["filename"]
        records.append(
            {
                "image": {"bytes": path.read_bytes(), "path": entry["filename"]},
                "image_id": entry["filename"],
                "captions": [s["raw"] for s in entry["sentences"]],
                "label": labels.get(entry["filename"], ""),
            }
        )
    return records


def ucm_default(rs_real: Path, limit: int | None = None):
    """``datasets.Dataset`` in the builder's ``default`` layout (one row per image, ``captions`` list)."""
    from datasets import Dataset, Features, Image, List, Value

    features = Features(
        {
            "image": Image(),
            "image_id": Value("string"),
            "captions": List(Value("string")),
            "label": Value("string"),
        }
    )
    records = ucm_records(rs_real, limit)
    return Dataset.from_dict({k: [r[k] for r in records] for k in features}, features=features)


def ucm_pairs(rs_real: Path, limit: int | None = None):
    """``datasets.Dataset`` in the builder's ``pairs`` layout (one row per image–caption pair)."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"image": Image(), "image_id": Value("string"), "caption": Value("string")})
    rows: dict[str, list] = {k: [] for k in features}
    for record in ucm_records(rs_real, limit):
        for caption in record["captions"]:
            rows["image"].append(record["image"])
            rows["image_id"].append(record["image_id"])
            rows["caption"].append(caption)
    return Dataset.from_dict(rows, features=features)


def write_builder_layout(root: Path, splits: dict[str, dict]) -> Path:
    """Write ``data/<config>/<split>-00000-of-00001.parquet`` as the dataset builder's export does.

    ``splits`` maps config name → {split name → ``datasets.Dataset``}.
    """
    for config, by_split in splits.items():
        folder = root / "data" / config
        folder.mkdir(parents=True, exist_ok=True)
        for split, ds in by_split.items():
            ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return root


def tiny_coca_config():
    from hqrs.modeling.configuration_rs_coca import RSCoCaConfig

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return RSCoCaConfig(
        vision_config=dict(
            tower,
            image_size=IMAGE_SIZE,
            patch_size=8,
            pooler_hidden_size=32,
            attn_pooler_queries=5,
            attn_pooler_heads=2,
        ),
        text_config=dict(tower),
        multimodal_config=dict(tower, num_hidden_layers=1),
        projection_dim=16,
    )


def tiny_coca_processor():
    import copy

    from transformers import CLIPImageProcessor

    from hqrs.modeling.processing_rs_coca import RSCoCaProcessor

    tokenizer = copy.deepcopy(_tokenizer())  # model_max_length changes below: never on the shared one
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = RSCoCaProcessor(image_processor, tokenizer)
    processor.tokenizer.model_max_length = 76  # open_clip's CoCa context length
    return processor


def make_tiny_coca_dir(path: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny ``RSCoCaModel`` and its processor to ``path``."""
    import torch

    from hqrs.modeling.modeling_rs_coca import RSCoCaModel

    torch.manual_seed(seed)
    RSCoCaModel(tiny_coca_config()).save_pretrained(path)
    tiny_coca_processor().save_pretrained(path)
    return path
