"""The model-family registry: everything hqrs knows about HQRS-CLIP, ResNet-CLIP and RS-CoCa, in one place.

A :class:`ModelFamily` (frozen dataclass) per family says which classes load it, which converter turns open_clip
checkpoints into it and back, which open_clip architectures map to it, where LoRA adapters go, what its model
card says and whether its folders ship remote code. ``hqrs convert``, ``hqrs train``, ``hqrs eval`` and the model
cards look families up here (:func:`family_of`, :func:`family_of_open_clip`) instead of switching on
``model_type`` strings.

The module stays light (no torch, transformers or open_clip at import: ``hqrs push`` renders model cards from
it): classes and converters are named ``"module:attribute"`` and imported on first use, as transformers' own
auto mappings do (``CONFIG_MAPPING_NAMES``); every name is in the ``modeling`` layer or in transformers
(``tests/test_families.py`` checks that each one resolves).

Adding a family: write its ``configuration_*``/``modeling_*``/``processing_*`` files (remote code: they import
nothing from ``hqrs``), a ``convert_*`` module with an :class:`~hqrs.modeling.conversion.OpenClipConverter`
subclass instance ``CONVERTER``, then one :class:`ModelFamily` entry in :data:`FAMILIES` below.

Example:
    >>> from hqrs.modeling.families import FAMILIES, family_for_model_type
    >>> [f.name for f in FAMILIES]
    ['hqrs-clip', 'resnet-clip', 'rs-coca']
    >>> family_for_model_type("rs_coca").train_kind, family_for_model_type("rs_coca").remote_files[0]
    ('coca', 'configuration_rs_coca.py')
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hqrs.dataset_builder.io import load_json_utf8

from .rs_coca_files import REMOTE_CODE_FILES as RS_COCA_REMOTE_FILES
from .rs_coca_files import save_rs_coca_remote_code

__all__ = [
    "FAMILIES",
    "HQRS_CLIP",
    "LORA_TARGET_MODULES",
    "RESNET_CLIP",
    "RS_COCA",
    "CardFacts",
    "ModelFamily",
    "family_for_model_type",
    "family_of",
    "family_of_open_clip",
    "register_auto_classes",
]

# The placeholder every usage snippet loads from; the model card swaps in the repo id.
REPO_PLACEHOLDER = "{repo_id}"

#: transformers' names of the attention and MLP projections (CLIP, ResNet-CLIP's text tower and attention pool,
#: RS-CoCa's towers, attentional pooler and decoder): where ``hqrs train --lora`` puts adapters.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class CardFacts:
    """What a family's model card says about the architecture (``hqrs push`` / :mod:`hqrs.hub_cards.cards`)."""

    pipeline_tag: str
    architecture: str  # one sentence: the towers and heads
    paper: str  # the architecture's paper (title, authors, year, arXiv id)
    summary: str
    usage: str  # python snippet; REPO_PLACEHOLDER stands for the repo id
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelFamily:
    """One model family (see the module docstring).

    Args:
        name: registry name (``"hqrs-clip"``).
        display: name in messages and cards (``"HQRS-CLIP"``).
        model_type: ``config.json`` ``model_type``.
        train_kind: the ``hqrs train`` sub-command that fine-tunes it (``"clip"`` or ``"coca"``).
        model_class / config_class / processor_class: ``"module:attribute"`` of the transformers classes.
        converter: ``"module:attribute"`` of its :class:`~hqrs.modeling.conversion.OpenClipConverter`.
        open_clip_tower: which open_clip architectures map to it: ``"vit"`` (ViT CLIP), ``"modified_resnet"``
            (RN50-style CLIP) or ``"coca"`` (a config with ``multimodal_cfg``).
        card: the model-card facts.
        lora_target_modules: module names LoRA adapts (suffix match, as in peft; default
            :data:`LORA_TARGET_MODULES`, the attention and MLP projections every family names alike).
        remote_files: code files every saved folder ships (empty: plain transformers).
        remote_code_writer: writes those files and the ``auto_map`` into a saved folder; ``None`` when
            ``save_pretrained`` does it itself (classes registered with ``register_for_auto_class``) or there is
            no remote code.
        auto_classes: transformers auto classes hqrs registers its own classes with in-process
            (:func:`register_auto_classes`), so that a folder's code never runs inside hqrs.
        text_padding: how ``hqrs eval`` pads captions: ``"longest"`` only where the text embedding provably
            does not depend on padding.
    """

    name: str
    display: str
    model_type: str
    train_kind: str
    model_class: str
    config_class: str
    processor_class: str
    converter: str
    open_clip_tower: str
    card: CardFacts
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    remote_files: tuple[str, ...] = ()
    remote_code_writer: Callable[[str | os.PathLike], Any] | None = None
    auto_classes: tuple[str, ...] = ()
    text_padding: str = "max_length"

    # -- lazily imported parts (see the module docstring) ---------------------------------------------------
    def load_model_class(self) -> type:
        return _resolve(self.model_class)

    def load_config_class(self) -> type:
        return _resolve(self.config_class)

    def load_processor_class(self) -> type:
        return _resolve(self.processor_class)

    def load_converter(self) -> Any:
        """The family's :class:`~hqrs.modeling.conversion.OpenClipConverter` instance."""
        return _resolve(self.converter)

    @property
    def ships_remote_code(self) -> bool:
        return bool(self.remote_files)

    def write_remote_code(self, folder: str | os.PathLike) -> None:
        """After ``save_pretrained`` into ``folder``: make it load without hqrs (no-op where nothing is needed)."""
        if self.remote_code_writer is not None:
            self.remote_code_writer(folder)

    def matches_open_clip(self, cfg: Mapping[str, Any], model_name: str = "") -> bool:
        """Whether the open_clip model config ``cfg`` (of architecture ``model_name``) belongs to this family."""
        return _open_clip_tower(cfg, model_name) == self.open_clip_tower


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _open_clip_tower(cfg: Mapping[str, Any], model_name: str = "") -> str:
    if "multimodal_cfg" in cfg or model_name.startswith("coca_"):
        return "coca"
    if isinstance(dict(cfg.get("vision_cfg") or {}).get("layers"), (list, tuple)):
        return "modified_resnet"
    return "vit"


def _zero_shot_usage(extra: str = "") -> str:
    return f"""from PIL import Image
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{REPO_PLACEHOLDER}"{extra})
image = Image.open("scene.jpg").convert("RGB")  # any RGB remote-sensing image
labels = ["airport", "farmland", "harbor", "residential area"]
print(classifier(image, candidate_labels=labels, hypothesis_template="a satellite image of {{}}."))"""


_CLIP_PAPER = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, 2021 (arXiv:2103.00020)"

HQRS_CLIP = ModelFamily(
    name="hqrs-clip",
    display="HQRS-CLIP",
    model_type="clip",
    train_kind="clip",
    model_class="transformers:CLIPModel",
    config_class="transformers:CLIPConfig",
    processor_class="transformers:CLIPProcessor",
    converter="hqrs.modeling.convert_clip:CONVERTER",
    open_clip_tower="vit",
    card=CardFacts(
        pipeline_tag="zero-shot-image-classification",
        architecture="CLIP (transformers `CLIPModel`): ViT image encoder, causal text encoder, contrastive heads",
        paper=_CLIP_PAPER,
        summary=(
            "A CLIP model fine-tuned on MpGI captions of remote-sensing images, for zero-shot scene "
            "classification and image-text retrieval. It loads with plain transformers (no remote code)."
        ),
        usage=_zero_shot_usage(),
        tags=("clip", "zero-shot-image-classification"),
    ),
    # causal text tower pooled at the first <end_of_text>: padding after it changes nothing
    text_padding="longest",
)

RESNET_CLIP = ModelFamily(
    name="resnet-clip",
    display="HQRS-CLIP (ResNet)",
    model_type="resnet_clip",
    train_kind="clip",
    model_class="hqrs.modeling.modeling_resnet_clip:ResNetCLIPModel",
    config_class="hqrs.modeling.configuration_resnet_clip:ResNetCLIPConfig",
    processor_class="hqrs.modeling.processing_resnet_clip:ResNetCLIPProcessor",
    converter="hqrs.modeling.convert_resnet_clip:CONVERTER",
    open_clip_tower="modified_resnet",
    card=CardFacts(
        pipeline_tag="zero-shot-image-classification",
        architecture=(
            "CLIP with a ModifiedResNet image encoder (3-convolution stem, anti-aliased bottleneck stages, "
            "attention pooling; open_clip RN50/RN101) and a causal text encoder, contrastive heads"
        ),
        paper=_CLIP_PAPER,
        summary=(
            "A ResNet CLIP model fine-tuned on MpGI captions of remote-sensing images, for zero-shot scene "
            "classification and image-text retrieval. It loads with transformers and trust_remote_code=True."
        ),
        usage=_zero_shot_usage(", trust_remote_code=True"),
        tags=("clip", "zero-shot-image-classification", "custom_code"),
    ),
    remote_files=("configuration_resnet_clip.py", "modeling_resnet_clip.py", "processing_resnet_clip.py"),
    # ResNetCLIPModel/-Config are registered with register_for_auto_class: save_pretrained copies the code
)

RS_COCA = ModelFamily(
    name="rs-coca",
    display="RS-CoCa",
    model_type="rs_coca",
    train_kind="coca",
    model_class="hqrs.modeling.modeling_rs_coca:RSCoCaModel",
    config_class="hqrs.modeling.configuration_rs_coca:RSCoCaConfig",
    processor_class="hqrs.modeling.processing_rs_coca:RSCoCaProcessor",
    converter="hqrs.modeling.convert_rs_coca:CONVERTER",
    open_clip_tower="coca",
    card=CardFacts(
        pipeline_tag="image-text-to-text",
        architecture=(
            "CoCa: ViT image encoder with attentional pooling, causal text encoder and a multimodal "
            "text decoder with cross-attention (contrastive + captioning heads)"
        ),
        paper="Yu et al., CoCa: Contrastive Captioners are Image-Text Foundation Models, 2022 (arXiv:2205.01917)",
        summary=(
            "A CoCa model fine-tuned on MpGI captions of remote-sensing images: it writes captions with "
            "`generate()` and embeds images and texts for retrieval."
        ),
        usage=f"""from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{REPO_PLACEHOLDER}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{REPO_PLACEHOLDER}", trust_remote_code=True)
image = Image.open("scene.jpg").convert("RGB")  # any RGB remote-sensing image
inputs = processor(images=image, return_tensors="pt")
tokens = model.generate(**inputs)  # beam search, 3 beams (generation_config.json)
print(processor.batch_decode(tokens)[0])

# image and text embeddings for retrieval (BaseModelOutputWithPooling, as CLIPModel):
# model.get_image_features(...).pooler_output / model.get_text_features(...).pooler_output""",
        tags=("coca", "image-captioning", "custom_code"),
    ),
    remote_files=RS_COCA_REMOTE_FILES,
    remote_code_writer=save_rs_coca_remote_code,
    auto_classes=("AutoModel", "AutoModelForImageTextToText"),
)

#: Every family hqrs knows, in a fixed order.
FAMILIES: tuple[ModelFamily, ...] = (HQRS_CLIP, RESNET_CLIP, RS_COCA)
_BY_MODEL_TYPE = {f.model_type: f for f in FAMILIES}


def family_for_model_type(model_type: str | None) -> ModelFamily:
    """The family whose ``config.json`` says ``model_type``.

    Raises:
        ValueError: no family has that ``model_type``; the message lists the known ones.
    """
    if model_type not in _BY_MODEL_TYPE:
        known = ", ".join(f"{f.model_type!r} ({f.display})" for f in FAMILIES)
        raise ValueError(f"model_type {model_type!r} is not an hqrs model family; expected one of {known}")
    return _BY_MODEL_TYPE[model_type]


def family_of(config_or_folder: Any) -> ModelFamily:
    """The family of a config (``PretrainedConfig`` or ``config.json`` dict), a model (also a peft model), a
    :class:`ModelFamily`, or a saved model folder (its ``config.json``).

    Raises:
        FileNotFoundError: a folder without ``config.json``.
        ValueError: malformed ``config.json``, or a ``model_type`` no family has.

    Example:
        >>> family_of({"model_type": "resnet_clip"}).display
        'HQRS-CLIP (ResNet)'
    """
    x = config_or_folder
    if isinstance(x, ModelFamily):
        return x
    if isinstance(x, (str, os.PathLike)):
        return family_for_model_type(_folder_model_type(Path(x)))
    if isinstance(x, Mapping):
        return family_for_model_type(x.get("model_type"))
    if hasattr(x, "get_base_model"):  # a peft model
        x = x.get_base_model()
    config = getattr(x, "config", x)
    return family_for_model_type(getattr(config, "model_type", None))


def _folder_model_type(folder: Path) -> str | None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json; give a model folder written by save_pretrained (e.g. by "
            "`hqrs convert`)"
        )
    config = load_json_utf8(config_file, "model config")
    if not isinstance(config, dict):
        raise ValueError(f"{str(config_file)!r} holds a JSON {type(config).__name__}, expected an object")
    return config.get("model_type")


def family_of_open_clip(model_name: str) -> ModelFamily:
    """The family an open_clip architecture converts to (``ViT-B-32`` -> HQRS-CLIP, ``RN50`` -> ResNet-CLIP,
    ``coca_ViT-B-32`` -> RS-CoCa), from ``open_clip.get_model_config(model_name)``.

    Raises:
        ValueError: ``model_name`` is not an open_clip architecture (registered configs count).

    Example:
        >>> family_of_open_clip("RN101-quickgelu").name
        'resnet-clip'
    """
    import open_clip

    cfg = open_clip.get_model_config(model_name) if isinstance(model_name, str) and model_name else None
    if cfg is None:
        examples = [n for n in open_clip.list_models() if n.startswith(("ViT-B", "RN", "coca_"))]
        raise ValueError(
            f"unknown open_clip architecture {model_name!r}; hqrs converts open_clip ViT CLIPs, ModifiedResNet "
            f"CLIPs and CoCa models, e.g. {', '.join(examples[:10])}, … (open_clip.list_models())"
        )
    tower = _open_clip_tower(cfg, model_name)
    return next(f for f in FAMILIES if f.open_clip_tower == tower)


def register_auto_classes() -> None:
    """Register hqrs' own classes of every family with ``auto_classes`` (RS-CoCa) with ``AutoConfig``, those
    auto classes and ``AutoProcessor`` (idempotent).

    Afterwards transformers treats the family's ``model_type`` as known in this process: it loads such folders
    with hqrs' classes and never runs (or prompts to run) a folder's own code, even with
    ``trust_remote_code=True``.
    """
    import transformers

    for family in FAMILIES:
        if not family.auto_classes:
            continue
        config_class = family.load_config_class()
        transformers.AutoConfig.register(family.model_type, config_class, exist_ok=True)
        for auto in family.auto_classes:
            getattr(transformers, auto).register(config_class, family.load_model_class(), exist_ok=True)
        transformers.AutoProcessor.register(config_class, family.load_processor_class(), exist_ok=True)
