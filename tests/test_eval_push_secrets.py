"""`hqrs push --dry-run` finds secrets in every staged file (#12.3, push side): values of the token
variables that are set (HF_TOKEN, OPENAI_API_KEY, the recipe's api_key_env targets) and every Hugging
Face token format, in cards, JSON, compressed parquet text columns (nested too) and binary files;
the error names file, column, row and variable but never the secret."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_models

from hqrs.scripts import cli

SECRET = "s3cr3t-Value-0123456789abcdef"  # not token-shaped: only the value check can find it
HF_LIKE = "hf_" + "Zq7" * 12  # token-shaped, set nowhere


@pytest.fixture(scope="module")
def build(tmp_path_factory, rs_real):
    root = tmp_path_factory.mktemp("sec")
    for cls in ("Beach", "Pond"):
        shutil.copytree(rs_real / "aid_classification" / cls, root / "AID" / cls)
    assert cli.main(["-q", "build", "--source", f"folder:{root / 'AID'}", "--out", str(root / "b")]) == 0
    return root / "b"


@pytest.fixture(autouse=True)
def _no_real_tokens(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "MY_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token from this machine


def _plant(build, tmp_path, column, value, config="full", row=1):
    """A copy of the build whose `config` train shard holds `value` in `column` row `row` (zstd pages, no
    statistics: the value is only in the compressed data pages)."""
    dst = tmp_path / "leaky"
    shutil.copytree(build, dst)
    shard = next((dst / "data" / config).glob("train-*.parquet"))
    table = pq.read_table(shard)
    cells = table.column(column).to_pylist()
    cells[row] = [*cells[row][:-1], cells[row][-1] + " " + value] if isinstance(cells[row], list) else value
    table = table.set_column(
        table.schema.get_field_index(column), column, pa.array(cells, table.schema.field(column).type)
    )
    pq.write_table(table, shard, compression="zstd", write_statistics=False)
    return dst


def _push_dataset(folder, out, *extra):
    return cli.main(
        ["-q", "push", "dataset", str(folder), "--repo-id", "me/x", "--dry-run", str(out), *extra]
    )


def test_clean_build_passes_with_tokens_set(build, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "x" * 40)
    assert _push_dataset(build, tmp_path / "ok") == 0


@pytest.mark.parametrize(
    "variable, column, config",
    [
        ("HF_TOKEN", "rule_text", "full"),
        ("OPENAI_API_KEY", "captions", "default"),
        ("MY_ENDPOINT", "caption", "pairs"),
    ],
)
def test_secret_value_in_a_compressed_parquet_text_column(
    build, tmp_path, monkeypatch, capsys, variable, column, config
):
    monkeypatch.setenv(variable, SECRET)
    leaky = _plant(build, tmp_path, column, SECRET, config=config)
    if variable == "MY_ENDPOINT":  # not secret by its name: known only as the recipe's api_key_env
        run = leaky / "mpgi_run"
        recipe = json.loads((run / "recipe.json").read_text())
        recipe["backends"] = {"vlm": {"api_key_env": "MY_ENDPOINT"}}
        (run / "recipe.json").write_text(json.dumps(recipe))
    assert _push_dataset(leaky, tmp_path / "stage") == 1
    err = capsys.readouterr().err
    shard = next((leaky / "data" / config).glob("train-*.parquet")).name
    assert f"data/{config}/{shard}: column '{column}' (row 1) contains the value of ${variable}" in err
    assert SECRET not in err


def test_token_formats_in_parquet_card_and_binary_files(build, tmp_path, capsys):
    leaky = _plant(build, tmp_path, "rule_text", HF_LIKE)
    assert _push_dataset(leaky, tmp_path / "s1") == 1
    err = capsys.readouterr().err
    assert "column 'rule_text' (row 1) contains a Hugging Face token" in err and HF_LIKE not in err
    # a PNG plot with a token in a text chunk
    png = tmp_path / "plot.png"
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "api_org_" + "Q" * 34)
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    assert _push_dataset(build, tmp_path / "s2", "--plot", str(png)) == 1
    err = capsys.readouterr().err
    assert "stats/plot.png: contains a Hugging Face token" in err and "Q" * 34 not in err


def test_token_in_a_model_card(tmp_path, capsys, monkeypatch):
    model = tiny_models.tiny_clip_dir(tmp_path / "m")
    training = tmp_path / "training.md"
    training.write_text(f"Trained with HF_TOKEN={SECRET} and {HF_LIKE}.")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    argv = ["-q", "push", "model", str(model), "--repo-id", "me/m", "--training", str(training)]
    assert cli.main([*argv, "--dry-run", str(tmp_path / "stage")]) == 1
    err = capsys.readouterr().err
    assert (
        "README.md: contains the value of $HF_TOKEN" in err
        and "README.md: contains a Hugging Face token" in err
    )
    assert SECRET not in err and HF_LIKE not in err
