"""The model-family registry (hqrs.modeling.families) and the one converter protocol (hqrs.modeling.conversion).

Every family is checked the same way: its names resolve to real classes and a converter of the protocol, the
registry finds it from a config, a model, a folder and an open_clip name, its LoRA targets exist in a real tiny
model, and its converter shares the empty-weight init, dtype check, shared-storage handling and open_clip file
writing with the others (one tiny real open_clip model per family).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from hqrs.modeling import families
from hqrs.modeling.conversion import OpenClipConverter, save_open_clip_state_dict
from hqrs.modeling.families import (
    FAMILIES,
    HQRS_CLIP,
    RESNET_CLIP,
    RS_COCA,
    family_for_model_type,
    family_of,
    family_of_open_clip,
)
from tests.test_layers import LAYER_OF

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
# one tiny open_clip architecture per family; the CoCa ViT is as wide as its pooler, so its attentional pooler
# keeps a fused in_proj that the converter splits into q/k/v views of one storage
TINY = {
    "hqrs-fam-vit": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": TEXT_CFG,
    },
    "hqrs-fam-rn": {
        "embed_dim": 16,
        "vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "head_width": 8},
        "text_cfg": TEXT_CFG,
    },
    "coca_hqrs-fam": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
            "attentional_pool": True,
            "attn_pooler_heads": 2,
            "attn_pooler_queries": 4,
            "output_tokens": True,
        },
        "text_cfg": {**TEXT_CFG, "context_length": 76, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        "custom_text": True,
    },
}
NAME_OF = {HQRS_CLIP.name: "hqrs-fam-vit", RESNET_CLIP.name: "hqrs-fam-rn", RS_COCA.name: "coca_hqrs-fam"}


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """Register the tiny architectures with open_clip; returns {family name: seeded open_clip model}."""
    folder = tmp_path_factory.mktemp("family_configs")
    for name, cfg in TINY.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    models = {}
    for family, name in NAME_OF.items():
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None).eval()
        with (
            torch.no_grad()
        ):  # defined values everywhere (open_clip leaves CoCa's text_projection torch.empty)
            for p in model.parameters():
                p.normal_(std=0.02)
        models[family] = model
    return models


# ------------------------------------------------------------------------------------------------ registry


def test_registry_names_resolve_within_the_layers():
    assert [f.name for f in FAMILIES] == ["hqrs-clip", "resnet-clip", "rs-coca"]
    assert len({f.model_type for f in FAMILIES}) == len(FAMILIES)
    for family in FAMILIES:
        for path in (family.model_class, family.config_class, family.processor_class, family.converter):
            module = path.partition(":")[0]
            # the lazily imported names obey the layers too: modeling code or transformers, nothing above
            assert module == "transformers" or LAYER_OF[module] == "modeling", path
        config_class = family.load_config_class()
        assert config_class.model_type == family.model_type
        assert family.load_model_class().config_class is config_class
        assert family.load_processor_class().__name__.endswith("Processor")
        converter = family.load_converter()
        assert isinstance(converter, OpenClipConverter) and converter.model_type == family.model_type
        assert family.ships_remote_code == bool(family.remote_files)
        for name in family.remote_files:  # shipped code files exist in the package, next to the classes
            assert Path(families.__file__).with_name(name).is_file(), name


def test_registry_module_stays_light():
    # hqrs push renders model cards from the registry: importing it must not pull torch/transformers/open_clip
    code = (
        "import sys, hqrs.modeling.families, hqrs.hub_cards.cards; "
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_family_of_config_model_folder_and_errors(tmp_path):
    from transformers import CLIPConfig

    from hqrs.modeling.configuration_rs_coca import RSCoCaConfig

    assert family_of(CLIPConfig()) is HQRS_CLIP
    assert family_of({"model_type": "resnet_clip"}) is RESNET_CLIP
    assert family_of(RS_COCA) is RS_COCA
    config = RSCoCaConfig()
    assert family_of(config) is RS_COCA

    class Wrapped:  # peft's PeftModel: get_base_model() is the real model
        def get_base_model(self):
            return type("Model", (), {"config": config})()

    assert family_of(Wrapped()) is RS_COCA
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet_clip"}))
    assert family_of(tmp_path) is RESNET_CLIP and family_of(str(tmp_path)) is RESNET_CLIP
    with pytest.raises(
        ValueError, match=r"model_type 'bert' is not an hqrs model family; expected one of 'clip'"
    ):
        family_for_model_type("bert")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        family_of(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        family_of(tmp_path)
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        family_of(tmp_path)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("ViT-B-32", HQRS_CLIP),
        ("ViT-L-14-336", HQRS_CLIP),
        ("RN50", RESNET_CLIP),
        ("RN101-quickgelu", RESNET_CLIP),
        ("coca_ViT-B-32", RS_COCA),
        ("coca_ViT-L-14", RS_COCA),
    ],
)
def test_family_of_open_clip_names(name, family):
    assert family_of_open_clip(name) is family
    family.load_converter().config_from_open_clip(name)  # the family's converter accepts the architecture


def test_unknown_open_clip_name_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"unknown open_clip architecture 'ViT-Q-7'; hqrs converts .* e\.g\. "
    ):
        family_of_open_clip("ViT-Q-7")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_lora_targets_exist_in_the_model(family, tiny_open_clip):
    model = family.load_converter().to_hf(
        NAME_OF[family.name], dict(tiny_open_clip[family.name].state_dict())
    )
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(family.lora_target_modules) <= linear, set(family.lora_target_modules) - linear


def test_lora_default_targets_are_the_registrys():
    from hqrs.modeling.training_lora import DEFAULT_LORA_TARGETS

    assert {tuple(f.lora_target_modules) for f in FAMILIES} == {tuple(DEFAULT_LORA_TARGETS)}


# ------------------------------------------------------------------------------------- converter protocol


def test_converters_share_one_signature():
    methods = (
        "config_from_open_clip",
        "to_hf",
        "to_open_clip",
        "save_hf",
        "save_open_clip",
        "build_processor",
    )
    for method in methods:
        signatures = {
            tuple(
                (p.name, p.kind, p.default)
                for p in inspect.signature(getattr(f.load_converter(), method)).parameters.values()
            )
            for f in FAMILIES
        }
        assert len(signatures) == 1, (method, signatures)
    # shared behaviour is inherited, never re-implemented per family
    for family in FAMILIES:
        cls = type(family.load_converter())
        for method in ("to_hf", "model_from_converted", "to_open_clip", "save_hf", "save_open_clip"):
            assert method not in vars(cls), f"{cls.__name__} overrides the shared {method}"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_same_conversion_behaviour_for_every_family(family, tiny_open_clip, tmp_path):
    converter = family.load_converter()
    name, oc = NAME_OF[family.name], tiny_open_clip[family.name]
    source = {k: v.clone() for k, v in oc.state_dict().items()}
    model = converter.to_hf(name, source)
    # empty-weight init: nothing left on the meta device (non-persistent buffers too), and no copies: the
    # model holds the source tensors themselves (transposed projections aside, which must be made contiguous)
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    source_ptrs = {v.untyped_storage().data_ptr() for v in source.values()}
    shared = [p for p in model.parameters() if p.untyped_storage().data_ptr() in source_ptrs]
    assert len(shared) >= len(list(model.parameters())) - 3
    assert model.config.dtype == torch.float32 and not model.training
    # the way back is exact, and the file writer gives shared storage its own copy
    back = converter.to_open_clip(model)
    assert back.keys() == oc.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in oc.state_dict().items())
    n = converter.save_open_clip(model, tmp_path / "sd.safetensors")
    assert n == len(back) and not (tmp_path / "sd.safetensors.partial").exists()
    loaded = load_file(tmp_path / "sd.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in oc.state_dict().items())
    converter.save_open_clip(model, tmp_path / "sd.pt", fmt="pt")
    oc.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True), strict=True)
    # the folder: save_pretrained's safetensors handling writes shared q/k/v views, the family's remote code
    folder = converter.save_hf(model, None, tmp_path / "hf")
    assert family_of(folder) is family
    assert all((folder / f).is_file() for f in family.remote_files)
    reloaded = family.load_model_class().from_pretrained(folder)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # mixed dtypes: the same error from every family
    half = {k: (v.half() if i == 0 else v) for i, (k, v) in enumerate(oc.state_dict().items())}
    with pytest.raises(ValueError, match="expected one floating-point dtype for all weights"):
        converter.to_hf(name, half)


def test_coca_fused_in_proj_is_split_into_views_until_saved(tiny_open_clip, tmp_path):
    converter = RS_COCA.load_converter()
    model = converter.to_hf(NAME_OF[RS_COCA.name], dict(tiny_open_clip[RS_COCA.name].state_dict()))
    pool = model.vision_model.attn_pool.attn
    ptrs = {p.weight.untyped_storage().data_ptr() for p in (pool.q_proj, pool.k_proj, pool.v_proj)}
    assert len(ptrs) == 1  # one fused in_proj storage, three disjoint views (no copy at conversion)
    converter.save_hf(model, None, tmp_path / "hf")  # save_pretrained gives each its own storage in the file
    reloaded = RS_COCA.load_model_class().from_pretrained(tmp_path / "hf").vision_model.attn_pool.attn
    assert torch.equal(reloaded.k_proj.weight, pool.k_proj.weight)


def test_save_open_clip_state_dict_errors_and_shared_storage(tmp_path):
    base = torch.arange(12.0).reshape(6, 2)
    state = {"a": base[:3], "b": base[3:], "t": base.t()}
    save_open_clip_state_dict(state, tmp_path / "x.safetensors", "safetensors")
    loaded = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="format 'npz' is not one of"):
        save_open_clip_state_dict(state, tmp_path / "x.npz", "npz")
