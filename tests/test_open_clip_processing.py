"""Offline tokenizer and image processor vs open_clip's own, on real RS captions and images."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from hqrs.modeling.open_clip_processing import (
    build_clip_processor,
    build_image_processor,
    build_tokenizer,
    clean_text,
)

# One 8-bit level after normalisation with the smallest OpenAI std: 1 / 255 / 0.26130258.
ONE_LEVEL = 1 / 255 / 0.26130258 + 1e-6


def _all_captions(rs_real) -> list[str]:
    caps = []
    for rel in (
        "ucm_captions/dataset_ucm_subset.json",
        "rsicd/dataset_rsicd_subset.json",
        "sydney_captions/dataset_sydney_subset.json",
    ):
        for image in json.loads((rs_real / rel).read_text(encoding="utf-8"))["images"]:
            caps += [s["raw"] for s in image["sentences"]]
    coco = json.loads(
        (rs_real / "rsicd/source_captions/rsicd_test_coco_format.json").read_text(encoding="utf-8")
    )
    caps += [a["caption"] for a in coco["annotations"]]
    caps += (rs_real / "rsitmd_captions_only/test_caps.txt").read_text(encoding="utf-8").splitlines()
    for line in (
        (rs_real / "sydney_captions/full_captions_luna97/descriptions_SIDNEY.txt").read_text().splitlines()
    ):
        caps.append(line.split(" ", 1)[1] if " " in line else line)
    return caps


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_token_ids_equal_open_clip_on_every_rs_caption(rs_real, tokenizer):
    captions = _all_captions(rs_real)
    assert len(captions) > 11_000
    ref = open_clip.get_tokenizer("ViT-B-32")(captions)
    got = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt")
    differ = (ref != got.input_ids).any(dim=1).nonzero().flatten().tolist()
    assert differ == [], [captions[i] for i in differ[:5]]
    # the attention mask covers <|startoftext|> … the first <|endoftext|>, nothing after it
    eot = (ref == tokenizer.eos_token_id).int().argmax(dim=1)
    assert torch.equal(got.attention_mask.bool(), torch.arange(77)[None] <= eot[:, None])


def test_truncation_and_special_tokens(tokenizer):
    texts = ["Airport " * 100, "a " * 75, "a " * 76, "", "  Two   TENNIS courts\n"]
    ref = open_clip.get_tokenizer("ViT-B-32")(texts)
    got = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ref, got)
    assert got[0, 0].item() == tokenizer.bos_token_id == 49406
    assert got[0, -1].item() == tokenizer.eos_token_id == 49407  # truncated: <|endoftext|> kept last
    assert tokenizer.pad_token_id == 0 and got[3, 2:].eq(0).all()


def test_clean_text_needed_only_for_entities_and_mojibake(tokenizer):
    texts = ["storage tanks &amp; a road", "a cafÃ© near the river"]
    ref = open_clip.get_tokenizer("ViT-B-32")(texts)
    raw = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    cleaned = tokenizer(
        [clean_text(t) for t in texts], padding="max_length", truncation=True, return_tensors="pt"
    )
    assert not torch.equal(ref, raw)  # what the transformers normaliser cannot do
    assert torch.equal(ref, cleaned.input_ids)


def test_processor_round_trips_offline(tmp_path, tokenizer):
    proc = build_clip_processor("ViT-B-32")
    proc.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded.tokenizer).__name__ == "CLIPTokenizer"
    text = ["a dense residential area with many houses"]
    assert loaded.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token_id == 0
    assert loaded.image_processor.crop_size == {"height": 224, "width": 224}


@pytest.mark.parametrize(("name", "size"), [("ViT-B-32", 224), ("ViT-L-14", 224), ("ViT-L-14-336", 336)])
def test_image_processor_settings(name, size):
    assert open_clip.get_model_config(name)["vision_cfg"]["image_size"] == size
    proc = build_image_processor(name)
    assert proc.size == {"shortest_edge": size} and proc.crop_size == {"height": size, "width": size}
    assert proc.resample == 3  # bicubic
    assert tuple(proc.image_mean) == open_clip.OPENAI_DATASET_MEAN
    assert tuple(proc.image_std) == open_clip.OPENAI_DATASET_STD


def test_image_processor_errors():
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Z-99'"):
        build_image_processor("ViT-Z-99")
    with pytest.raises(ValueError, match="backend must be one of"):
        build_image_processor("ViT-B-32", backend="cv2")


# Square tiles of every RS dataset here, plus non-square DOTA/DIOR scenes whose crop offsets agree.
PARITY_IMAGES = [
    "ucm_captions/images/81.tif",
    "ucm_captions/images/1091.tif",
    "rsicd/images/00721.jpg",
    "sydney_captions/images/1.tif",
    "aid_classification/Airport/airport_1.jpg",
    "detection_dota/images/P0075.png",
    "detection_dota/images/P0706.png",
    "detection_dota/images/P1888.png",
    "detection_dior/JPEGImages/00001.jpg",
]


@pytest.fixture(scope="module")
def open_clip_eval_transform():
    # the transform only: create_model_and_transforms would also build the weights
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(size=224), is_train=False)


def test_pixels_equal_open_clip_eval_transform(rs_real, open_clip_eval_transform):
    pil = build_image_processor("ViT-B-32", backend="pil")
    tv = build_image_processor("ViT-B-32")
    for rel in PARITY_IMAGES:
        image = Image.open(rs_real / rel)
        ref = open_clip_eval_transform(image)
        exact = pil(images=image, return_tensors="pt").pixel_values[0]
        assert torch.equal(exact, ref), rel  # PIL backend: bit-identical
        fast = tv(images=image.convert("RGB"), return_tensors="pt").pixel_values[0]
        assert (fast - ref).abs().max().item() <= ONE_LEVEL, rel  # torchvision resize: ≤ one 8-bit level


def test_known_one_pixel_crop_offset(rs_real, open_clip_eval_transform):
    """884×977 → 224×247: transformers crops rows 11.., torchvision round(11.5)=12.. (documented)."""
    image = Image.open(rs_real / "segmentation_isaid/train/images/P0005.png")
    ref = open_clip_eval_transform(image)
    got = build_image_processor("ViT-B-32", backend="pil")(images=image, return_tensors="pt").pixel_values[0]
    assert not torch.equal(got, ref)
    assert torch.equal(got[:, 1:, :], ref[:, :-1, :])
