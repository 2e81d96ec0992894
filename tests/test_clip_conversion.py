"""HQRS-CLIP: open_clip ViT CLIP ↔ transformers CLIPModel, parity on real RS data, CLI, errors."""

from __future__ import annotations

import argparse
import json

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoProcessor, CLIPModel, pipeline

from hqrs.modeling.convert_clip import (
    clip_config_from_open_clip,
    clip_to_open_clip_state_dict,
    convert_open_clip_clip,
    save_hf_clip,
)
from hqrs.modeling.key_mapping import MissingKeysError, UnmappedKeysError
from hqrs.modeling.open_clip_processing import build_clip_processor, build_image_processor
from hqrs.scripts import convert as convert_cli

TOL = 1e-4
TINY = "hqrs-test-tiny-vit"
TINY_QG = "hqrs-test-tiny-vit-quickgelu"

# (image, caption source) pairs: UCM tiles (tif), RSICD (jpg), Sydney (500² tif), DOTA (non-square png)
PAIRS = [
    ("ucm_captions/images/81.tif", "ucm"),
    ("ucm_captions/images/1091.tif", "ucm"),
    ("rsicd/images/00721.jpg", "rsicd"),
    ("sydney_captions/images/1.tif", "sydney"),
    ("detection_dota/images/P1888.png", None),
]


@pytest.fixture(scope="session")
def tiny_names(tmp_path_factory):
    """Register two tiny ViT CLIP architectures with open_clip (real open_clip models, small sizes)."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY}.json").write_text(json.dumps(cfg))
    (folder / f"{TINY_QG}.json").write_text(json.dumps({**cfg, "quick_gelu": True}))
    open_clip.add_model_config(folder)
    return TINY, TINY_QG


def _seeded(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    # random init leaves biases/LN at 0/1: perturb everything so a swapped weight cannot go unnoticed
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _rs_batch(rs_real, preprocess_size: int):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    transform = image_transform_v2(PreprocessCfg(size=preprocess_size), is_train=False)
    captions_by_file = {}
    for rel in (
        "ucm_captions/dataset_ucm_subset.json",
        "rsicd/dataset_rsicd_subset.json",
        "sydney_captions/dataset_sydney_subset.json",
    ):
        for entry in json.loads((rs_real / rel).read_text(encoding="utf-8"))["images"]:
            captions_by_file[entry["filename"]] = entry["sentences"][0]["raw"]
    images = [Image.open(rs_real / rel) for rel, _ in PAIRS]
    captions = [
        captions_by_file.get(rel.rsplit("/", 1)[1], "many vehicles are parked in a lot") for rel, _ in PAIRS
    ]
    return images, captions, torch.stack([transform(im) for im in images])


def _assert_parity(oc_model, hf_model, images, captions, pixels, processor):
    tokens = open_clip.get_tokenizer("ViT-B-32")(captions)
    hf_inputs = processor(
        text=captions, images=images, padding="max_length", truncation=True, return_tensors="pt"
    )
    assert torch.equal(hf_inputs.input_ids, tokens)  # same token ids
    assert torch.equal(hf_inputs.pixel_values, pixels)  # same pixels (PIL backend)
    with torch.no_grad():
        img_ref, txt_ref = oc_model.encode_image(pixels), oc_model.encode_text(tokens)
        logits_ref = (
            oc_model.logit_scale.exp()
            * torch.nn.functional.normalize(img_ref, dim=-1)
            @ (torch.nn.functional.normalize(txt_ref, dim=-1).T)
        )
        out = hf_model(**hf_inputs)
        img = hf_model.get_image_features(pixel_values=pixels)
        txt = hf_model.get_text_features(input_ids=tokens)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    assert (img - img_ref).abs().max().item() <= TOL
    assert (txt - txt_ref).abs().max().item() <= TOL
    assert (out.logits_per_image - logits_ref).abs().max().item() <= TOL
    assert (out.logits_per_text - logits_ref.T).abs().max().item() <= TOL


def _assert_round_trip(oc_model, hf_model, name):
    ref = oc_model.state_dict()
    back = clip_to_open_clip_state_dict(hf_model)
    assert back.keys() == ref.keys()
    for key, value in ref.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    fresh = open_clip.create_model(name, pretrained=None)
    fresh.load_state_dict(back, strict=True)


def test_tiny_quickgelu_parity_and_round_trip(rs_real, tiny_names):
    oc = _seeded(TINY_QG)
    hf = convert_open_clip_clip(TINY_QG, oc.state_dict())
    assert hf.config.text_config.hidden_act == hf.config.vision_config.hidden_act == "quick_gelu"
    images, captions, pixels = _rs_batch(rs_real, 32)
    proc = build_clip_processor(TINY_QG)
    proc.image_processor = build_image_processor(TINY_QG, backend="pil")
    _assert_parity(oc, hf, images, captions, pixels, proc)
    _assert_round_trip(oc, hf, TINY_QG)
    # force_quick_gelu on the plain name is the same model
    forced = convert_open_clip_clip(TINY, oc.state_dict(), force_quick_gelu=True)
    assert forced.config.vision_config.hidden_act == "quick_gelu"
    assert forced.config.open_clip_force_quick_gelu is True


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-L-14-quickgelu"])
def test_config_numbers_come_from_open_clip(name):
    oc_cfg = open_clip.get_model_config(name)
    cfg = clip_config_from_open_clip(name)
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size) == (
        oc_cfg["vision_cfg"]["width"],
        oc_cfg["vision_cfg"]["layers"],
        oc_cfg["vision_cfg"]["patch_size"],
        oc_cfg["vision_cfg"]["image_size"],
    )
    assert v.num_attention_heads == v.hidden_size // 64 and v.intermediate_size == 4 * v.hidden_size
    assert (t.hidden_size, t.num_attention_heads, t.num_hidden_layers) == (
        oc_cfg["text_cfg"]["width"],
        oc_cfg["text_cfg"]["heads"],
        oc_cfg["text_cfg"]["layers"],
    )
    assert cfg.projection_dim == oc_cfg["embed_dim"]
    assert v.hidden_act == ("quick_gelu" if oc_cfg.get("quick_gelu") else "gelu")
    assert cfg.open_clip_model_name == name


@pytest.mark.parametrize("name", ["RN50", "RN50-quickgelu", "RN101"])
def test_modified_resnet_names_are_refused(name):
    with pytest.raises(ValueError, match="ModifiedResNet .*transformers has no ModifiedResNet CLIP"):
        clip_config_from_open_clip(name)


def test_other_unsupported_names():
    with pytest.raises(ValueError, match="CoCa architecture"):
        clip_config_from_open_clip("coca_ViT-B-32")
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Q-7'"):
        clip_config_from_open_clip("ViT-Q-7")
    with pytest.raises(ValueError, match="timm_model_name"):
        clip_config_from_open_clip("convnext_base")  # timm vision tower
    with pytest.raises(ValueError, match="init_logit_bias"):
        clip_config_from_open_clip("ViT-B-16-SigLIP")  # sigmoid loss bias: no CLIPModel field


def test_modified_resnet_weights_under_a_vit_name(tiny_names):
    rn = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg={"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "head_width": 8},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    with pytest.raises(ValueError, match="ModifiedResNet"):
        convert_open_clip_clip(TINY, rn.state_dict())


def test_unmapped_key_is_listed(tiny_names):
    sd = _seeded(TINY).state_dict()
    sd["visual.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(UnmappedKeysError, match=r"1 source key\(s\) match no rule: visual.extra_head.weight"):
        convert_open_clip_clip(TINY, sd)


def test_wrong_architecture_names_keys_and_fitting_names(tiny_names):
    sd = _seeded(TINY).state_dict()
    with pytest.raises(MissingKeysError) as info:
        convert_open_clip_clip("ViT-B-32", sd)
    msg = str(info.value)
    assert "does not fit open_clip 'ViT-B-32'" in msg
    assert "vision width 32, patch 8, 2 layers" in msg
    assert f"it fits: {TINY}, {TINY_QG}" in msg
    assert "vision_model.encoder.layers.11.mlp.fc1.weight" in " ".join(info.value.missing)
    assert any(
        m.startswith("vision_model.embeddings.patch_embedding.weight: got (32, 3, 8, 8)")
        for m in info.value.mismatched
    )


def test_derived_buffers_in_old_checkpoints_are_dropped(tiny_names):
    oc = _seeded(TINY)
    sd = {**oc.state_dict(), "attn_mask": oc.attn_mask}
    hf = convert_open_clip_clip(TINY, sd)
    assert clip_to_open_clip_state_dict(hf).keys() == oc.state_dict().keys()


# ------------------------------------------------------------------------------------------ folder, CLI


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    convert_cli.register(parser.add_subparsers(), [])
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def tiny_folder(tiny_names, tmp_path_factory):
    """open_clip_train-style checkpoint (module. prefixes, epoch, optimizer) converted by the CLI."""
    tmp = tmp_path_factory.mktemp("tiny_clip")
    oc = _seeded(TINY_QG)
    ckpt = tmp / "epoch_2.pt"
    torch.save(
        {
            "epoch": 2,
            "name": "hqrs",
            "state_dict": {f"module.{k}": v for k, v in oc.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": []},
        },
        ckpt,
    )
    out = tmp / "hf"
    assert _run_cli(["open-clip", "--model-name", TINY_QG, "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return oc, out


def test_cli_folder_loads_offline_with_auto_classes(tiny_folder):
    oc, folder = tiny_folder
    assert (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "clip" and config["open_clip_model_name"] == TINY_QG
    model = CLIPModel.from_pretrained(folder)
    _assert_round_trip(oc, model, TINY_QG)
    proc = AutoProcessor.from_pretrained(folder)
    assert proc.tokenizer.pad_token_id == 0 and proc.image_processor.crop_size == {"height": 32, "width": 32}


def test_zero_shot_pipeline_on_converted_folder(rs_real, tiny_folder):
    oc, folder = tiny_folder
    image = Image.open(rs_real / "ucm_captions/images/81.tif")
    labels = ["airplane", "beach", "dense residential", "harbor"]
    default = pipeline("zero-shot-image-classification", model=str(folder))
    out = default(image, candidate_labels=labels)
    assert sorted(r["label"] for r in out) == sorted(labels)
    # with PIL resizing (bit-exact pixels) the scores equal open_clip's softmax over the prompts
    exact = pipeline(
        "zero-shot-image-classification",
        model=str(folder),
        image_processor=AutoImageProcessor.from_pretrained(folder, backend="pil"),
    )
    scores = {r["label"]: r["score"] for r in exact(image, candidate_labels=labels)}
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pixels = image_transform_v2(PreprocessCfg(size=32), is_train=False)(image)[None]
    tokens = open_clip.get_tokenizer("ViT-B-32")([f"This is a photo of {label}." for label in labels])
    with torch.no_grad():
        img = torch.nn.functional.normalize(oc.encode_image(pixels), dim=-1)
        txt = torch.nn.functional.normalize(oc.encode_text(tokens), dim=-1)
        ref = (oc.logit_scale.exp() * img @ txt.T).softmax(dim=-1)[0]
    for label, value in zip(labels, ref.tolist()):
        assert abs(scores[label] - value) <= TOL


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_cli_back_to_open_clip_strict(tiny_folder, tmp_path, fmt):
    oc, folder = tiny_folder
    out = tmp_path / f"back.{fmt}"
    assert _run_cli(["to-open-clip", str(folder), "--out", str(out)]) == 0
    sd = load_file(out) if fmt == "safetensors" else torch.load(out, weights_only=True)
    fresh = open_clip.create_model(TINY_QG, pretrained=None)
    fresh.load_state_dict(sd, strict=True)
    assert all(torch.equal(sd[k], v) for k, v in oc.state_dict().items())


def test_cli_errors(tiny_folder, tmp_path):
    oc, folder = tiny_folder
    with pytest.raises(ValueError, match="is not empty"):
        _run_cli(["open-clip", "--model-name", TINY, "--checkpoint", "x.pt", "--out", str(folder)])
    bad = tmp_path / "cut.pt"
    torch.save(oc.state_dict(), tmp_path / "full.pt")
    bad.write_bytes((tmp_path / "full.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        _run_cli(["open-clip", "--model-name", TINY, "--checkpoint", str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="ModifiedResNet"):
        _run_cli(
            [
                "open-clip",
                "--model-name",
                "RN50",
                "--checkpoint",
                str(tmp_path / "full.pt"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        _run_cli(["to-open-clip", str(tmp_path / "other"), "--out", str(tmp_path / "x.safetensors")])


def test_save_hf_clip_needs_a_name_or_processor(tiny_names, tmp_path):
    hf = convert_open_clip_clip(TINY, _seeded(TINY).state_dict())
    del hf.config.open_clip_model_name
    with pytest.raises(ValueError, match="needs model.config.open_clip_model_name"):
        save_hf_clip(hf, None, tmp_path)


# ------------------------------------------------------------------------------------------ full sizes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"])
def test_full_size_parity_and_round_trip(rs_real, name):
    oc = _seeded(name)
    hf = convert_open_clip_clip(name, oc.state_dict())
    size = hf.config.vision_config.image_size
    images, captions, pixels = _rs_batch(rs_real, size)
    proc = build_clip_processor(name)
    proc.image_processor = build_image_processor(name, backend="pil")
    _assert_parity(oc, hf, images, captions, pixels, proc)
    _assert_round_trip(oc, hf, name)
    assert hf.config.vision_config.hidden_act == ("quick_gelu" if name.endswith("quickgelu") else "gelu")


@pytest.mark.slow
def test_cli_dispatches_coca_names_and_folders(tmp_path):
    """`coca_*` names and `model_type == "rs_coca"` folders go to hqrs.modeling.convert_rs_coca."""
    torch.manual_seed(0)
    coca = open_clip.create_model("coca_ViT-B-32", pretrained=None)
    torch.nn.init.normal_(coca.text_decoder.text_projection, std=0.02)  # open_clip leaves it torch.empty
    ref = coca.state_dict()
    torch.save(ref, tmp_path / "coca.pt")
    out = tmp_path / "coca_hf"
    assert (
        _run_cli(
            [
                "open-clip",
                "--model-name",
                "coca_ViT-B-32",
                "--checkpoint",
                str(tmp_path / "coca.pt"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["model_type"] == "rs_coca"
    assert _run_cli(["to-open-clip", str(out), "--out", str(tmp_path / "back.safetensors")]) == 0
    back = load_file(tmp_path / "back.safetensors")
    assert back.keys() == ref.keys() and all(torch.equal(back[k], v) for k, v in ref.items())
