"""The declarative conversion engine: rules, inversion, strict failures, checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from hqrs.modeling.key_mapping import (
    KeyTable,
    MissingKeysError,
    Rule,
    UnmappedKeysError,
    check_complete,
    load_checkpoint,
)

TABLE = KeyTable(
    "demo",
    [
        Rule("emb", "embeddings.weight"),
        Rule("cls", "cls_token", "unsqueeze"),
        Rule(
            "blocks.{i}.in_proj_weight",
            ("layers.{i}.q.weight", "layers.{i}.k.weight", "layers.{i}.v.weight"),
            "split_qkv",
        ),
        Rule("blocks.{i}.ln.{p:weight|bias}", "layers.{i}.norm.{p}"),
        Rule("proj", "projection.weight", "transpose"),
    ],
)


def _source() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {
        "emb": torch.randn(5, 4, generator=g),
        "cls": torch.randn(4, generator=g),
        "proj": torch.randn(4, 3, generator=g),
    }
    for i in range(2):
        sd[f"blocks.{i}.in_proj_weight"] = torch.randn(12, 4, generator=g)
        sd[f"blocks.{i}.ln.weight"] = torch.randn(4, generator=g)
        sd[f"blocks.{i}.ln.bias"] = torch.randn(4, generator=g)
    return sd


def test_convert_and_exact_inverse():
    sd = _source()
    out = TABLE.convert(sd)
    assert torch.equal(out["layers.1.k.weight"], sd["blocks.1.in_proj_weight"][4:8])
    assert torch.equal(out["projection.weight"], sd["proj"].T)
    assert out["cls_token"].shape == (1, 4)
    assert torch.equal(out["layers.0.norm.bias"], sd["blocks.0.ln.bias"])
    back = TABLE.inverted().convert(out)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    assert TABLE.inverted().inverted().name == "demo"


def test_unmapped_and_duplicate_keys_are_all_listed():
    sd = _source()
    sd["stray.a"] = torch.zeros(1)
    sd["stray.b"] = torch.zeros(1)
    with pytest.raises(UnmappedKeysError) as info:
        TABLE.convert(sd)
    assert info.value.unmatched == ["stray.a", "stray.b"]
    assert "stray.a, stray.b" in str(info.value)
    assert isinstance(info.value, ValueError)

    clash = KeyTable("clash", [Rule("a", "x"), Rule("b", "x")])
    with pytest.raises(UnmappedKeysError, match="produced more than once: x"):
        clash.convert({"a": torch.zeros(1), "b": torch.zeros(1)})


def test_incomplete_merge_and_ambiguous_rules():
    inv = TABLE.inverted()
    out = TABLE.convert(_source())
    del out["layers.0.v.weight"]
    with pytest.raises(UnmappedKeysError, match="absent: layers.0.v.weight"):
        inv.convert(out)
    amb = KeyTable("amb", [Rule("a.{i}", "x.{i}"), Rule("a.{j:[0-9]}", "y.{j}")])
    with pytest.raises(UnmappedKeysError, match="more than one rule: a.3"):
        amb.convert({"a.3": torch.zeros(1)})


def test_long_key_lists_are_truncated():
    table = KeyTable("t", [Rule("keep", "keep")])
    sd = {f"junk.{i}": torch.zeros(1) for i in range(100)}
    with pytest.raises(UnmappedKeysError) as info:
        table.convert(sd)
    assert "… and 80 more" in str(info.value)
    assert len(info.value.unmatched) == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "a", "target": "b", "op": "flip"}, "op 'flip'"),
        ({"source": "a", "target": "b", "op": "split_qkv"}, "takes 1 source and 3 target"),
        ({"source": "a.{i}", "target": "b.{j}"}, "same placeholders"),
    ],
)
def test_bad_rules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Rule(**kwargs)


def test_op_errors_name_the_key():
    with pytest.raises(ValueError, match="blocks.0.in_proj_weight: cannot split shape"):
        TABLE.convert({**_source(), "blocks.0.in_proj_weight": torch.zeros(10, 4)})
    with pytest.raises(ValueError, match="cls_token: squeeze needs"):
        TABLE.inverted().convert({**TABLE.convert(_source()), "cls_token": torch.zeros(2, 4)})


def test_check_complete_lists_missing_unexpected_and_shapes():
    with pytest.raises(MissingKeysError) as info:
        check_complete(
            {"a": torch.zeros(2), "c": torch.zeros(1), "d": torch.zeros(3)},
            {"a": (3,), "b": (1,), "d": (3,)},
            context="loading x",
        )
    err = info.value
    assert err.missing == ["b"] and err.unexpected == ["c"]
    assert err.mismatched == ["a: got (2,) expected (3,)"]
    assert str(err).startswith("loading x: 1 missing key(s): b; 1 unexpected key(s): c;")
    check_complete({"a": torch.zeros(1)}, ["a"])  # keys only: passes


def test_load_checkpoint_unwraps_and_strips(tmp_path):
    w = torch.arange(6.0).reshape(2, 3)
    torch.save(
        {
            "epoch": 3,
            "name": "run",
            "state_dict": {"module.visual.proj": w, "module._orig_mod.logit_scale": torch.tensor(1.0)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        },
        tmp_path / "epoch_3.pt",
    )
    sd = load_checkpoint(tmp_path / "epoch_3.pt")
    assert sorted(sd) == ["logit_scale", "visual.proj"]
    assert torch.equal(sd["visual.proj"], w)
    save_file({"_orig_mod.a": w}, tmp_path / "w.safetensors")
    assert list(load_checkpoint(tmp_path / "w.safetensors")) == ["a"]


def test_load_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module: unpickling would import and build code
    with pytest.raises(ValueError, match=r"refused to load .*model\.pt.*weights_only=True") as info:
        load_checkpoint(path)
    assert "torch.nn.modules.linear.Linear" in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_checkpoint_truncated(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    sd = {"a": torch.randn(1000)}
    if suffix == ".pt":
        torch.save(sd, full)
    else:
        save_file(sd, full)
    data = full.read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cannot read checkpoint .*cut\{suffix}.*truncated"):
        load_checkpoint(bad)


def test_load_checkpoint_other_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="suffix '.npz'"):
        load_checkpoint(tmp_path / "w.npz")
    torch.save({"a": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="not a state dict: 1 entr.*step"):
        load_checkpoint(tmp_path / "mixed.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")
