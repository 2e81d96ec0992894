"""Multi-process contrastive loss: 2 CPU ranks (torchrun, gloo) equal one process on the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import train_fixtures as tf

WORKER = Path(__file__).with_name("train_dist_worker.py")


def _torchrun(*args: str, timeout: int = 240) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(WORKER),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]


@pytest.fixture(scope="module")
def processor():
    return tf.tiny_processor()


def test_gathered_loss_and_grads_equal_single_process(tmp_path, rs_real, processor):
    """CLIP and RS-CoCa: mean of the 2 rank losses and the DDP gradients equal one process on 8 samples."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPModel

    from hqrs.dataset_builder.imaging import decode_image
    from hqrs.modeling.modeling_rs_coca import RSCoCaModel

    records = tf.ucm_records(rs_real, limit=8)
    images = [decode_image(r["image"]) for r in records]
    texts = [r["captions"][0] for r in records]
    dirs = {
        "clip": tf.make_tiny_clip_dir(tmp_path / "clip", seed=3, processor=processor),
        "coca": tf.make_tiny_coca_dir(tmp_path / "coca", seed=3),
    }
    batches = {
        "clip": processor(
            text=texts, images=images, padding="max_length", truncation=True, return_tensors="pt"
        ),
        # 8 tokens per caption on every rank: the per-rank caption-loss means then average to the global one
        "coca": tf.tiny_coca_processor()(text=texts, images=images, max_length=8, return_tensors="pt"),
    }
    assert bool(batches["coca"]["attention_mask"].all())
    for kind, batch in batches.items():
        batches[kind] = {k: batch[k].contiguous() for k in ("pixel_values", "input_ids", "attention_mask")}
        save_file(batches[kind], str(tmp_path / f"batch_{kind}.safetensors"))
    _torchrun("grads", str(dirs["clip"]), str(dirs["coca"]), str(tmp_path))

    for kind, model_cls in (("clip", CLIPModel), ("coca", RSCoCaModel)):
        model = model_cls.from_pretrained(dirs[kind])
        reference = model(**batches[kind], return_loss=True).loss
        reference.backward()
        ranks = [load_file(str(tmp_path / f"rank{r}_{kind}.safetensors")) for r in range(2)]
        mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
        torch.testing.assert_close(mean_loss, reference.detach().reshape(1), atol=1e-5, rtol=0, msg=kind)
        # Without gathering, each rank contrasts only its own 4 samples: a different (easier) loss.
        mean_local = (ranks[0]["local_loss"] + ranks[1]["local_loss"]) / 2
        assert (mean_local - reference).abs().item() > 1e-2, kind
        for name, param in model.named_parameters():
            for rank in ranks:
                torch.testing.assert_close(
                    rank[f"grad.{name}"], param.grad, atol=1e-5, rtol=0, msg=f"{kind} {name}"
                )


def test_trainer_two_ranks_equal_one_rank_with_double_batch(tmp_path, rs_real, processor):
    from transformers import CLIPModel

    from hqrs.modeling.training import build_trainer

    model_dir = tf.make_tiny_clip_dir(tmp_path / "clip", seed=4, processor=processor)
    data_dir = tf.write_builder_layout(tmp_path / "data", {"default": {"train": tf.ucm_default(rs_real, 24)}})
    _torchrun("trainer", str(model_dir), str(data_dir), str(tmp_path / "two"), "4", "3")

    single = build_trainer(
        "clip",
        model_dir,
        data_dir,
        config="default",
        output_dir=tmp_path / "one",
        augment=True,
        training_args=dict(
            per_device_train_batch_size=8,
            max_steps=3,
            optim="sgd",
            learning_rate=0.5,
            warmup_steps=0,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=7,
            disable_tqdm=True,
        ),
    )
    single.train()
    one = single.model.state_dict()
    two = CLIPModel.from_pretrained(tmp_path / "two").state_dict()
    start = CLIPModel.from_pretrained(model_dir).state_dict()
    assert any(not torch.equal(one[k], start[k]) for k in one)  # training moved the weights
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, atol=1e-5, rtol=0, msg=key)
