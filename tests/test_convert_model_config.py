"""``hqrs convert open-clip --model-config FILE``: an open_clip architecture of your own (#15.8).

The README's running example converts small stand-in checkpoints made from such configs; the round trip
here checks that the folder is a real ``CLIPModel`` / RS-CoCa folder and that the way back gives exactly the
open_clip state dict, loadable with ``strict=True``.
"""

from __future__ import annotations

import json

import pytest
import torch

from hqrs.scripts import cli

_TOWER = {"width": 64, "heads": 1, "layers": 1, "context_length": 77, "vocab_size": 49408}
_VISION = {"image_size": 32, "patch_size": 16, "width": 64, "head_width": 64, "layers": 1}
CONFIGS = {
    "hqrs-test-clip-cfg": {"embed_dim": 32, "quick_gelu": True, "vision_cfg": _VISION, "text_cfg": _TOWER},
    "coca_hqrs-test-cfg": {
        "embed_dim": 64,  # CoCa: the decoder width (no projection between pooled image tokens and decoder)
        "vision_cfg": {**_VISION, "attentional_pool": True, "attn_pooler_heads": 1, "output_tokens": True},
        "text_cfg": {**_TOWER, "context_length": 76, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {**_TOWER, "context_length": 76, "attn_pooler_heads": 1},
        "custom_text": True,
    },
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_convert_with_model_config_round_trips(tmp_path, name, capsys):
    import open_clip
    from safetensors.torch import load_file

    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps(CONFIGS[name]), encoding="utf-8")
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(0)
    original = open_clip.create_model(name, pretrained=None)
    # open_clip leaves CoCa's text_decoder.text_projection as torch.empty: uninitialised memory may hold NaNs,
    # which torch.equal never finds equal (the test failed at random); give every weight defined values
    with torch.no_grad():
        for param in original.parameters():
            param.normal_(std=0.02)
    torch.save(original.state_dict(), tmp_path / "ckpt.pt")

    out = tmp_path / "hf"
    assert cli.main(["convert", "open-clip", "--model-config", str(cfg_file), "--checkpoint",
                     str(tmp_path / "ckpt.pt"), "--out", str(out)]) == 0  # fmt: skip
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["open_clip_model_name"] == name
    assert config["model_type"] == ("rs_coca" if name.startswith("coca_") else "clip")
    back = tmp_path / "back.safetensors"
    assert (
        cli.main(["convert", "to-open-clip", str(out), "--model-config", str(cfg_file), "--out", str(back)])
        == 0
    )
    sd = load_file(str(back))
    fresh = open_clip.create_model(name, pretrained=None)
    fresh.load_state_dict(sd, strict=True)
    for key, value in original.state_dict().items():
        assert torch.equal(sd[key], value), key
    assert f"open_clip.create_model({name!r})" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("file_name", "content", "extra", "message"),
    [
        ("x-cfg.json", {"embed_dim": 8}, [], "lacks vision_cfg, text_cfg"),
        ("x-cfg.json", "not json", [], "not valid JSON"),
        (
            "x-cfg.json",
            CONFIGS["hqrs-test-clip-cfg"],
            ["--model-name", "ViT-B-32"],
            "differs from the architecture",
        ),
        ("ViT-B-32.json", CONFIGS["hqrs-test-clip-cfg"], [], "would replace open_clip's own architecture"),
        ("x-cfg.yaml", CONFIGS["hqrs-test-clip-cfg"], [], "must be a .json file"),
    ],
)
def test_model_config_errors_name_the_file_and_fix(tmp_path, capsys, file_name, content, extra, message):
    cfg_file = tmp_path / file_name
    cfg_file.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    rc = cli.main(["convert", "open-clip", "--model-config", str(cfg_file), "--checkpoint",
                   str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "out"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("hqrs: error:") and message in err, err


def test_convert_needs_a_model_name_or_config(tmp_path, capsys):
    rc = cli.main(
        ["convert", "open-clip", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o")]
    )
    assert rc != 0 and "give --model-name" in capsys.readouterr().err
