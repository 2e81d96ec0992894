"""ViT-H-14 and ViT-bigG-14 in the HQRS-CLIP conversion (#17.2).

What sets them apart from B/L: head widths 80 / 104 (not 64) and, for bigG, a non-integer ``mlp_ratio``
(4.9231 -> ``int(1664 * 4.9231) = 8192``). CI checks the full-size key tables on the meta device (every key
and shape, no memory) and exact parity on tiny architectures with the same features; the full-size parity
runs with ``--run-slow``.
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from transformers import CLIPModel

from hqrs.modeling.convert_clip import (
    OPEN_CLIP_TO_HF_CLIP,
    clip_config_from_open_clip,
    clip_to_open_clip_state_dict,
    convert_open_clip_clip,
)
from hqrs.modeling.key_mapping import check_complete
from hqrs.modeling.open_clip_processing import build_clip_processor, build_image_processor
from tests.test_clip_conversion import _assert_parity, _assert_round_trip, _rs_batch, _seeded

BIG = ["ViT-H-14", "ViT-H-14-quickgelu", "ViT-H-14-378-quickgelu", "ViT-bigG-14", "ViT-g-14"]
TINY_H = "hqrs-test-tiny-vit-h"  # head_width 80 like ViT-H-14
TINY_BIGG = "hqrs-test-tiny-vit-bigg"  # head_width 104 and mlp_ratio 4.9231 like ViT-bigG-14


@pytest.fixture(scope="module")
def tiny_big_names(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_big_configs")
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    configs = {
        TINY_H: {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 160, "head_width": 80, "patch_size": 16},
            "text_cfg": text,
        },
        TINY_BIGG: {
            "embed_dim": 40,
            "vision_cfg": {
                "image_size": 32,
                "layers": 2,
                "width": 208,
                "head_width": 104,
                "mlp_ratio": 4.9231,
                "patch_size": 16,
            },
            "text_cfg": dict(text, width=80, heads=2, mlp_ratio=4.9231),
        },
    }
    for name, cfg in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return list(configs)


@pytest.mark.parametrize("name", BIG)
def test_config_numbers_of_big_vits(name):
    oc_cfg = open_clip.get_model_config(name)
    vision, text = oc_cfg["vision_cfg"], oc_cfg["text_cfg"]
    cfg = clip_config_from_open_clip(name)
    v, t = cfg.vision_config, cfg.text_config
    assert v.num_attention_heads == vision["width"] // vision["head_width"]
    assert v.intermediate_size == int(vision["width"] * vision.get("mlp_ratio", 4.0))
    assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size) == (
        vision["width"],
        vision["layers"],
        vision["patch_size"],
        vision["image_size"],
    )
    assert (t.hidden_size, t.num_attention_heads, t.num_hidden_layers) == (
        text["width"],
        text["heads"],
        text["layers"],
    )
    assert cfg.projection_dim == oc_cfg["embed_dim"]


@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-bigG-14"])
def test_full_size_key_table_on_meta_device(name):
    """Every open_clip key maps, to exactly the CLIPModel's keys and shapes, and back (no weights built)."""
    with torch.device("meta"):
        oc_state = open_clip.create_model(name, pretrained=None, device="meta").state_dict()
        hf_shapes = {
            k: tuple(v.shape) for k, v in CLIPModel(clip_config_from_open_clip(name)).state_dict().items()
        }
    converted = OPEN_CLIP_TO_HF_CLIP.convert(oc_state)
    check_complete(converted, hf_shapes, context=f"{name} -> CLIPModel")
    back = OPEN_CLIP_TO_HF_CLIP.inverted().convert(converted)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in oc_state.items()}


def test_tiny_h_and_bigg_parity_and_round_trip(rs_real, tiny_big_names):
    for name in tiny_big_names:
        oc = _seeded(name)
        hf = convert_open_clip_clip(name, oc.state_dict())
        images, captions, pixels = _rs_batch(rs_real, 32)
        proc = build_clip_processor(name)
        proc.image_processor = build_image_processor(name, backend="pil")
        _assert_parity(oc, hf, images, captions, pixels, proc)
        _assert_round_trip(oc, hf, name)
        assert clip_to_open_clip_state_dict(hf).keys() == oc.state_dict().keys()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-H-14-quickgelu"])
def test_full_size_vit_h_parity_and_round_trip(rs_real, name):
    oc = _seeded(name)
    hf = convert_open_clip_clip(name, oc.state_dict())
    images, captions, pixels = _rs_batch(rs_real, hf.config.vision_config.image_size)
    proc = build_clip_processor(name)
    proc.image_processor = build_image_processor(name, backend="pil")
    _assert_parity(oc, hf, images, captions, pixels, proc)
    _assert_round_trip(oc, hf, name)
