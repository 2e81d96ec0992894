"""Worker of ``tests/test_train_distributed.py``, started by ``torchrun --nproc-per-node 2`` (gloo, CPU).

``grads CLIP_DIR COCA_DIR WORK_DIR``: for each model, each rank takes its half of
``WORK_DIR/batch_<kind>.safetensors``, runs :func:`image_text_loss` on the model under DDP (what ``ImageTextTrainer.compute_loss`` does), and writes its
loss, its (DDP-averaged) gradients and its loss without gathering to ``WORK_DIR/rank<r>_<kind>.safetensors``.

``trainer MODEL_DIR DATA_DIR OUT_DIR BATCH STEPS``: runs ``build_trainer`` for ``STEPS`` steps with a
per-device batch of ``BATCH`` and saves the model to ``OUT_DIR``.
"""

from __future__ import annotations

import os
import sys


def grads(clip_dir: str, coca_dir: str, work_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file
    from torch.nn.parallel import DistributedDataParallel
    from transformers import CLIPModel

    from hqrs.modeling.modeling_rs_coca import RSCoCaModel
    from hqrs.modeling.training import image_text_loss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for kind, model_cls, model_dir in (("clip", CLIPModel, clip_dir), ("coca", RSCoCaModel, coca_dir)):
        batch = load_file(os.path.join(work_dir, f"batch_{kind}.safetensors"))
        n = batch["input_ids"].shape[0] // world
        local = {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}
        model = model_cls.from_pretrained(model_dir)
        ddp = DistributedDataParallel(model)
        loss = image_text_loss(ddp, local).loss
        loss.backward()
        result = {"loss": loss.detach().reshape(1)}
        result.update({f"grad.{name}": p.grad.detach().clone() for name, p in model.named_parameters()})
        with torch.no_grad():
            result["local_loss"] = image_text_loss(model, local, gather_with_grad=False).loss.reshape(1)
        save_file(result, os.path.join(work_dir, f"rank{rank}_{kind}.safetensors"))
    dist.destroy_process_group()


def trainer(model_dir: str, data_dir: str, out_dir: str, batch: str, steps: str) -> None:
    from hqrs.modeling.training import build_trainer

    tr = build_trainer(
        "clip",
        model_dir,
        data_dir,
        config="default",
        output_dir=out_dir,
        augment=True,
        training_args=dict(
            per_device_train_batch_size=int(batch),
            max_steps=int(steps),
            # SGD: the update is linear in the gradient (Adam would blow up float noise in gradients
            # that are zero in exact arithmetic, such as attention key biases).
            optim="sgd",
            learning_rate=0.5,
            warmup_steps=0,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            ddp_backend="gloo",
            seed=7,
            disable_tqdm=True,
        ),
    )
    tr.train()
    tr.save_model()
    tr.accelerator.end_training()  # destroys the process group, as `hqrs train` does


if __name__ == "__main__":
    {"grads": grads, "trainer": trainer}[sys.argv[1]](*sys.argv[2:])
