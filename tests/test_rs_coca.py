"""RS-CoCa: parity with open_clip's CoCa, conversion both ways, generation, remote code, pipeline, LoRA.

Default tests use a scaled-down open_clip CoCa (same code paths as coca_ViT-B-32: separate q/k/v pooler
weights, 76-token context, full 49408 vocabulary) with every weight perturbed so that a swapped LayerNorm or
projection cannot go unnoticed. ``slow`` tests repeat parity at coca_ViT-B-32 size.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from open_clip.coca_model import CoCa  # noqa: E402
from PIL import Image  # noqa: E402

from hqrs.modeling.configuration_rs_coca import RSCoCaConfig  # noqa: E402
from hqrs.modeling.convert_rs_coca import (  # noqa: E402
    coca_config_from_open_clip,
    coca_to_open_clip_state_dict,
    convert_open_clip_coca,
    save_hf_coca,
)
from hqrs.modeling.key_mapping import MissingKeysError, UnmappedKeysError  # noqa: E402
from hqrs.modeling.modeling_rs_coca import RSCoCaModel  # noqa: E402
from hqrs.modeling.open_clip_processing import build_image_processor, build_tokenizer  # noqa: E402
from hqrs.modeling.processing_rs_coca import RSCoCaProcessor  # noqa: E402

TINY_NAME = "coca_tiny_test"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 224,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 32,
        "attentional_pool": True,
        "attn_pooler_heads": 4,
        "attn_pooler_queries": 16,
        "output_tokens": True,
    },
    "text_cfg": {
        "context_length": 76,
        "vocab_size": 49408,
        "width": 32,
        "heads": 4,
        "layers": 2,
        "embed_cls": True,
        "output_tokens": True,
    },
    "multimodal_cfg": {
        "context_length": 76,
        "vocab_size": 49408,
        "width": 32,
        "heads": 4,
        "layers": 2,
        "attn_pooler_heads": 4,
    },
}
SOT, EOT, PAD = 49406, 49407, 0
TOL = 1e-4


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """open_clip's random init leaves LayerNorms at 1/0 and biases at 0: make every weight distinct."""
    gen = torch.Generator().manual_seed(seed)
    # open_clip's MultimodalTransformer creates `text_projection` with torch.empty and never initialises it
    # (its init_parameters() is not called, and fails on open_clip 3.3): without this the decoder projection
    # is whatever memory held (NaN / 1e35 in a long-lived test worker). Initialise it as that method means to.
    decoder = model.text_decoder
    torch.nn.init.normal_(decoder.text_projection, std=decoder.width**-0.5, generator=gen)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "logit_scale":
                continue
            noise = torch.randn(param.shape, generator=gen)
            if ".ln" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.add_(0.05 * noise)
    return model.eval()


def _open_clip_tiny(seed: int = 0) -> CoCa:
    torch.manual_seed(seed)
    model = CoCa(
        TINY_CFG["embed_dim"], TINY_CFG["multimodal_cfg"], TINY_CFG["text_cfg"], TINY_CFG["vision_cfg"]
    )
    return _perturb(model, seed)


def _open_clip_greedy(oc: CoCa, pixel_values: torch.Tensor, max_length: int) -> torch.Tensor:
    """Cache-less greedy decoding on open_clip's own forward (the full prefix at every step)."""
    image_latent, image_embs = oc._encode_image(pixel_values)
    seq = torch.full((pixel_values.shape[0], 1), SOT)
    done = torch.zeros(pixel_values.shape[0], dtype=torch.bool)
    while seq.shape[1] < max_length and not done.all():
        logits = oc(pixel_values, seq, image_latent=image_latent, image_embs=image_embs, output_labels=False)
        nxt = torch.where(done, torch.tensor(PAD), logits["logits"][:, -1].argmax(-1))
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        done |= nxt == EOT
    return seq


@pytest.fixture(scope="module")
def oc_tiny() -> CoCa:
    return _open_clip_tiny()


@pytest.fixture(scope="module")
def hf_tiny(oc_tiny) -> RSCoCaModel:
    return convert_open_clip_coca(TINY_NAME, oc_tiny.state_dict(), model_cfg=TINY_CFG)


@pytest.fixture(scope="module")
def processor() -> RSCoCaProcessor:
    return RSCoCaProcessor(build_image_processor("coca_ViT-B-32"), build_tokenizer(model_max_length=76))


@pytest.fixture(scope="module")
def rs_batch(rs_real):
    """4 UCM-Captions images (different classes) with a human caption each, and 2 RSICD captions."""
    data = json.loads((rs_real / "ucm_captions" / "dataset_ucm_subset.json").read_text())
    picked = data["images"][::16][:4]
    images = [
        Image.open(rs_real / "ucm_captions" / "images" / im["filename"]).convert("RGB") for im in picked
    ]
    captions = [im["sentences"][0]["raw"] for im in picked]
    return images, captions


@pytest.fixture(scope="module")
def rs_inputs(processor, rs_batch):
    images, captions = rs_batch
    return processor(images=images, text=captions, return_tensors="pt")


# ---------------------------------------------------------------------------------------------- parity


def test_processor_ids_equal_open_clip_coca_tokenizer(processor, rs_real):
    data = json.loads((rs_real / "rsicd" / "dataset_rsicd_subset.json").read_text())
    captions = [s["raw"] for im in data["images"][:20] for s in im["sentences"]]
    ours = processor(text=captions, return_tensors="pt")["input_ids"]
    theirs = open_clip.get_tokenizer("coca_ViT-B-32")(captions)
    assert ours.shape == theirs.shape == (len(captions), 76)
    assert torch.equal(ours, theirs)


def test_contrastive_and_caption_parity(oc_tiny, hf_tiny, rs_inputs):
    pixel_values, input_ids = rs_inputs["pixel_values"], rs_inputs["input_ids"]
    assert (input_ids == PAD).any(), "captions should be padded so that the padding mask is exercised"
    with torch.no_grad():
        out = hf_tiny(**rs_inputs)
        ref = oc_tiny(pixel_values, input_ids)
        image_ref = oc_tiny.encode_image(pixel_values)
        text_ref = oc_tiny.encode_text(input_ids)
        image_raw = oc_tiny.encode_image(pixel_values, normalize=False)
    logits_per_image_ref = oc_tiny.logit_scale.exp() * image_ref @ text_ref.t()
    assert (out.image_embeds - image_ref).abs().max() <= TOL
    assert (out.text_embeds - text_ref).abs().max() <= TOL
    assert (out.logits_per_image - logits_per_image_ref).abs().max() <= TOL
    assert torch.equal(out.logits_per_text, out.logits_per_image.t())
    # teacher-forced caption logits: our position i predicts token i + 1 like open_clip's logits[:, i]
    assert out.logits.shape == (4, 76, 49408)
    assert (out.logits[:, :-1] - ref["logits"]).abs().max() <= TOL
    with torch.no_grad():
        features = hf_tiny.get_image_features(pixel_values)
    assert (features.pooler_output - image_raw).abs().max() <= TOL


def test_feature_outputs_follow_the_transformers_5_contract(oc_tiny, hf_tiny, rs_inputs):
    # as CLIPModel in transformers 5: BaseModelOutputWithPooling whose pooler_output is the projected embedding,
    # and return_dict=False gives the tuple (last_hidden_state, pooler_output)
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pixel_values, input_ids = rs_inputs["pixel_values"], rs_inputs["input_ids"]
    mask = rs_inputs["attention_mask"]
    with torch.no_grad():
        image = hf_tiny.get_image_features(pixel_values=pixel_values)
        text = hf_tiny.get_text_features(input_ids=input_ids, attention_mask=mask)
        image_tuple = hf_tiny.get_image_features(pixel_values=pixel_values, return_dict=False)
        text_tuple = hf_tiny.get_text_features(input_ids=input_ids, attention_mask=mask, return_dict=False)
        out_tuple = hf_tiny(**rs_inputs, return_dict=False)
        out = hf_tiny(**rs_inputs)
        image_ref = oc_tiny.encode_image(pixel_values, normalize=False)
        text_ref = oc_tiny.encode_text(input_ids, normalize=False)
    assert type(image) is BaseModelOutputWithPooling and type(text) is BaseModelOutputWithPooling
    assert image.pooler_output.shape == text.pooler_output.shape == (4, hf_tiny.config.projection_dim)
    assert (image.pooler_output - image_ref).abs().max() <= TOL
    assert (text.pooler_output - text_ref).abs().max() <= TOL
    n_patches = (hf_tiny.config.vision_config.image_size // hf_tiny.config.vision_config.patch_size) ** 2
    assert image.last_hidden_state.shape == (4, 1 + n_patches, hf_tiny.config.vision_config.hidden_size)
    assert text.last_hidden_state.shape == (4, input_ids.shape[1] + 1, hf_tiny.config.text_config.hidden_size)
    assert isinstance(image_tuple, tuple) and torch.equal(image_tuple[1], image.pooler_output)
    assert isinstance(text_tuple, tuple) and torch.equal(text_tuple[1], text.pooler_output)
    assert isinstance(out_tuple, tuple) and torch.equal(out_tuple[0], out.loss)
    # the normalised forward embeddings are the normalised features
    assert torch.allclose(out.image_embeds, torch.nn.functional.normalize(image.pooler_output, dim=-1))
    assert torch.allclose(out.text_embeds, torch.nn.functional.normalize(text.pooler_output, dim=-1))


def test_coca_loss_matches_open_clip_trainer_loss(oc_tiny, hf_tiny, rs_inputs):
    from open_clip.loss import CoCaLoss

    with torch.no_grad():
        out = hf_tiny(**rs_inputs, return_loss=True)
        ref = oc_tiny(rs_inputs["pixel_values"], rs_inputs["input_ids"])
        clip_ref, caption_ref = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=PAD)(
            ref["image_features"], ref["text_features"], ref["logits"], ref["labels"], ref["logit_scale"]
        )
    assert abs(out.contrastive_loss.item() - clip_ref.item()) <= TOL
    assert abs(out.caption_loss.item() - caption_ref.item()) <= TOL
    assert abs(out.loss.item() - (clip_ref + caption_ref).item()) <= TOL
    # explicit HF-style labels (-100 = ignore) give the same caption loss
    labels = rs_inputs["input_ids"].masked_fill(rs_inputs["input_ids"] == PAD, -100)
    with torch.no_grad():
        again = hf_tiny(**rs_inputs, labels=labels)
    assert torch.allclose(again.caption_loss, out.caption_loss)


def test_round_trip_reproduces_open_clip_state_dict(oc_tiny, hf_tiny):
    source = oc_tiny.state_dict()
    back = coca_to_open_clip_state_dict(hf_tiny)
    assert set(back) == set(source)
    for key, tensor in source.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    fresh = CoCa(
        TINY_CFG["embed_dim"], TINY_CFG["multimodal_cfg"], TINY_CFG["text_cfg"], TINY_CFG["vision_cfg"]
    )
    fresh.load_state_dict(back, strict=True)


def test_greedy_generate_equals_open_clip_cacheless_decode(oc_tiny, hf_tiny, rs_inputs):
    pixel_values = rs_inputs["pixel_values"]
    with torch.no_grad():
        ours = hf_tiny.generate(pixel_values, num_beams=1, do_sample=False, max_length=24, min_length=0)
        ref = _open_clip_greedy(oc_tiny, pixel_values, max_length=24)
    assert torch.equal(ours, ref)


# ------------------------------------------------------------------------------------------ generation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_beams": 1},
        {"num_beams": 3},
        {"num_beams": 3, "num_return_sequences": 2},
        {"do_sample": True, "top_k": 50, "num_beams": 1},
    ],
    ids=["greedy", "beam3", "beam3-ret2", "sample"],
)
def test_cache_on_and_off_give_identical_tokens(hf_tiny, rs_inputs, kwargs):
    pixel_values = rs_inputs["pixel_values"][:2]
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        with torch.no_grad():
            outs.append(hf_tiny.generate(pixel_values, max_new_tokens=12, use_cache=use_cache, **kwargs))
    assert outs[0].shape[1] > 1
    assert torch.equal(outs[0], outs[1])


def test_image_encoded_once_and_cross_attention_kv_cached(hf_tiny, rs_inputs):
    pixel_values = rs_inputs["pixel_values"][:2]
    vision_batches, cross_kv_calls = [], []
    hooks = [
        hf_tiny.vision_model.register_forward_hook(
            lambda m, a, o: vision_batches.append(o.image_tokens.shape[0])
        )
    ]
    hooks += [
        layer.encoder_attn.k_proj.register_forward_hook(lambda m, a, o: cross_kv_calls.append(o.shape[0]))
        for layer in hf_tiny.multimodal_decoder.layers
    ]
    try:
        with torch.no_grad():
            out = hf_tiny.generate(pixel_values, num_beams=3, max_new_tokens=10, min_new_tokens=10)
    finally:
        for hook in hooks:
            hook.remove()
    assert out.shape == (2, 11)
    assert vision_batches == [2]  # once, on the un-expanded batch; beams reuse the expanded encoder outputs
    assert cross_kv_calls == [6] * len(hf_tiny.multimodal_decoder.layers)  # first step only, batch x beams


def _eot_biased(model: RSCoCaModel) -> RSCoCaModel:
    biased = RSCoCaModel(model.config)
    biased.load_state_dict(model.state_dict())
    with torch.no_grad():
        biased.lm_head.weight[EOT] = biased.multimodal_decoder.final_layer_norm.bias.sign() * 50
        biased.multimodal_decoder.final_layer_norm.weight.zero_()
    return biased.eval()


def test_min_length_eos_and_max_length(hf_tiny, rs_inputs):
    model = _eot_biased(hf_tiny)  # every position prefers <end_of_text>
    pixel_values = rs_inputs["pixel_values"][:2]
    with torch.no_grad():
        stop_now = model.generate(pixel_values, num_beams=1, min_length=0, max_new_tokens=20)
        at_least = model.generate(pixel_values, num_beams=1, min_new_tokens=5, max_new_tokens=20)
        beams = model.generate(pixel_values, num_beams=3, min_new_tokens=5, max_new_tokens=20)
        capped = hf_tiny.generate(pixel_values, num_beams=1, min_length=0, max_new_tokens=7)
    assert stop_now.tolist() == [[SOT, EOT]] * 2
    assert at_least.shape == (2, 7) and (at_least[:, 1:6] != EOT).all() and (at_least[:, 6] == EOT).all()
    assert beams.shape == (2, 7) and (beams[:, 6] == EOT).all()
    assert capped.shape == (2, 8)


def test_stopping_criteria_and_prompt(hf_tiny, processor, rs_batch):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAtEight(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 8, dtype=torch.bool)

    images, _ = rs_batch
    inputs = processor(
        images=images[:2], text=["a satellite image of", "an aerial photo of"], return_tensors="pt"
    )
    with torch.no_grad():
        out = hf_tiny.generate(
            **inputs, num_beams=1, max_new_tokens=20, stopping_criteria=StoppingCriteriaList([StopAtEight()])
        )
    assert out.shape[1] == 8
    prompt = processor(text=["a satellite image of"], return_tensors="pt")["input_ids"][0]
    n_prompt = int((prompt == EOT).nonzero()[0])
    assert n_prompt == 5 and torch.equal(out[0, :n_prompt], prompt[:n_prompt])


def test_batch_decode_strips_special_tokens(processor):
    tok = processor.tokenizer
    ids = tok(["two tennis courts !"], return_tensors="pt")["input_ids"][0].tolist()
    generated = torch.tensor([ids + [PAD, PAD]])
    assert processor.batch_decode(generated) == ["two tennis courts !"]
    assert processor.post_process_image_text_to_text(generated) == ["two tennis courts !"]


# -------------------------------------------------------------------------- remote code, pipeline, peft

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
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

    folder, image_path, ref_path = sys.argv[1:4]
    ref = torch.load(ref_path, weights_only=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    captioner = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image = Image.open(image_path).convert("RGB")
    inputs = processor(images=[image], text=["a satellite image"], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        tokens = captioner.generate(pixel_values=inputs["pixel_values"], num_beams=1, max_new_tokens=6, min_length=0)
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    result = pipe(images=image, text="", generate_kwargs={"num_beams": 1, "max_new_tokens": 6, "min_length": 0})
    print(json.dumps({
        "model_module": type(model).__module__,
        "captioner_class": type(captioner).__name__,
        "processor_class": type(processor).__name__,
        "embeds_equal": bool(torch.allclose(out.image_embeds, ref["image_embeds"], atol=1e-5)),
        "tokens": tokens.tolist(),
        "pipeline_text": result[0]["generated_text"],
        "caption": processor.batch_decode(tokens)[0],
        "hqrs_loaded": any(m == "hqrs" or m.startswith("hqrs.") for m in sys.modules),
    }))
    """
)


def test_saved_folder_loads_in_fresh_process_without_hqrs(hf_tiny, processor, rs_batch, rs_real, tmp_path):
    folder = save_hf_coca(hf_tiny, processor, tmp_path / "rs-coca")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "modeling_rs_coca.py"} <= names
    assert {"configuration_rs_coca.py", "processing_rs_coca.py", "processor_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    for code in ("modeling_rs_coca.py", "configuration_rs_coca.py", "processing_rs_coca.py"):
        assert not re.search(r"^\s*(from|import)\s+hqrs", (folder / code).read_text(), re.MULTILINE), code
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_rs_coca.RSCoCaModel"
    assert config["open_clip_model_name"] == TINY_NAME
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["decoder_start_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        SOT,
        EOT,
        PAD,
    )

    images, _ = rs_batch
    image_path = rs_real / "ucm_captions" / "images" / "81.tif"
    inputs = processor(
        images=[Image.open(image_path).convert("RGB")], text=["a satellite image"], return_tensors="pt"
    )
    with torch.no_grad():
        expected_tokens = hf_tiny.generate(
            pixel_values=inputs["pixel_values"], num_beams=1, max_new_tokens=6, min_length=0
        )
        ref = {"image_embeds": hf_tiny(**inputs).image_embeds}
    torch.save(ref, tmp_path / "ref.pt")
    (tmp_path / "fresh.py").write_text(_FRESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(tmp_path / "fresh.py"),
            str(folder),
            str(image_path),
            str(tmp_path / "ref.pt"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model_module"].startswith("transformers_modules.")
    assert result["captioner_class"] == "RSCoCaModel" and result["processor_class"] == "RSCoCaProcessor"
    assert result["embeds_equal"] and not result["hqrs_loaded"]
    assert result["tokens"] == expected_tokens.tolist()
    assert result["pipeline_text"] == result["caption"] == processor.batch_decode(expected_tokens)[0]
    assert result["caption"]


def test_peft_lora_smoke(hf_tiny, rs_inputs):
    peft = pytest.importorskip("peft")
    model = RSCoCaModel(hf_tiny.config)
    model.load_state_dict(hf_tiny.state_dict())
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1", "fc2"])
    )
    lora.train()
    out = lora(**rs_inputs)
    out.loss.backward()
    lora_params = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    assert lora_params and all("lora_" in n for n in lora_params)
    # LoRA landed in every tower: vision, pooler, text, decoder self- and cross-attention, MLPs
    for part in (
        "vision_model.layers.0.self_attn.q_proj",
        "vision_model.attn_pool.attn.v_proj",
        "text_model.layers.1.mlp.fc1",
        "multimodal_decoder.layers.0.encoder_attn.q_proj",
        "multimodal_decoder.layers.1.encoder_mlp.fc2",
    ):
        assert any(part in n for n in lora_params), part
    grads = [p.grad for n, p in lora_params.items() if "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_trainer_runs_two_steps(hf_tiny, rs_inputs, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = RSCoCaModel(hf_tiny.config)
    model.load_state_dict(hf_tiny.state_dict())
    rows = [{k: v[i] for k, v in rs_inputs.items()} for i in range(4)]
    before = model.lm_head.weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        learning_rate=1e-3,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.lm_head.weight)


# ------------------------------------------------------------------------------------------------ errors


def test_config_errors():
    with pytest.raises(
        ValueError, match="pooler_hidden_size=48 must equal multimodal_config.hidden_size=512"
    ):
        RSCoCaConfig(vision_config={"pooler_hidden_size": 48})
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        RSCoCaConfig(text_config={"hidden_act": "relu"})
    with pytest.raises(ValueError, match="image_size=225 must be a multiple of patch_size=32"):
        RSCoCaConfig(vision_config={"image_size": 225, "pooler_hidden_size": 512})


def test_open_clip_name_errors():
    with pytest.raises(ValueError, match="unknown open_clip architecture 'coca_nope'"):
        coca_config_from_open_clip("coca_nope")
    with pytest.raises(ValueError, match="'ViT-B-32' is not a CoCa model"):
        coca_config_from_open_clip("ViT-B-32")
    with pytest.raises(ValueError, match="hf_model_name"):
        coca_config_from_open_clip("coca_roberta-ViT-B-32")
    config = coca_config_from_open_clip("coca_ViT-L-14")
    assert (config.vision_config.hidden_size, config.vision_config.num_attention_heads) == (1024, 16)
    assert (config.projection_dim, config.multimodal_config.num_attention_heads) == (768, 12)
    assert config.vision_config.attn_pooler_heads == 8 and config.text_config.max_position_embeddings == 76


def test_conversion_key_errors(oc_tiny):
    state = dict(oc_tiny.state_dict())
    extra = {**state, "visual.stray.weight": torch.zeros(1)}
    with pytest.raises(UnmappedKeysError, match=r"visual\.stray\.weight"):
        convert_open_clip_coca(TINY_NAME, extra, model_cfg=TINY_CFG)
    missing = {k: v for k, v in state.items() if k != "text_decoder.ln_final.bias"}
    with pytest.raises(MissingKeysError, match=r"multimodal_decoder\.final_layer_norm\.bias"):
        convert_open_clip_coca(TINY_NAME, missing, model_cfg=TINY_CFG)
    # a tiny checkpoint read as coca_ViT-B-32: wrong architecture, listed shapes
    with pytest.raises((MissingKeysError, UnmappedKeysError), match="wrong shape|missing"):
        convert_open_clip_coca("coca_ViT-B-32", state)


def test_input_errors(hf_tiny, rs_inputs, processor):
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, channels, 224, 224\)"):
        hf_tiny(pixel_values=torch.zeros(1, 3, 32, 32))
    too_long = torch.full((1, 80), 320)
    with pytest.raises(ValueError, match="longer than text_config.max_position_embeddings=76"):
        hf_tiny(input_ids=too_long)
    with pytest.raises(ValueError, match="exceeds multimodal_config.max_position_embeddings=76"):
        hf_tiny.generate(rs_inputs["pixel_values"][:1], num_beams=1, max_new_tokens=90, min_length=0)
    uneven = processor(text=["a satellite image of", "roads"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"same number of tokens; got lengths \[5, 2\]"):
        hf_tiny.generate(rs_inputs["pixel_values"][:2], input_ids=uneven["input_ids"], max_new_tokens=3)
    with pytest.raises(ValueError, match="generate needs pixel_values"):
        hf_tiny.generate(max_new_tokens=3)
    with pytest.raises(ValueError, match="needs images, text or both"):
        processor()


# -------------------------------------------------------------------------------------------- slow: B-32


@pytest.mark.slow
def test_coca_vit_b_32_parity_and_round_trip(processor, rs_inputs):
    torch.manual_seed(0)
    oc = _perturb(open_clip.create_model("coca_ViT-B-32", pretrained=None), seed=1)
    model = convert_open_clip_coca("coca_ViT-B-32", oc.state_dict())
    with torch.no_grad():
        out = model(**rs_inputs)
        ref = oc(rs_inputs["pixel_values"], rs_inputs["input_ids"])
        image_ref, text_ref = (
            oc.encode_image(rs_inputs["pixel_values"]),
            oc.encode_text(rs_inputs["input_ids"]),
        )
        ours = model.generate(rs_inputs["pixel_values"][:2], num_beams=1, max_length=16, min_length=0)
        theirs = _open_clip_greedy(oc, rs_inputs["pixel_values"][:2], max_length=16)
    assert (out.image_embeds - image_ref).abs().max() <= TOL
    assert (out.text_embeds - text_ref).abs().max() <= TOL
    assert (out.logits_per_image - oc.logit_scale.exp() * image_ref @ text_ref.t()).abs().max() <= TOL
    assert (out.logits[:, :-1] - ref["logits"]).abs().max() <= TOL
    assert torch.equal(ours, theirs)
    back = coca_to_open_clip_state_dict(model)
    source = oc.state_dict()
    assert set(back) == set(source) and all(torch.equal(back[k], source[k]) for k in source)
    open_clip.create_model("coca_ViT-B-32", pretrained=None).load_state_dict(back, strict=True)


def test_tiny_config_is_what_the_converter_reads():
    config = coca_config_from_open_clip(TINY_NAME, TINY_CFG)
    assert config.vision_config.num_attention_heads == 2 and config.vision_config.attn_pooler_queries == 16
    assert config.multimodal_config.intermediate_size == 128 and config.open_clip_model_name == TINY_NAME


def test_zero_shot_with_more_texts_than_images(hf_tiny, processor, rs_batch):
    images, captions = rs_batch
    inputs = processor(images=images[:1], text=captions, return_tensors="pt")
    with torch.no_grad():
        out = hf_tiny(**inputs)
    assert out.logits_per_image.shape == (1, len(captions)) and out.logits is None and out.loss is None
    with pytest.raises(ValueError, match="labels need one caption per image; got 4 texts for 1 images"):
        hf_tiny(**inputs, labels=inputs["input_ids"])
