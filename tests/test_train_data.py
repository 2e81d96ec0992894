"""Data layer of the trainer: loading, caption draw, RS augmentations, error policies, collator, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import train_fixtures as tf
from PIL import Image

from hqrs.modeling.training import retrieval_metrics
from hqrs.modeling.training_data import (
    DataOptions,
    ImageCaptionDataset,
    ImageLoadError,
    ImageTextCollator,
    RSAugment,
    StreamingImageCaptionDataset,
    load_training_dataset,
    split_by_image,
)


@pytest.fixture(scope="module")
def ucm(rs_real):
    return tf.ucm_default(rs_real, 12)


def test_caption_draw_is_seeded_per_epoch_and_row(ucm):
    def draws(seed, epoch):
        ds = ImageCaptionDataset(ucm, DataOptions(seed=seed))
        ds.set_epoch(epoch)
        return [ds[i]["text"] for i in range(len(ds))]

    epoch0, epoch1 = draws(0, 0), draws(0, 1)
    assert epoch0 == draws(0, 0)  # reproducible
    assert epoch0 != epoch1  # a new draw each epoch
    assert epoch0 != draws(1, 0)  # the seed matters
    for i, text in enumerate(epoch0 + epoch1):
        assert text in ucm[i % len(ucm)]["captions"]
    # reading order does not matter (resume / multi-process sharding)
    ds = ImageCaptionDataset(ucm, DataOptions(seed=0))
    assert [ds[i]["text"] for i in reversed(range(len(ds)))] == list(reversed(epoch0))


def test_eval_dataset_has_every_caption_with_its_image_id(ucm):
    ds = ImageCaptionDataset(ucm, DataOptions(), train=False, all_captions=True)
    assert len(ds) == sum(len(c) for c in ucm["captions"])
    samples = [ds[i] for i in range(10)]
    assert [s["text"] for s in samples[:5]] == ucm[0]["captions"]
    assert [s["image_ids"] for s in samples] == [0] * 5 + [1] * 5


def test_pairs_rows_share_the_image_id(rs_real):
    pairs = tf.ucm_pairs(rs_real, 3)
    ds = ImageCaptionDataset(pairs, DataOptions())
    assert ds.caption_column == "caption"
    assert [ds[i]["image_ids"] for i in range(len(ds))] == [0] * 5 + [1] * 5 + [2] * 5


def test_rs_augment_is_dihedral_without_crop():
    pixels = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)  # non-square: rotations change the shape
    image = Image.fromarray(pixels)
    aug = RSAugment(crop_scale=None)
    group = []
    for k in range(4):
        rotated = np.rot90(pixels, k=-k)  # PIL ROTATE_90 is counter-clockwise
        group += [rotated, rotated[:, ::-1]]
    seen = set()
    for row in range(64):
        out = np.asarray(aug(image, np.random.default_rng([0, 0, row])))
        matches = [i for i, g in enumerate(group) if g.shape == out.shape and np.array_equal(g, out)]
        assert matches, "augmented image is not a flip/rotation of the input"
        seen.add(matches[0])
    assert len(seen) >= 6  # flips and turns are all drawn


def test_rs_augment_crop_and_determinism(ucm):
    options = DataOptions(seed=3, augment=RSAugment())
    ds = ImageCaptionDataset(ucm, options)
    first = np.asarray(ds[2]["image"])
    assert first.shape == (256, 256, 3)
    assert np.array_equal(first, np.asarray(ImageCaptionDataset(ucm, options)[2]["image"]))
    ds.set_epoch(1)
    assert not np.array_equal(first, np.asarray(ds[2]["image"]))
    plain = np.asarray(ImageCaptionDataset(ucm, DataOptions(seed=3))[2]["image"])
    assert not np.array_equal(first, plain)
    with pytest.raises(ValueError, match="crop_scale"):
        RSAugment(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="hflip"):
        RSAugment(hflip=1.5)


def test_missing_columns_are_named(ucm):
    with pytest.raises(
        ValueError,
        match=r"no caption column: expected one of captions, caption, text .*found: image, image_id, label",
    ):
        ImageCaptionDataset(ucm.remove_columns("captions"))
    with pytest.raises(
        ValueError, match=r"no image column 'picture'; columns found: image, image_id, captions, label"
    ):
        ImageCaptionDataset(ucm, DataOptions(image_column="picture"))
    with pytest.raises(ValueError, match=r"no caption column 'sentences'"):
        ImageCaptionDataset(ucm, DataOptions(caption_column="sentences"))


def test_broken_image_policy(ucm, caplog):
    rows = ucm.select(range(3)).to_dict()
    rows["image"][1] = {"bytes": b"not an image", "path": "broken.tif"}
    broken = type(ucm).from_dict(rows, features=ucm.features)
    with pytest.raises(ImageLoadError, match=r"row 1: image 'broken.tif' of column 'image' failed to load"):
        ImageCaptionDataset(broken, DataOptions(image_errors="raise"))[1]
    ds = ImageCaptionDataset(broken, DataOptions(image_errors="skip"))
    with caplog.at_level("WARNING"):
        sample = ds[1]
    assert sample["image_ids"] == 2 and sample["text"] in rows["captions"][2]  # the next loadable row
    assert ds.skipped == 1 and "broken.tif" in caplog.text
    rows["image"] = [{"bytes": b"junk", "path": f"{i}.tif"} for i in range(3)]
    all_broken = ImageCaptionDataset(
        type(ucm).from_dict(rows, features=ucm.features), DataOptions(max_skips=2)
    )
    with pytest.raises(ImageLoadError, match="3 consecutive images"):
        all_broken[0]
    with pytest.raises(ValueError, match="image_errors"):
        DataOptions(image_errors="ignore")


def test_load_training_dataset_layouts(tmp_path, ucm):
    from datasets import DatasetDict

    DatasetDict({"train": ucm.select(range(8)), "test": ucm.select(range(8, 12))}).save_to_disk(
        tmp_path / "disk"
    )
    assert len(load_training_dataset(tmp_path / "disk", split="test")) == 4
    with pytest.raises(ValueError, match=r"has no split 'validation'; its splits are \['test', 'train'\]"):
        load_training_dataset(tmp_path / "disk", split="validation")
    tf.write_builder_layout(tmp_path / "hub", {"default": {"train": ucm}})
    loaded = load_training_dataset(tmp_path / "hub", config="default")
    assert len(loaded) == len(ucm) and loaded.column_names == ucm.column_names
    with pytest.raises(ValueError, match=r"no split 'test' in data/default/; found \['train'\]"):
        load_training_dataset(tmp_path / "hub", config="default", split="test")
    streamed = load_training_dataset(tmp_path / "hub", config="default", streaming=True)
    assert next(iter(streamed))["image_id"] == ucm[0]["image_id"]
    with pytest.raises(ValueError, match="does not exist"):
        load_training_dataset(tmp_path / "nowhere")


def test_split_by_image_keeps_images_whole(rs_real):
    pairs = tf.ucm_pairs(rs_real, 10)
    train, held = split_by_image(pairs, 0.2, seed=0)
    assert len(held) == 10 and len(train) == 40
    assert not set(train["image_id"]) & set(held["image_id"])
    with pytest.raises(ValueError, match="fraction"):
        split_by_image(pairs, 1.5)


def test_collator_runs_the_processor(ucm):
    processor = tf.tiny_processor()
    ds = ImageCaptionDataset(ucm, DataOptions())
    batch = ImageTextCollator(processor)([ds[i] for i in range(3)])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "image_ids"}
    assert batch["pixel_values"].shape == (3, 3, tf.IMAGE_SIZE, tf.IMAGE_SIZE)
    assert batch["input_ids"].shape == (3, 77) and batch["input_ids"][0, 0].item() == 49406
    assert batch["image_ids"].tolist() == [0, 1, 2]
    longest = ImageTextCollator(processor, padding=True)([ds[i] for i in range(3)])
    assert longest["input_ids"].shape[1] < 77


def test_retrieval_metrics_by_hand():
    from transformers import EvalPrediction

    # 2 images, 3 captions: captions 0 and 1 belong to image 0, caption 2 to image 1.
    images = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # one row per caption (image repeated)
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    metrics = retrieval_metrics(
        EvalPrediction(predictions=(images, texts), label_ids=np.array([0, 0, 1])), ks=(1, 2)
    )
    # text->image: caption 0 -> image 0 (hit), caption 1 -> image 1 (miss), caption 2 -> image 1 (0.8 > 0.6, hit)
    assert metrics["text_to_image_R@1"] == pytest.approx(200 / 3)
    # image->text: image 0 best caption is 0 (hit); image 1 best caption is 1 (score 1.0, a miss)
    assert metrics["image_to_text_R@1"] == pytest.approx(50)
    assert metrics["image_to_text_R@2"] == 100 and metrics["text_to_image_R@2"] == 100
    assert metrics["mean_recall"] == pytest.approx((200 / 3 + 50 + 100 + 100) / 4)


def test_streaming_image_ids_agree_across_dataloader_workers(rs_real):
    """Two workers each read their own shards of a stream: one image keeps one id, two images never
    share one (a per-worker counter numbered both workers' first images 0)."""
    import torch

    pairs = tf.ucm_pairs(rs_real, 6)  # 6 images x 5 captions, image-major
    stream = pairs.to_iterable_dataset(num_shards=4)
    ds = StreamingImageCaptionDataset(stream, DataOptions(), train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda s: s)
    id_of: dict[int, set] = {}
    for sample in loader:
        id_of.setdefault(sample["image_ids"], set()).add(sample["text"])
    expected = {}
    for row in pairs.select_columns(["image_id", "caption"]):
        expected.setdefault(row["image_id"], set()).add(row["caption"])
    assert sorted(map(sorted, id_of.values())) == sorted(map(sorted, expected.values()))
