"""Fine-tune HQRS-CLIP (transformers ``CLIPModel``) and RS-CoCa with the transformers ``Trainer``.

:func:`build_trainer` returns a configured :class:`ImageTextTrainer`; ``trainer.train()`` runs it,
``trainer.save_model()`` writes a folder that ``CLIPModel.from_pretrained`` / ``RSCoCaModel.from_pretrained``
loads (or a peft adapter with LoRA). accelerate, torchrun, DeepSpeed and FSDP come with the Trainer.

Design: where the loss comes from
---------------------------------
The loss is the model's own ``forward(return_loss=True)`` loss: CLIP's symmetric InfoNCE, or RS-CoCa's
``contrastive + caption`` loss. On one process that is used as is. On several processes a per-rank
contrastive loss would only contrast each sample with the ``per_device_train_batch_size`` samples of
its own rank; open_clip instead gathers the features of all ranks *with gradient*
(``gather_with_grad`` + ``local_loss``), so the loss and its gradient equal one process on the whole
global batch. That happens in the Trainer's public ``compute_loss`` hook (:func:`image_text_loss`): the
``Trainer`` trains the transformers model itself (or its peft model), so checkpoints, resuming and
``load_best_model_at_end`` are the Trainer's own, and the final folder and every ``checkpoint-N`` are
ordinary ``CLIPModel`` / ``RSCoCaModel`` / peft adapter folders:

* on one process the loss is ``model(**batch, return_loss=True).loss``; on several, ``return_loss=False``
  for CLIP (RS-CoCa keeps its per-rank caption loss) and the contrastive term is
  :func:`gathered_contrastive_loss` on features all-gathered with ``torch.distributed.nn.functional``
  (autograd-aware all_gather). Each rank's loss is the mean over its own rows against all columns,
  and DDP's gradient averaging turns the sum of per-rank gradients into exactly the gradient of the
  global-batch loss (checked to 1e-5 against a single process in ``tests/test_train_distributed.py``);
* :class:`ImageTextTrainer` also overrides the public ``save_model``: after the Trainer's
  ``save_pretrained`` it records a LoRA adapter's base relative to the adapter, adds RS-CoCa's remote
  code and writes ``training_args.json`` (instead of the pickled ``training_args.bin``).

Data are processed on the fly (see :mod:`hqrs.modeling.training_data`): a random caption per image
and epoch, optional remote-sensing augmentations, the model's processor in the collator. The epoch is
pushed to the dataset by a callback, and every random draw is seeded by ``(seed, epoch, row)``, so a
run resumed from a checkpoint ends with the same weights as an uninterrupted one.

Evaluation on a held-out split reports retrieval recall (image→text and text→image R@1/5/10 and their
mean, in percent, by :mod:`hqrs.modeling.recall`, as ``hqrs eval`` does) on every caption of every held-out image, via
``compute_metrics``.

Example:
    >>> from hqrs.modeling.training import build_trainer  # doctest: +SKIP
    >>> trainer = build_trainer("clip", "hqrs-clip-b32", "hqrs-it-210k", config="pairs",
    ...                         output_dir="out", eval_split=0.02,
    ...                         training_args={"per_device_train_batch_size": 256, "learning_rate": 1e-5,
    ...                                        "num_train_epochs": 10, "bf16": True,
    ...                                        "eval_strategy": "epoch", "save_strategy": "epoch"})  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> trainer.save_model()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import ModelOutput

from .families import family_of
from .loading import KINDS, load_model_and_processor, model_kind
from .recall import retrieval_metrics as recall_at_k
from .training_data import (
    DataOptions,
    ImageCaptionDataset,
    ImageTextCollator,
    RSAugment,
    StreamingImageCaptionDataset,
    load_training_dataset,
    split_by_image,
)
from .training_lora import LoraArguments, apply_lora, record_base_relative_to_adapter

if TYPE_CHECKING:  # pragma: no cover
    from transformers import EvalPrediction, PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "ImageTextTrainer",
    "ImageTextTrainingOutput",
    "build_trainer",
    "gathered_contrastive_loss",
    "image_text_loss",
    "load_model_and_processor",
    "model_kind",
    "retrieval_metrics",
]

#: Image-id key of the batches: the evaluation metrics' ground truth, ignored by the loss.
IMAGE_IDS = "image_ids"


# --------------------------------------------------------------------------------------------------
# Models


@contextlib.contextmanager
def refuse_unsafe_pickles(where: str | os.PathLike) -> Iterator[None]:
    """Turn ``pickle.UnpicklingError`` from weights-only loading inside the block into a ``ValueError``.

    ``torch.load(..., weights_only=True)`` (what transformers, peft and the Trainer use for ``.bin``/``.pt``/
    ``.pth`` files) refuses pickles that hold anything but tensors and plain containers, before any of their
    code runs; the raw error is a long traceback. ``where`` names the folder the files came from.
    """
    try:
        yield
    except pickle.UnpicklingError as exc:
        # torch's message opens with advice to retry with weights_only=False (which would run the code) and
        # ends with a docs link; the line between says what was refused
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reasons = [
            ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))
        ]
        first = reasons[0] if reasons else "it holds objects other than tensors"
        raise ValueError(
            f"{os.fspath(where)!r} holds a pickled file (.bin/.pt/.pth) that safe weights-only loading refuses "
            f"(nothing in it was run): {first[:300]}. Use checkpoints written by hqrs/transformers, or re-save "
            "the weights as safetensors"
        ) from None


@dataclass
class ImageTextTrainingOutput(ModelOutput):
    """What :func:`image_text_loss` (and so ``ImageTextTrainer.compute_loss``) returns.

    Args:
        loss: the training loss (see the module docstring), a scalar.
        image_embeds / text_embeds: ``(batch, embed_dim)`` L2-normalised embeddings of this rank's batch (the
            predictions the evaluation metrics rank).
    """

    loss: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def transformers_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model under DDP/accelerate/``torch.compile`` and peft wrappers (it owns ``config`` and
    ``logit_scale``)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_torch_compile=False)
    get_base = getattr(model, "get_base_model", None)  # a peft model
    return get_base() if callable(get_base) else model


def gathered_contrastive_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's rows against the features of all ranks (open_clip ``local_loss``).

    ``image_embeds``/``text_embeds`` are this rank's L2-normalised features (same batch size on every
    rank, which accelerate's ``even_batches`` guarantees). Features are gathered with
    ``torch.distributed.nn.functional.all_gather``, whose backward sends each rank the gradient of
    its slice, so after DDP averages gradients the update equals one process on the whole batch.
    Without an initialised process group (or with one rank) it is CLIP's single-process loss.
    """
    rank, world = _world()
    if world > 1:
        from torch.distributed.nn.functional import all_gather

        all_images = torch.cat(all_gather(image_embeds.contiguous()), dim=0)
        all_texts = torch.cat(all_gather(text_embeds.contiguous()), dim=0)
    else:
        all_images, all_texts = image_embeds, text_embeds
    scale = logit_scale.exp()
    logits_per_image = scale * image_embeds @ all_texts.t()
    logits_per_text = scale * text_embeds @ all_images.t()
    targets = torch.arange(image_embeds.shape[0], device=image_embeds.device) + rank * image_embeds.shape[0]
    return (
        nn.functional.cross_entropy(logits_per_image.float(), targets)
        + nn.functional.cross_entropy(logits_per_text.float(), targets)
    ) / 2


def image_text_loss(
    model: nn.Module, inputs: dict[str, Any], *, gather_with_grad: bool = True
) -> ImageTextTrainingOutput:
    """The training loss of a ``CLIPModel``/``RSCoCaModel`` (or a peft/DDP wrapper of one) on a collated batch.

    On one process (or ``gather_with_grad=False``) it is the model's own ``forward(return_loss=True)`` loss. On
    several ``torch.distributed`` ranks the contrastive term is replaced by :func:`gathered_contrastive_loss`
    (weighted by the config's ``contrastive_loss_weight``); RS-CoCa keeps its per-rank caption loss.

    Args:
        model: what runs the forward (the model the ``Trainer`` hands to ``compute_loss``).
        inputs: ``pixel_values`` ``(batch, 3, H, W)``, ``input_ids``/``attention_mask`` ``(batch, seq)``;
            ``image_ids`` (the evaluation metrics' ground truth) is ignored.
        gather_with_grad: on several processes, contrast against the features of all ranks.

    Example:
        >>> import torch
        >>> from transformers import CLIPConfig, CLIPModel
        >>> tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        >>> clip = CLIPModel(CLIPConfig(text_config=dict(tiny, vocab_size=99),
        ...                             vision_config=dict(tiny, image_size=32, patch_size=16)))
        >>> batch = dict(pixel_values=torch.randn(2, 3, 32, 32), input_ids=torch.tensor([[1, 5, 2], [1, 7, 2]]))
        >>> out = image_text_loss(clip, dict(batch, image_ids=torch.tensor([0, 1])))
        >>> bool(torch.allclose(out.loss, clip(**batch, return_loss=True).loss))
        True
    """
    core = transformers_model(model)
    has_caption_loss = hasattr(core.config, "caption_loss_weight")
    gather = gather_with_grad and _world()[1] > 1
    batch = {k: v for k, v in inputs.items() if k != IMAGE_IDS}
    outputs = model(**batch, return_loss=not gather or has_caption_loss)
    loss = outputs.loss
    if gather:
        weight = float(getattr(core.config, "contrastive_loss_weight", 1.0))
        loss = weight * gathered_contrastive_loss(outputs.image_embeds, outputs.text_embeds, core.logit_scale)
        if has_caption_loss:
            loss = loss + outputs.caption_loss
    return ImageTextTrainingOutput(
        loss=loss, image_embeds=outputs.image_embeds, text_embeds=outputs.text_embeds
    )


# --------------------------------------------------------------------------------------------------
# Trainer


class ImageTextTrainer(Trainer):
    """The stock ``Trainer`` on the transformers (or peft) model itself, with the loss of :func:`image_text_loss`.

    Only public hooks are overridden: ``compute_loss`` (the gathered contrastive loss; it returns the embeddings
    as the evaluation predictions) and ``save_model`` (after the Trainer's own ``save_pretrained`` of the model and
    processor: a LoRA adapter records its base relative to itself, an RS-CoCa folder gets its remote code, and the
    arguments are written as ``training_args.json`` instead of the pickled ``training_args.bin``). Checkpoints,
    resuming and ``load_best_model_at_end`` are the Trainer's, on ordinary ``CLIPModel``/``RSCoCaModel``/peft
    adapter folders.

    Args:
        gather_with_grad: see :func:`image_text_loss`; every other argument is the ``Trainer``'s.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, gather_with_grad: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gather_with_grad = gather_with_grad

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ImageTextTrainingOutput]:
        outputs = image_text_loss(model, inputs, gather_with_grad=self.gather_with_grad)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save or not os.path.isdir(output_dir):
            return
        Path(output_dir, "training_args.bin").unlink(missing_ok=True)  # a pickle; the JSON below replaces it
        Path(output_dir, "training_args.json").write_text(self.args.to_json_string(), encoding="utf-8")
        record_base_relative_to_adapter(output_dir)  # a LoRA adapter finds its base from anywhere
        # remote-code families (RS-CoCa): the output folder and every checkpoint-N load without hqrs
        family_of(self.model).write_remote_code(output_dir)


class _ImageTextCallback(TrainerCallback):
    """Pushes the epoch into the training dataset, clamps ``logit_scale`` (open_clip: at most ln 100)
    after each optimizer step, and reports skipped images at the end."""

    def __init__(self, train_dataset: Any, max_logit_scale: float | None) -> None:
        self.train_dataset = train_dataset
        self.max_logit_scale = max_logit_scale

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.max_logit_scale is None or model is None:
            return
        scale = getattr(transformers_model(model), "logit_scale", None)
        if isinstance(scale, torch.Tensor) and scale.requires_grad:
            with torch.no_grad():
                scale.clamp_(0, self.max_logit_scale)

    def on_train_end(self, args, state, control, **kwargs):
        skipped = getattr(self.train_dataset, "skipped", 0)
        if skipped:
            logger.warning(
                "%d training image(s) failed to load and were skipped (this process; see the warnings above)",
                skipped,
            )


# --------------------------------------------------------------------------------------------------
# Metrics


def retrieval_metrics(eval_pred: EvalPrediction, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Image↔text retrieval recall over the evaluation set (``compute_metrics`` of the trainer).

    ``predictions`` are ``(image_embeds, text_embeds)`` (one row per evaluated caption), ``label_ids``
    the image id of each row. Images are de-duplicated by id and scored with
    :func:`hqrs.modeling.recall.retrieval_metrics` (clip_benchmark protocol: every caption of an
    image is a positive): ``image_to_text_R@k``, ``text_to_image_R@k`` in percent and ``mean_recall``.
    """
    image_embeds, text_embeds = (
        torch.as_tensor(np.asarray(p), dtype=torch.float32) for p in eval_pred.predictions[:2]
    )
    image_ids = np.asarray(eval_pred.label_ids).reshape(-1)
    _, first, text_to_image = np.unique(image_ids, return_index=True, return_inverse=True)
    return recall_at_k(
        image_embeds[torch.as_tensor(first)], text_embeds, text_to_image.reshape(-1).tolist(), ks=ks
    )


# --------------------------------------------------------------------------------------------------
# Builder


def _training_arguments(
    training_args: TrainingArguments | dict | None, output_dir: str | os.PathLike | None
) -> TrainingArguments:
    if training_args is None or isinstance(training_args, dict):
        kwargs = dict(training_args or {})
        if output_dir is not None:
            kwargs["output_dir"] = os.fspath(output_dir)
        kwargs.setdefault("remove_unused_columns", False)
        kwargs.setdefault("label_names", [IMAGE_IDS])
        args = TrainingArguments(**kwargs)
    elif isinstance(training_args, TrainingArguments):
        args = training_args
        if output_dir is not None:
            args.output_dir = os.fspath(output_dir)
    else:
        raise ValueError(
            f"training_args must be TrainingArguments, a dict or None, got {type(training_args).__name__}"
        )
    if args.remove_unused_columns:
        # Samples are PIL images + strings until the collator runs; the column filter would drop them.
        logger.info("setting remove_unused_columns=False (samples are processed by the collator)")
        args.remove_unused_columns = False
    if args.label_names != [IMAGE_IDS]:
        args.label_names = [IMAGE_IDS]
    if args.ddp_find_unused_parameters is None:
        # The Trainer turns this on for a peft model (not a PreTrainedModel); every trainable weight is used
        # by the image-text forward, so spare DDP the extra graph traversal.
        args.ddp_find_unused_parameters = False
    return args


def _data_options(data: DataOptions | dict | None, augment: Any, seed: int) -> DataOptions:
    if data is None:
        options = DataOptions(seed=seed)
    elif isinstance(data, dict):
        options = DataOptions(**{"seed": seed, **data})
    elif isinstance(data, DataOptions):
        options = data
    else:
        raise ValueError(f"data must be DataOptions, a dict or None, got {type(data).__name__}")
    if augment is True:
        options.augment = RSAugment()
    elif isinstance(augment, dict):
        options.augment = RSAugment(**augment)
    elif isinstance(augment, RSAugment):
        options.augment = augment
    elif augment not in (None, False):
        raise ValueError(f"augment must be a bool, a dict, RSAugment or None, got {augment!r}")
    return options


def build_trainer(
    kind: str,
    model: str | os.PathLike | PreTrainedModel,
    dataset: Any,
    *,
    config: str | None = "pairs",
    split: str = "train",
    eval_split: str | float | Any | None = None,
    output_dir: str | os.PathLike | None = None,
    training_args: TrainingArguments | dict | None = None,
    processor: Any = None,
    lora: LoraArguments | dict | bool | None = None,
    augment: RSAugment | dict | bool | None = None,
    data: DataOptions | dict | None = None,
    streaming: bool = False,
    gather_with_grad: bool = True,
    padding: bool | str = "max_length",
    max_logit_scale: float | None = math.log(100),
    callbacks: list[TrainerCallback] | None = None,
) -> ImageTextTrainer:
    """A ``Trainer`` ready to fine-tune ``model`` on ``dataset`` (call ``.train()``).

    Args:
        kind: ``"clip"`` (HQRS-CLIP, transformers ``CLIPModel``) or ``"coca"`` (``RSCoCaModel``).
        model: model folder, Hub id or model object (then pass ``processor``).
        dataset: see :func:`~hqrs.modeling.training_data.load_training_dataset` (folder, Hub id or
            ``datasets`` object).
        config: dataset configuration: ``"pairs"`` (one caption per row) or ``"default"`` (a
            ``captions`` list per image; one is drawn per epoch).
        split: training split.
        eval_split: held-out data for evaluation: a split name, a fraction of the training images
            (held out by image), or a ``datasets`` object. Set ``eval_strategy`` in the training
            arguments to evaluate during training.
        output_dir: where checkpoints and the final model go (overrides ``training_args``).
        training_args: ``TrainingArguments`` or a dict of its fields (``remove_unused_columns`` is
            forced off and ``label_names`` to ``["image_ids"]``).
        processor: processor object or folder (default: the model folder's).
        lora: ``True``/``LoraArguments``/dict of its fields (``{"lora_r": 8}``) to train LoRA adapters
            instead of all weights.
        augment: ``True``/``RSAugment``/dict for the remote-sensing augmentations (training only).
        data: column names, seed (default: ``data_seed`` or ``seed`` of the arguments), image-error policy.
        streaming: read the dataset as an ``IterableDataset`` (``max_steps`` is then required).
        gather_with_grad: contrast against the whole multi-process batch (see the module doc).
        padding: tokenizer padding (open_clip pads to 77 tokens: ``"max_length"``).
        max_logit_scale: clamp of ``logit_scale`` after each step (open_clip's ln 100); ``None`` disables.
        callbacks: extra ``TrainerCallback``s.
    """
    args = _training_arguments(training_args, output_dir)
    if streaming and args.max_steps <= 0:
        raise ValueError(
            "streaming datasets have no length: set max_steps (--max-steps) to the number of optimizer steps"
        )
    if isinstance(eval_split, float) and streaming:  # checked before the model loads
        raise ValueError("a fractional eval_split needs a map-style dataset; name an eval split instead")
    seed = args.data_seed if args.data_seed is not None else args.seed
    options = _data_options(data, augment, seed)
    loaded, processor = load_model_and_processor(kind, model, processor=processor)

    train_rows = load_training_dataset(dataset, config=config, split=split, streaming=streaming)
    eval_rows = None
    if isinstance(eval_split, float):
        train_rows, eval_rows = split_by_image(
            train_rows, eval_split, seed=seed, image_id_column=options.image_id_column
        )
    elif isinstance(eval_split, str):
        eval_rows = load_training_dataset(dataset, config=config, split=eval_split, streaming=streaming)
    elif eval_split is not None:
        eval_rows = load_training_dataset(eval_split, config=config, split=split)

    from datasets import IterableDataset

    if isinstance(train_rows, IterableDataset):
        train_set: Any = StreamingImageCaptionDataset(train_rows, options, train=True)
    else:
        train_set = ImageCaptionDataset(train_rows, options, train=True)
    eval_set = None
    if eval_rows is not None:
        eval_set = (
            StreamingImageCaptionDataset(eval_rows, options, train=False)
            if isinstance(eval_rows, IterableDataset)
            else ImageCaptionDataset(eval_rows, options, train=False, all_captions=True)
        )

    if lora:
        lora_options = (
            LoraArguments() if lora is True else LoraArguments(**lora) if isinstance(lora, dict) else lora
        )
        loaded = apply_lora(loaded, lora_options)
    return ImageTextTrainer(
        model=loaded,
        gather_with_grad=gather_with_grad,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=ImageTextCollator(processor, padding=padding),
        processing_class=processor,
        compute_metrics=retrieval_metrics if eval_set is not None else None,
        callbacks=[_ImageTextCallback(train_set, max_logit_scale), *(callbacks or [])],
    )
