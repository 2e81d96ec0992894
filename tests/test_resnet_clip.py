"""ResNet-CLIP (HQRS-CLIP RN50 / RN101): parity with open_clip's ModifiedResNet CLIP, conversion both ways,
remote code in a fresh process, zero-shot pipeline, `hqrs eval`, `hqrs train clip` (full and LoRA), `hqrs push`.

Default tests use a registered tiny open_clip ModifiedResNet (4 stages, a 2-block stage, 64 px, QuickGELU text
tower, full 49408 vocabulary) with every weight *and BatchNorm running statistic* perturbed, so a swapped
BatchNorm, convolution or projection cannot go unnoticed. ``slow`` tests repeat parity at RN50 / RN101 size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from PIL import Image  # noqa: E402

from hqrs.modeling.configuration_resnet_clip import ResNetCLIPConfig, ResNetCLIPVisionConfig  # noqa: E402
from hqrs.modeling.convert_resnet_clip import (  # noqa: E402
    build_resnet_clip_processor,
    convert_open_clip_resnet_clip,
    is_resnet_clip_name,
    resnet_clip_config_from_open_clip,
    resnet_clip_to_open_clip_state_dict,
    save_hf_resnet_clip,
)
from hqrs.modeling.key_mapping import MissingKeysError, UnmappedKeysError  # noqa: E402
from hqrs.modeling.modeling_resnet_clip import ResNetCLIPModel  # noqa: E402
from hqrs.modeling.open_clip_processing import build_image_processor  # noqa: E402

TINY = "RN-tiny-test-quickgelu"
TINY_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"layers": [1, 2, 1, 1], "width": 16, "image_size": 64, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
TOL = 1e-4
IMAGES = [
    "ucm_captions/images/81.tif",
    "ucm_captions/images/1091.tif",
    "rsicd/images/00721.jpg",
    "sydney_captions/images/1.tif",
    "detection_dota/images/P1888.png",
]
CAPTIONS = [
    "many planes are parked next to a long building .",
    "a baseball field is surrounded by green trees .",
    "some buildings and green trees are around a playground .",
    "a residential area with houses arranged neatly .",
    "two tennis courts next to a road &amp; a parking lot",
]
LABELS = ["airplane", "baseball diamond", "dense residential", "harbor"]


@pytest.fixture(scope="session")
def tiny_name(tmp_path_factory):
    """Register the tiny ModifiedResNet CLIP with open_clip (a real open_clip model, small size)."""
    folder = tmp_path_factory.mktemp("open_clip_rn_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder)
    return TINY


def _perturbed(name: str, seed: int = 0) -> torch.nn.Module:
    """open_clip's init leaves BatchNorm at 1/0 with running stats 0/1 (and zero last-BN weights): perturb all."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key != "logit_scale":
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
        for key, buf in model.named_buffers():
            if key.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
            elif key.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
            elif key.endswith("num_batches_tracked"):
                buf.fill_(1234)
    return model.eval()


def _copy(sd):
    return {k: v.clone() for k, v in sd.items()}


def _rs_pixels(rs_real, name: str) -> tuple[list[Image.Image], torch.Tensor]:
    _, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    images = [Image.open(rs_real / rel).convert("RGB") for rel in IMAGES]
    return images, torch.stack([preprocess(im) for im in images])


def _reference(oc, pixels, texts) -> dict[str, torch.Tensor]:
    tokens = open_clip.get_tokenizer("RN50")(texts)
    with torch.no_grad():
        image, text = oc.encode_image(pixels), oc.encode_text(tokens)
    logits = (
        oc.logit_scale.exp()
        * torch.nn.functional.normalize(image, dim=-1)
        @ (torch.nn.functional.normalize(text, dim=-1).T)
    )
    return {"image": image, "text": text, "tokens": tokens, "logits": logits.detach()}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _assert_parity(oc, hf, images, pixels, name):
    ref = _reference(oc, pixels, CAPTIONS)
    processor = build_resnet_clip_processor(name, hf.config)
    processor.image_processor = build_image_processor(name, backend="pil")
    from hqrs.modeling.open_clip_processing import clean_text

    inputs = processor(images=images, text=[clean_text(c) for c in CAPTIONS], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], ref["tokens"])  # open_clip's ids, padding included
    assert torch.equal(inputs["pixel_values"], pixels)  # open_clip's pixels (PIL backend)
    with torch.no_grad():
        image_out = hf.get_image_features(pixel_values=pixels)
        text_out = hf.get_text_features(input_ids=ref["tokens"])
        out = hf(**inputs)
    assert type(image_out).__name__ == type(text_out).__name__ == "BaseModelOutputWithPooling"
    diffs = {
        "image": _max_diff(image_out.pooler_output, ref["image"]),
        "text": _max_diff(text_out.pooler_output, ref["text"]),
        "logits": _max_diff(out.logits_per_image, ref["logits"]),
    }
    assert max(diffs.values()) <= TOL, diffs
    return diffs


def _assert_round_trip(oc, hf, name):
    ref = oc.state_dict()
    back = resnet_clip_to_open_clip_state_dict(hf)
    assert back.keys() == ref.keys()
    for key, value in ref.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    open_clip.create_model(name, pretrained=None).load_state_dict(back, strict=True)


@pytest.fixture(scope="module")
def oc_tiny(tiny_name):
    return _perturbed(tiny_name)


@pytest.fixture(scope="module")
def hf_tiny(oc_tiny, tiny_name):
    return convert_open_clip_resnet_clip(tiny_name, _copy(oc_tiny.state_dict()))


@pytest.fixture(scope="module")
def tiny_folder(hf_tiny, tmp_path_factory):
    return save_hf_resnet_clip(hf_tiny, None, tmp_path_factory.mktemp("rn") / "rn-tiny")


# ------------------------------------------------------------------------------------ config and conversion


def test_config_from_open_clip_names(tiny_name):
    rn50, rn101 = resnet_clip_config_from_open_clip("RN50"), resnet_clip_config_from_open_clip("RN101")
    assert rn50.vision_config.layers == [3, 4, 6, 3] and rn101.vision_config.layers == [3, 4, 23, 3]
    assert (rn50.projection_dim, rn101.projection_dim) == (1024, 512)
    assert rn50.vision_config.num_attention_heads == 32 and rn50.vision_config.grid_size == 7
    assert rn50.text_config.hidden_act == "gelu"
    assert resnet_clip_config_from_open_clip("RN50-quickgelu").text_config.hidden_act == "quick_gelu"
    forced = resnet_clip_config_from_open_clip("RN50", force_quick_gelu=True)
    assert forced.text_config.hidden_act == "quick_gelu" and forced.open_clip_force_quick_gelu
    assert (rn50.text_config.pad_token_id, rn50.text_config.eos_token_id) == (0, 49407)
    assert is_resnet_clip_name("RN50x4") and not is_resnet_clip_name("ViT-B-32")
    assert not is_resnet_clip_name("no-such-model")
    with pytest.raises(ValueError, match="'ViT-B-32' is not a ModifiedResNet CLIP"):
        resnet_clip_config_from_open_clip("ViT-B-32")
    with pytest.raises(ValueError, match="unknown open_clip architecture 'RN77'.*RN50"):
        resnet_clip_config_from_open_clip("RN77")


def test_config_errors_quote_the_bad_value():
    with pytest.raises(ValueError, match=r"layers=\[3, 4, 6\] must be 4 positive ints"):
        ResNetCLIPVisionConfig(layers=[3, 4, 6])
    with pytest.raises(ValueError, match="image_size=200 must be a multiple of 32"):
        ResNetCLIPVisionConfig(image_size=200)
    with pytest.raises(ValueError, match="head_width=48"):
        ResNetCLIPVisionConfig(head_width=48)
    with pytest.raises(ValueError, match="vision_config.projection_dim=1024 must equal projection_dim=512"):
        ResNetCLIPConfig(projection_dim=512)
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        ResNetCLIPConfig(text_config={"hidden_act": "relu"})


def test_random_init_follows_open_clip():
    config = resnet_clip_config_from_open_clip(TINY, TINY_CFG)
    model = ResNetCLIPModel(config)
    block = model.vision_model.encoder.stages[1].layers[1]
    assert torch.count_nonzero(block.layer[2].normalization.weight) == 0  # last BatchNorm of a block: zeros
    stem = model.vision_model.embedder.layers[0].normalization
    assert (
        torch.equal(stem.weight, torch.ones_like(stem.weight)) and torch.count_nonzero(stem.running_mean) == 0
    )
    pool = model.vision_model.attention_pool
    assert pool.position_embedding.std().item() == pytest.approx(512**-0.5, rel=0.1)
    assert model.logit_scale.item() == pytest.approx(2.6592)


def test_tiny_parity_and_bit_exact_round_trip(oc_tiny, hf_tiny, tiny_name, rs_real):
    images, pixels = _rs_pixels(rs_real, tiny_name)
    _assert_parity(oc_tiny, hf_tiny, images, pixels, tiny_name)
    _assert_round_trip(oc_tiny, hf_tiny, tiny_name)
    assert hf_tiny.config.text_config.hidden_act == "quick_gelu"
    names = set(hf_tiny.state_dict())
    assert "vision_model.encoder.stages.1.layers.1.layer.2.normalization.running_var" in names
    assert "vision_model.encoder.stages.1.layers.0.shortcut.convolution.weight" in names
    assert "vision_model.attention_pool.out_proj.bias" in names and "text_projection.weight" in names
    assert not hasattr(hf_tiny, "visual_projection")  # the attention pool's out_proj is the projection


def test_strict_conversion_errors(oc_tiny, tiny_name):
    sd = _copy(oc_tiny.state_dict())
    extra = {**sd, "visual.layer1.0.extra.weight": torch.zeros(1)}
    with pytest.raises(UnmappedKeysError, match=r"match no rule: visual.layer1.0.extra.weight"):
        convert_open_clip_resnet_clip(tiny_name, extra)
    missing = {k: v for k, v in sd.items() if k != "visual.attnpool.c_proj.bias"}
    with pytest.raises(
        MissingKeysError, match=r"1 missing key\(s\): vision_model.attention_pool.out_proj.bias"
    ):
        convert_open_clip_resnet_clip(tiny_name, missing)
    # weights of another ResNet size under this name: shapes are listed
    other = open_clip.model.CLIP(
        32, {**TINY_CFG["vision_cfg"], "layers": [1, 1, 1, 1], "width": 8}, TINY_CFG["text_cfg"]
    )
    with pytest.raises(MissingKeysError, match=r"wrong shape.*got \(4, 3, 3, 3\) expected \(8, 3, 3, 3\)"):
        convert_open_clip_resnet_clip(tiny_name, other.state_dict())
    vit = open_clip.model.CLIP(
        16,
        {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        TINY_CFG["text_cfg"],
    )
    with pytest.raises(ValueError, match="not an open_clip ModifiedResNet checkpoint.*looks like a ViT CLIP"):
        convert_open_clip_resnet_clip(tiny_name, vit.state_dict())
    half = {k: (v.half() if v.is_floating_point() and "conv1" in k else v) for k, v in sd.items()}
    with pytest.raises(ValueError, match="one floating-point dtype"):
        convert_open_clip_resnet_clip(tiny_name, half)


def test_wrong_image_size_is_a_clear_error(hf_tiny):
    with pytest.raises(ValueError, match=r"pixel_values has shape \(1, 3, 224, 224\); ResNet-CLIP expects"):
        hf_tiny.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match="needs pixel_values and input_ids"):
        hf_tiny(pixel_values=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"input_ids rows \[1\] have no <end_of_text> token \(id 49407\)"):
        hf_tiny.get_text_features(input_ids=torch.tensor([[49406, 320, 49407], [49406, 320, 321]]))


def test_return_dict_false_gives_tuples_like_clip(hf_tiny):
    # transformers 5 contract (CLIPModel): return_dict=False -> (last_hidden_state, pooler_output) / CLIPOutput tuple
    pixels = torch.randn(2, 3, 64, 64)
    ids = torch.tensor([[49406, 320, 49407, 0], [49406, 320, 321, 49407]])
    with torch.no_grad():
        image, image_tuple = (
            hf_tiny.get_image_features(pixel_values=pixels, return_dict=r) for r in (True, False)
        )
        text, text_tuple = (hf_tiny.get_text_features(input_ids=ids, return_dict=r) for r in (True, False))
        out, out_tuple = (hf_tiny(pixel_values=pixels, input_ids=ids, return_dict=r) for r in (True, False))
    assert isinstance(image_tuple, tuple) and torch.equal(image_tuple[1], image.pooler_output)
    assert isinstance(text_tuple, tuple) and torch.equal(text_tuple[1], text.pooler_output)
    assert isinstance(out_tuple, tuple) and torch.equal(out_tuple[0], out.logits_per_image)


def _run_convert(argv):
    from hqrs.scripts import convert as convert_cli

    parser = argparse.ArgumentParser()
    convert_cli.register(parser.add_subparsers(), [])
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


def test_cli_converts_both_ways_bit_exact(oc_tiny, tiny_name, tmp_path, capsys):
    ckpt = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in oc_tiny.state_dict().items()}}, ckpt)
    out = tmp_path / "hf"
    assert (
        _run_convert(["open-clip", "--model-name", tiny_name, "--checkpoint", str(ckpt), "--out", str(out)])
        == 0
    )
    assert "ResNetCLIPModel" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "resnet_clip" and config["open_clip_model_name"] == tiny_name
    back = tmp_path / "back.safetensors"
    assert _run_convert(["to-open-clip", str(out), "--out", str(back)]) == 0
    from safetensors.torch import load_file

    sd = load_file(back)
    ref = oc_tiny.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], v) for k, v in ref.items())
    open_clip.create_model(tiny_name, pretrained=None).load_state_dict(sd, strict=True)
    with pytest.raises(ValueError, match="not an open_clip ModifiedResNet checkpoint"):
        torch.save({"visual.proj": torch.zeros(2, 2)}, tmp_path / "vit.pt")
        _run_convert(
            [
                "open-clip",
                "--model-name",
                "RN50",
                "--checkpoint",
                str(tmp_path / "vit.pt"),
                "--out",
                str(tmp_path / "o"),
            ]
        )


# -------------------------------------------------------------------------- remote code, pipeline, eval

_FRESH_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoHqrs(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hqrs" or name.startswith("hqrs."):
                raise ImportError("hqrs is not importable in this process: " + name)

    sys.meta_path.insert(0, NoHqrs())
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, pipeline

    folder, inputs_path = sys.argv[1:3]
    given = torch.load(inputs_path, weights_only=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    images = [Image.open(p).convert("RGB") for p in given["paths"]]
    inputs = processor(images=images, text=given["texts"], return_tensors="pt")
    with torch.no_grad():
        image_out = model.get_image_features(pixel_values=given["pixels"])
        text_out = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        out = model(**inputs)
    pipe = pipeline(
        "zero-shot-image-classification",
        model=folder,
        trust_remote_code=True,
        image_processor=AutoImageProcessor.from_pretrained(folder, backend="pil"),
    )
    result = pipe(images[0], candidate_labels=given["labels"])
    torch.save({
        "image": image_out.pooler_output,
        "text": text_out.pooler_output,
        "processor_pixels": inputs["pixel_values"],
        "input_ids": inputs["input_ids"],
        "logits_per_image": out.logits_per_image,
    }, inputs_path + ".out")
    print(json.dumps({
        "model_module": type(model).__module__,
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "output_class": type(image_out).__name__,
        "pipeline": {r["label"]: r["score"] for r in result},
        "hqrs_loaded": any(m == "hqrs" or m.startswith("hqrs.") for m in sys.modules),
    }))
    """
)


def test_saved_folder_in_fresh_process_without_hqrs(oc_tiny, tiny_folder, tiny_name, rs_real, tmp_path):
    """AutoModel/AutoProcessor/pipeline from the saved folder, hqrs not importable; numbers against open_clip."""
    folder = tiny_folder
    names = {p.name for p in folder.iterdir()}
    code = {"configuration_resnet_clip.py", "modeling_resnet_clip.py", "processing_resnet_clip.py"}
    assert code | {"config.json", "model.safetensors", "processor_config.json"} <= names
    for name in code:
        assert not re.search(r"^\s*(from|import)\s+hqrs", (folder / name).read_text(), re.MULTILINE), name
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_resnet_clip.ResNetCLIPModel"

    images, pixels = _rs_pixels(rs_real, tiny_name)
    texts = CAPTIONS[:4]
    ref = _reference(oc_tiny, pixels, texts)
    prompts = [f"This is a photo of {label}." for label in LABELS]
    scores = _reference(oc_tiny, pixels[:1], prompts)["logits"].softmax(dim=-1)[0]
    given = {
        "paths": [str(rs_real / rel) for rel in IMAGES],
        "texts": texts,
        "labels": LABELS,
        "pixels": pixels,
    }
    torch.save(given, tmp_path / "inputs.pt")
    (tmp_path / "fresh.py").write_text(_FRESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "fresh.py"), str(folder), str(tmp_path / "inputs.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model_module"].startswith("transformers_modules.") and not result["hqrs_loaded"]
    assert (result["model_class"], result["processor_class"]) == ("ResNetCLIPModel", "ResNetCLIPProcessor")
    assert result["output_class"] == "BaseModelOutputWithPooling"
    got = torch.load(tmp_path / "inputs.pt.out", weights_only=True)
    assert torch.equal(got["input_ids"], ref["tokens"])
    assert _max_diff(got["image"], ref["image"]) <= TOL
    assert _max_diff(got["text"], ref["text"]) <= TOL
    # the saved processor's default (torchvision) resize is within one 8-bit level of open_clip's pixels
    assert _max_diff(got["processor_pixels"], pixels) <= 0.02
    assert got["logits_per_image"].shape == (len(IMAGES), len(texts))
    for label, value in zip(LABELS, scores.tolist()):
        assert abs(result["pipeline"][label] - value) <= TOL, (label, result["pipeline"])


def test_hqrs_eval_zeroshot_and_retrieval(tiny_folder, rs_real, tmp_path):
    from hqrs.scripts import eval as eval_cmd

    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers(), [])
    common = ["--model", str(tiny_folder), "--trust-remote-code", "--num-workers", "0"]
    zs = tmp_path / "zs.json"
    args = parser.parse_args(
        ["eval", "zeroshot", *common, "--dataset", str(rs_real / "aid_classification"), "--out", str(zs)]
    )
    assert args.func(args) == 0
    result = json.loads(zs.read_text())
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert result["model"]["class"] == "ResNetCLIPModel"
    assert torch.tensor(result["details"]["confusion_matrix"]).sum() == 150
    assert 0 <= metrics["top1_accuracy"] <= metrics["top5_accuracy"] <= 100
    ret = tmp_path / "ret.json"
    args = parser.parse_args(
        [
            "eval",
            "retrieval",
            *common,
            "--karpathy",
            str(rs_real / "ucm_captions/dataset_ucm_subset.json"),
            "--images",
            str(rs_real / "ucm_captions/images"),
            "--split",
            "test",
            "--out",
            str(ret),
        ]
    )
    assert args.func(args) == 0
    m = {x["type"]: x["value"] for x in json.loads(ret.read_text())["metrics"]}
    assert m["image_to_text_R@1"] <= m["image_to_text_R@5"] <= m["image_to_text_R@10"] <= 100


# ----------------------------------------------------------------------------------------- train, push


@pytest.fixture(scope="module")
def ucm_data(tmp_path_factory, rs_real):
    import train_fixtures as tf

    pairs = tf.ucm_pairs(rs_real, 8)
    return tf.write_builder_layout(tmp_path_factory.mktemp("rn_data"), {"pairs": {"train": pairs}})


TRAIN_ARGS = dict(
    report_to=[], use_cpu=True, disable_tqdm=True, seed=3, learning_rate=5e-2, warmup_steps=0,
    per_device_train_batch_size=8, max_steps=2, save_strategy="no",
)  # fmt: skip


def _bn_stats(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def test_train_clip_full_and_lora(tiny_folder, ucm_data, tmp_path, rs_real):
    from peft import PeftModel

    from hqrs.modeling.training import build_trainer
    from hqrs.modeling.training_lora import merge_lora

    # full fine-tuning: BatchNorm trains (batch statistics, running stats updated) as in open_clip
    full = build_trainer(
        "clip", tiny_folder, ucm_data, output_dir=tmp_path / "full", training_args=TRAIN_ARGS
    )
    assert isinstance(full.model, ResNetCLIPModel)
    before = _bn_stats(full.model)
    full.train()
    full.save_model()
    assert any(not torch.equal(before[k], v) for k, v in _bn_stats(full.model).items())
    names = {p.name for p in (tmp_path / "full").iterdir()}
    assert {"modeling_resnet_clip.py", "configuration_resnet_clip.py", "model.safetensors"} <= names
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(tmp_path / "full", trust_remote_code=True)
    assert all(torch.equal(v, full.model.state_dict()[k]) for k, v in reloaded.state_dict().items())

    # LoRA: adapters on the attention pool's q/k/v/out projections and the text tower; frozen BatchNorm
    lora_dir = tmp_path / "lora"
    lora = build_trainer(
        "clip",
        tiny_folder,
        ucm_data,
        output_dir=lora_dir,
        lora={"lora_r": 4, "lora_alpha": 8},
        training_args=TRAIN_ARGS,
    )
    peft_model = lora.model
    assert isinstance(peft_model, PeftModel)
    adapted = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert any(n.endswith(f"vision_model.attention_pool.{proj}") for n in adapted), proj
    assert any("text_model.encoder.layers.1.mlp.fc2" in n for n in adapted)
    assert not any("embedder" in n or "stages" in n for n in adapted)  # convolutions stay frozen
    before = _bn_stats(peft_model.get_base_model())
    lora.train()
    lora.save_model()
    after = _bn_stats(peft_model.get_base_model())
    assert all(torch.equal(before[k], v) for k, v in after.items())  # frozen BatchNorm keeps its statistics
    merged = AutoModel.from_pretrained(
        merge_lora(lora_dir, tmp_path / "merged"), trust_remote_code=True
    ).eval()
    images, _ = _rs_pixels(rs_real, TINY)
    inputs = build_resnet_clip_processor(TINY, merged.config)(
        images=images[:2], text=CAPTIONS[:2], return_tensors="pt"
    )
    peft_model.eval()
    with torch.no_grad():
        expected, got = peft_model(**inputs), merged(**inputs)
        base = AutoModel.from_pretrained(tiny_folder, trust_remote_code=True).eval()(**inputs)
    torch.testing.assert_close(got.image_embeds, expected.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, atol=1e-5, rtol=1e-4)
    assert _max_diff(base.image_embeds, expected.image_embeds) > 1e-4  # the adapters changed the model


def test_push_model_dry_run_ships_the_package_remote_code(tiny_folder, tmp_path, rs_real):
    from huggingface_hub import ModelCard

    from hqrs.hub_cards import push as hub_push

    out = tmp_path / "stage"
    plan = hub_push.stage_model(tiny_folder, out, "hqrs-test/tiny-rn50")
    staged = {f.path_in_repo for f in plan.files}
    assert {"configuration_resnet_clip.py", "modeling_resnet_clip.py", "processing_resnet_clip.py"} <= staged
    card = ModelCard.load(out / "README.md")
    assert (
        card.data.pipeline_tag == "zero-shot-image-classification" and "trust_remote_code=True" in card.text
    )
    # the card's usage snippet runs against the staged folder, in a fresh process, offline
    snippet = re.search(r"```python\n(.*?)```", card.text, flags=re.S).group(1)
    workdir = tmp_path / "user"
    workdir.mkdir()
    Image.open(rs_real / IMAGES[0]).convert("RGB").save(workdir / "scene.jpg")
    (workdir / "snippet.py").write_text(snippet.replace("hqrs-test/tiny-rn50", str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    res = subprocess.run([sys.executable, "snippet.py"], cwd=workdir, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'label': 'airport'" in res.stdout
    with open(out / "modeling_resnet_clip.py", "a") as f:
        f.write("\n# edited by hand\n")
    with pytest.raises(ValueError, match="remote code differs from hqrs.modeling/modeling_resnet_clip.py"):
        hub_push.check_folder(out, "model")


# ------------------------------------------------------------------------------------------ full sizes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["RN50", "RN101"])
def test_full_size_parity_and_round_trip(rs_real, name):
    oc = _perturbed(name)
    hf = convert_open_clip_resnet_clip(name, _copy(oc.state_dict()))
    images, pixels = _rs_pixels(rs_real, name)
    diffs = _assert_parity(oc, hf, images, pixels, name)
    _assert_round_trip(oc, hf, name)
    print(f"{name} parity max |diff|: {diffs}")
