"""Trainer integration on a tiny real CLIPModel and real UCM images: save/load, resume, LoRA, streaming."""

from __future__ import annotations

import json

import pytest
import torch
import train_fixtures as tf
from transformers import CLIPModel, TrainerCallback

from hqrs.modeling.training import build_trainer

BASE_ARGS = dict(report_to=[], use_cpu=True, disable_tqdm=True, seed=11, learning_rate=1e-3, warmup_steps=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tf.make_tiny_clip_dir(tmp_path_factory.mktemp("clip") / "model", seed=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, rs_real):
    """Builder hub layout with both configs: 20 train images (100 pairs), 4 validation images."""
    root = tmp_path_factory.mktemp("data")
    default = tf.ucm_default(rs_real, 24)
    pairs = tf.ucm_pairs(rs_real, 24)
    return tf.write_builder_layout(
        root,
        {
            "default": {"train": default.select(range(20)), "validation": default.select(range(20, 24))},
            "pairs": {"train": pairs.select(range(100)), "validation": pairs.select(range(100, 120))},
        },
    )


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_save_model_is_a_plain_clip_model_with_eval_metrics(tmp_path, model_dir, data_dir):
    trainer = build_trainer(
        "clip",
        model_dir,
        data_dir,
        config="pairs",
        eval_split="validation",
        output_dir=tmp_path / "out",
        training_args=dict(
            BASE_ARGS,
            per_device_train_batch_size=8,
            max_steps=2,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="no",
        ),
    )
    trainer.train()
    trainer.save_model()
    metrics = trainer.evaluate()
    # 4 held-out images x 5 captions, recall over the whole split
    assert set(metrics) >= {
        "eval_loss",
        "eval_image_to_text_R@1",
        "eval_text_to_image_R@10",
        "eval_mean_recall",
    }
    assert metrics["eval_text_to_image_R@10"] == 100.0  # only 4 images to rank
    assert 0.0 <= metrics["eval_image_to_text_R@1"] <= 100.0
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= files
    assert "training_args.bin" not in files
    reloaded = CLIPModel.from_pretrained(tmp_path / "out")
    trained = trainer.model.state_dict()
    assert set(reloaded.state_dict()) == set(trained)
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, trained[key]), key
    start = CLIPModel.from_pretrained(model_dir).state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in trained)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, model_dir, data_dir):
    args = dict(BASE_ARGS, per_device_train_batch_size=4, max_steps=7, save_steps=3, save_strategy="steps")

    def make(out, callbacks=None):
        # 20 images / batch 4 = 5 steps per epoch: the run crosses an epoch, the resume is mid-epoch.
        return build_trainer(
            "clip",
            model_dir,
            data_dir,
            config="default",
            output_dir=out,
            augment=True,
            training_args=dict(args),
            callbacks=callbacks,
        )

    straight = make(tmp_path / "straight")
    straight.train()
    interrupted = make(tmp_path / "resumed", callbacks=[_StopAt(3)])
    interrupted.train()
    assert interrupted.state.global_step == 3
    assert (tmp_path / "resumed" / "checkpoint-3" / "model.safetensors").is_file()
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.state.global_step == 7
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
    # and the interruption point really differs from the end point
    mid = CLIPModel.from_pretrained(tmp_path / "resumed" / "checkpoint-3").state_dict()
    assert any((mid[k] - a[k]).abs().max() > 1e-4 for k in a)


def test_lora_saves_adapters_and_merge_matches(tmp_path, model_dir, data_dir, rs_real):
    from peft import PeftModel

    from hqrs.dataset_builder.imaging import decode_image
    from hqrs.modeling.training_lora import merge_lora

    out = tmp_path / "lora"
    trainer = build_trainer(
        "clip",
        model_dir,
        data_dir,
        output_dir=out,
        lora={"lora_r": 4, "lora_alpha": 8},
        training_args=dict(
            BASE_ARGS, learning_rate=5e-2, per_device_train_batch_size=8, max_steps=2, save_strategy="no"
        ),
    )
    peft_model = trainer.model  # the Trainer trains the peft model itself
    assert isinstance(peft_model, PeftModel)
    adapted = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    for tower in ("text_model", "vision_model"):
        for layer in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
            assert any(tower in n and n.endswith(layer) for n in adapted), (tower, layer)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    trainer.save_model()
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json"} <= files
    assert "model.safetensors" not in files
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert (out / recorded).resolve() == model_dir.resolve()  # recorded relative to the adapter

    merged_dir = merge_lora(out, tmp_path / "merged")
    merged = CLIPModel.from_pretrained(merged_dir).eval()
    assert not any("lora" in k for k in merged.state_dict())
    processor = tf.tiny_processor()
    records = tf.ucm_records(rs_real, 3)
    batch = processor(
        text=[r["captions"][1] for r in records],
        images=[decode_image(r["image"]) for r in records],
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch)
        got = merged(**batch)
        base = CLIPModel.from_pretrained(model_dir).eval()(**batch)
    torch.testing.assert_close(got.image_embeds, expected.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, atol=1e-5, rtol=1e-4)
    assert (base.image_embeds - expected.image_embeds).abs().max() > 1e-4  # the adapters changed the model


def test_streaming_needs_max_steps_and_trains(tmp_path, model_dir, data_dir):
    with pytest.raises(ValueError, match="max_steps"):
        build_trainer(
            "clip",
            model_dir,
            data_dir,
            output_dir=tmp_path / "s",
            streaming=True,
            training_args=dict(BASE_ARGS),
        )
    trainer = build_trainer(
        "clip",
        model_dir,
        data_dir,
        config="default",
        output_dir=tmp_path / "s",
        streaming=True,
        augment=True,
        training_args=dict(BASE_ARGS, per_device_train_batch_size=4, max_steps=3, save_strategy="no"),
    )
    trainer.train()
    assert trainer.state.global_step == 3
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_model_folder_errors(tmp_path, data_dir, model_dir):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"not a CLIP or RS-CoCa model: model_type is 'bert'"):
        build_trainer("clip", tmp_path / "bert", data_dir, output_dir=tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        build_trainer("clip", tmp_path / "empty", data_dir, output_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="is a 'clip' model, not 'coca'"):
        build_trainer("coca", model_dir, data_dir, output_dir=tmp_path / "o")
    with pytest.raises(
        ValueError, match=r"no configuration 'captions' \(data/captions/\); found \['default', 'pairs'\]"
    ):
        build_trainer("clip", model_dir, data_dir, config="captions", output_dir=tmp_path / "o")


def test_coca_full_and_lora(tmp_path, data_dir):
    from peft import PeftModel

    from hqrs.modeling.modeling_rs_coca import RSCoCaModel

    coca_dir = tf.make_tiny_coca_dir(tmp_path / "coca", seed=2)
    args = dict(BASE_ARGS, per_device_train_batch_size=4, max_steps=2, save_strategy="no")
    trainer = build_trainer(
        "coca", coca_dir, data_dir, config="default", output_dir=tmp_path / "full", training_args=args
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[1] == 76  # the CoCa processor's open_clip layout
    with torch.no_grad():
        out = trainer.compute_loss(trainer.model, batch, return_outputs=True)[1]
        ref = RSCoCaModel.from_pretrained(coca_dir)(
            **{k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
        )
    torch.testing.assert_close(out.loss, ref.loss)  # the model's own contrastive + caption loss
    assert ref.caption_loss > 0 and ref.contrastive_loss > 0
    trainer.train()
    trainer.save_model()
    reloaded = RSCoCaModel.from_pretrained(tmp_path / "full").state_dict()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(reloaded[key], value), key

    lora = build_trainer(
        "coca",
        coca_dir,
        data_dir,
        config="default",
        output_dir=tmp_path / "lora",
        lora=True,
        training_args=args,
    )
    assert isinstance(lora.model, PeftModel)
    adapted = {n for n, _ in lora.model.named_parameters() if ".lora_A" in n}
    for part in ("vision_model", "text_model", "multimodal_decoder"):
        assert any(part in n for n in adapted), part
    assert any("multimodal_decoder" in n and "fc2" in n for n in adapted)
    lora.train()
    lora.save_model()
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()


def test_gradient_checkpointing_reaches_the_model(tmp_path, model_dir, data_dir):
    trainer = build_trainer(
        "clip",
        model_dir,
        data_dir,
        output_dir=tmp_path / "gc",
        lora=True,
        training_args=dict(
            BASE_ARGS,
            per_device_train_batch_size=4,
            max_steps=2,
            gradient_checkpointing=True,
            save_strategy="no",
            learning_rate=1e-2,
        ),
    )
    before = {k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    trainer.train()
    assert trainer.model.get_base_model().is_gradient_checkpointing
    after = dict(trainer.model.named_parameters())
    assert all(
        not torch.equal(before[k], after[k]) for k in before
    )  # A and B of every adapter moved (A needs B != 0: 2 steps)


def test_trainer_overrides_only_public_hooks(model_dir, data_dir, tmp_path):
    """#16.5: the Trainer trains the transformers model itself; no private Trainer method is overridden."""
    from transformers import Trainer

    from hqrs.modeling.training import ImageTextTrainer

    private = [
        name
        for name in vars(ImageTextTrainer)
        if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)
    ]
    assert private == []
    trainer = build_trainer(
        "clip", model_dir, data_dir, output_dir=tmp_path / "o", training_args=dict(BASE_ARGS)
    )
    assert type(trainer.model) is CLIPModel
