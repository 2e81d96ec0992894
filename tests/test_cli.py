"""The ``hqrs`` command frame: help, version, logging, ``--config-file`` and ``hqrs env``."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from hqrs.scripts import cli, env


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hqrs" in out
    assert "env" in out


def test_version_matches_distribution(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"hqrs {metadata.version('hqrs')}"


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "argv, own, libs",
    [
        ([], logging.INFO, logging.WARNING),
        (["-v"], logging.DEBUG, logging.INFO),
        (["-vv"], logging.DEBUG, logging.DEBUG),
        (["-q"], logging.WARNING, logging.WARNING),
        (["-qq"], logging.ERROR, logging.ERROR),
        (["env", "-q", "--json"], logging.WARNING, logging.WARNING),
    ],
)
def test_verbosity_flags(argv, own, libs, capsys):
    argv = argv if "env" in argv else [*argv, "env", "--json"]
    assert cli.main(argv) == 0
    assert logging.getLogger("hqrs").level == own
    assert logging.getLogger("transformers").level == libs
    capsys.readouterr()


def test_env_json_reports_versions_device_and_offline(capsys):
    assert cli.main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from importlib import metadata

    for label, dist in env.PACKAGES:
        try:
            expected = metadata.version(dist)
        except metadata.PackageNotFoundError:
            expected = "not installed"
        assert info[label] == expected
    assert info["device"] in {"cpu", "cuda", "mps"}
    assert info["hub offline (huggingface_hub)"] is True  # conftest sets HF_HUB_OFFLINE=1
    assert info["HF_HUB_OFFLINE"] == "1"


def test_env_text_has_one_line_per_key(capsys):
    assert cli.main(["env"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("- ")]
    assert {line.split(":")[0][2:] for line in lines} >= {"hqrs", "python", "torch", "transformers", "device"}


def test_config_file_sets_defaults_and_flags_win(tmp_path, capsys):
    cfg = tmp_path / "env.yaml"
    cfg.write_text("json: true\n")
    args = cli.parse_args(["env", "--config-file", str(cfg)])
    assert args.json is True
    # a flag given on the command line overrides the file
    cfg.write_text("json: false\n")
    args = cli.parse_args(["env", "--config-file", str(cfg), "--json"])
    assert args.json is True
    # the file applies only to the parse that named it
    assert cli.parse_args(["env"]).json is False


@pytest.mark.parametrize(
    "content, message",
    [
        ("nonsense: 1\n", "unknown option 'nonsense'"),
        ("- a\n- b\n", "must hold a mapping"),
        ("json: [unclosed\n", "not valid YAML"),
    ],
)
def test_config_file_errors_name_the_problem(tmp_path, capsys, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    assert cli.main(["env", "--config-file", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["env", "--config-file", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_runs_in_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "hqrs.scripts.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("hqrs ")


def test_network_guard_blocks_non_loopback():
    from pytest_socket import SocketConnectBlockedError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.1)
        with pytest.raises(SocketConnectBlockedError, match="192.0.2.1"):
            s.connect(("192.0.2.1", 80))  # TEST-NET-1, never routed


def test_network_guard_allows_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with server, socket.create_connection(server.getsockname(), timeout=2):
        pass


def test_rs_real_fixture(rs_real):
    assert (rs_real / "SOURCES.md").is_file()


def test_config_file_supplies_required_options_and_positionals(tmp_path):
    """#15.3: required options (``--model``/``--dataset``/``--output-dir``) and positionals come from the file."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"model: m\ndataset: d\noutput-dir: {tmp_path / 'o'}\n")
    args = cli.parse_args(["train", "clip", "--config-file", str(cfg)])
    assert (args.model, args.dataset, args.output_dir) == ("m", "d", str(tmp_path / "o"))
    # a flag on the command line still wins over the file
    args = cli.parse_args(["train", "clip", "--config-file", str(cfg), "--model", "other"])
    assert args.model == "other"
    zs = tmp_path / "zs.yaml"
    zs.write_text("model: m\ndataset: folder:x\n")
    args = cli.parse_args(["eval", "zeroshot", "--config-file", str(zs)])
    assert (str(args.model), args.dataset) == ("m", "folder:x")
    # a positional from the file (hqrs eval dataset DIR)
    pos = tmp_path / "pos.yaml"
    pos.write_text(f"dataset: {tmp_path}\n")
    positional = [
        a.dest
        for a in cli._chosen_leaf(cli.build_parser(), ["eval", "dataset"]).options
        if not a.option_strings
    ]
    if positional:
        pos.write_text(f"{positional[0]}: {tmp_path}\n")
        args = cli.parse_args(["eval", "dataset", "--config-file", str(pos)])
        assert str(getattr(args, positional[0])) == str(tmp_path)


def test_config_file_missing_required_still_named(tmp_path, capsys):
    cfg = tmp_path / "partial.yaml"
    cfg.write_text("model: m\n")
    with pytest.raises(SystemExit):
        cli.parse_args(["train", "clip", "--config-file", str(cfg)])
    assert "--dataset" in capsys.readouterr().err


def test_help_does_not_load_the_engine():
    """``hqrs --help`` builds every sub-command's parser without importing datatrove or torch (start-up)."""
    code = (
        "import sys; from hqrs.scripts import cli; cli.build_parser(); "
        "heavy = [m for m in ('datatrove', 'torch', 'transformers', 'hqrs.dataset_builder.mpgi.engine') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _all_parsers(parser, path=("hqrs",)):
    """Every parser of the CLI tree with its command path (``hqrs train clip``), the full parser of a
    lazily built command (``hqrs train clip``: HfArgumentParser) included."""
    yield " ".join(path), parser
    if parser.get_default("lazy_parser") is not None:
        yield " ".join(path) + " (full)", parser.get_default("lazy_parser")(" ".join(path))
    if parser.subcommands is not None:
        for name, sub in parser.subcommands.choices.items():
            yield from _all_parsers(sub, (*path, name))


def test_every_help_is_plain_text_and_lists_each_option_once():
    """#15.12: `hqrs convert --help` showed reST (``...``), `hqrs train --help` each Trainer option twice
    (``--learning-rate LEARNING_RATE, --learning_rate LEARNING_RATE``)."""
    import re

    seen = 0
    for path, parser in _all_parsers(cli.build_parser()):
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text, f"{path} --help shows reST markup"
        for line in text.splitlines():
            flags = re.findall(r"(?<![\w-])--[\w-]+", line.split("  ", 2)[1] if line.startswith("  ") else "")
            canon = [f.replace("_", "-") for f in flags]
            assert len(canon) == len(set(canon)), f"{path} --help lists an option twice: {line.strip()!r}"
        seen += 1
    assert seen > 15


def test_train_takes_trainer_spelling_of_options():
    """The TrainingArguments spelling (--learning_rate) still parses, though help shows it once."""
    args = cli.parse_args(
        ["train", "clip", "--model", "m", "--dataset", "d", "--output-dir", "o", "--learning_rate", "0.5"]
    )
    assert args.learning_rate == 0.5
    args = cli.parse_args(
        ["train", "clip", "--model", "m", "--dataset", "d", "--output-dir", "o", "--learning-rate", "0.25"]
    )
    assert args.learning_rate == 0.25


def test_config_file_keys_are_flag_names(tmp_path, capsys):
    """A config key is the flag's name (`format:` for --format, `no-progress:` for --no-progress), not only
    the internal destination; a non-UTF-8 file is an error that names it."""
    cfg = tmp_path / "b.yaml"
    cfg.write_text("format: webdataset\nout: o\ndemo: true\nno-progress: true\n")
    args = cli.parse_args(["build", "--config-file", str(cfg)])
    assert (args.fmt, str(args.out), args.demo, args.progress) == ("webdataset", "o", True, False)
    cfg.write_text("no-progress: 3\n")
    assert cli.main(["build", "--config-file", str(cfg)]) == 2
    assert "no-progress is a flag" in capsys.readouterr().err
    cfg.write_text("formt: parquet\n")
    assert cli.main(["build", "--config-file", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'formt'" in err and "format" in err and "fmt" not in err
    cfg.write_bytes(b"\xff\xfeout: x\n")
    assert cli.main(["build", "--config-file", str(cfg)]) == 2
    assert f"{str(cfg)!r} is not UTF-8" in capsys.readouterr().err


def test_quiet_before_the_command_silences_datatrove(tmp_path):
    """`hqrs -qq build ...` prints only its result line: no datatrove log lines, no progress bars."""
    out = subprocess.run(
        [sys.executable, "-m", "hqrs.scripts.cli", "-qq", "build", "--demo", "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == "" and out.stdout.startswith("HQRS-IT written to")


def test_command_parser_records_every_option_and_subcommand():
    """#16.5: --config-file reads the options CommandParser recorded, not argparse's private ``_actions``."""
    parser = cli.CommandParser(prog="x")
    direct = parser.add_argument("--a")
    group = parser.add_argument_group("g")
    grouped = group.add_argument("--b", type=int)
    exclusive = group.add_mutually_exclusive_group()
    one, two = exclusive.add_argument("--c", action="store_true"), exclusive.add_argument("--d")
    top = parser.add_mutually_exclusive_group()
    three = top.add_argument("--e")
    sub = parser.add_subparsers(dest="cmd")
    leaf = cli.leaf_parser(sub, "run", [])
    positional = leaf.add_argument("path")
    assert [a.dest for a in parser.options] == ["help", "a", "b", "c", "d", "e"]
    assert parser.options[1:] == [direct, grouped, one, two, three]
    assert parser.subcommands.choices["run"] is leaf and leaf.options[-1] is positional
    assert cli._chosen_leaf(parser, ["--a", "1", "run"]) is leaf
    with pytest.raises(SystemExit):
        parser.parse_args(["--c", "--d", "x"])  # the exclusive group still works
    assert parser.parse_args(["--b", "3", "run", "p"]).b == 3


def _config_error(tmp_path, capsys, text: str, argv=("build",)) -> str:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert cli.main([*argv, "--config-file", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hqrs: error: ")
    return err.strip().removeprefix("hqrs: error: ").replace(repr(str(cfg)), "FILE")


def test_config_file_values_are_checked_as_argparse_checks_them(tmp_path, capsys):
    """#1: a value from --config-file gets the option's kind, as on the command line: one string for a
    repeatable option is a one-element list (not one source per character), a bool only for a flag and a
    flag only a bool, each value through the option's type and choices."""
    spec = "dota:rs_real/detection_dota/labelTxt?images=rs_real/detection_dota/images"
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(f"source: '{spec}'\nout: o\nshard-size: 500\ndemo: no\n")
    args = cli.parse_args(["build", "--config-file", str(cfg)])
    assert (args.source, args.shard_size, args.demo) == ([spec], "500", False)
    cfg.write_text(f"source: ['{spec}', 'folder:x']\nout: o\nno-progress: yes\n")
    args = cli.parse_args(["build", "--config-file", str(cfg)])
    assert (args.source, args.progress) == ([spec, "folder:x"], False)
    assert _config_error(tmp_path, capsys, "out: o\nshard-size: true\n") == (
        "--config-file FILE: shard-size takes a value (--shard-size SHARD_SIZE), not the bool True: it is not "
        "a flag (quote it if you mean the text 'true')"
    )
    assert _config_error(tmp_path, capsys, "out: o\ndemo: yes-please\n") == (
        "--config-file FILE: demo is a flag: use true or false, got 'yes-please'"
    )
    assert _config_error(tmp_path, capsys, "out: [a, b]\n") == (
        "--config-file FILE: out takes one value, got a list: ['a', 'b']"
    )
    assert _config_error(tmp_path, capsys, "source: [true]\nout: o\n") == (
        "--config-file FILE: source takes a value (--source SPEC), not the bool True: it is not a flag "
        "(quote it if you mean the text 'true')"
    )
    assert _config_error(tmp_path, capsys, "out: o\nformat: csv\n") == (
        "--config-file FILE: format='csv' is not one of ['open_clip-csv', 'parquet', 'webdataset']"
    )


def test_config_file_number_goes_through_the_option_type(tmp_path, capsys):
    parser = cli.CommandParser(prog="x")
    sub = parser.add_subparsers(dest="cmd")
    leaf = cli.leaf_parser(sub, "run", [])
    count = leaf.add_argument("--count", type=int)
    many = leaf.add_argument("--ratio", type=float, nargs="+")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("count: 3\nratio: 0.5\n")
    assert cli.apply_config_file(leaf, cfg) == ["count", "ratio"]
    assert (count.default, many.default) == (3, [0.5])
    for text, message in [
        ("count: 1.5\n", "count=1.5: invalid literal for int() with base 10: '1.5'"),
        ("count: true\n", "count takes a value (--count COUNT), not the bool True"),
        ("ratio: []\n", "ratio needs at least one value, got an empty list"),
        ("ratio: [0.5, [1]]\n", "ratio: each value must be a single value, got [1]"),
    ]:
        cfg.write_text(text)
        with pytest.raises(ValueError) as exc:
            cli.apply_config_file(leaf, cfg)
        assert str(exc.value).startswith(f"--config-file {str(cfg)!r}: {message}")


def test_every_leaf_help_lists_the_common_options():
    """#2: `hqrs train clip --help` (a lazily built parser) lists --config-file, -v, -q like every command."""
    leaves = 0
    for path, parser in _all_parsers(cli.build_parser()):
        if parser.get_default("_leaf") is not parser and not path.endswith("(full)"):
            continue
        if parser.get_default("lazy_parser") is not None and not path.endswith("(full)"):
            continue  # its help is the full parser's
        text = parser.format_help()
        for option in ("--config-file YAML", "-v, --verbose", "-q, --quiet"):
            assert option in text, f"{path} --help does not list {option}"
        leaves += 1
    assert leaves > 15
    # and they still work after a lazily built command
    args = cli.parse_args(["train", "clip", "--model", "m", "--dataset", "d", "--output-dir", "o", "-vv"])
    assert args.verbose == 2 and args.config_file is None


def test_config_file_mapping_for_a_name_value_option(tmp_path):
    """`trainer-arg:` as a mapping (or one NAME=VALUE string) becomes the list the command line would give."""
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        "model: m\ndataset: d\noutput-dir: o\ntrainer-arg: {adam_beta2: 0.98, optim: adamw_torch}\n"
    )
    args = cli.parse_args(["train", "clip", "--config-file", str(cfg)])
    assert args.trainer_args == ["adam_beta2=0.98", 'optim="adamw_torch"']
    cfg.write_text("model: m\ndataset: d\noutput-dir: o\ntrainer-arg: adam_beta2=0.98\n")
    assert cli.parse_args(["train", "clip", "--config-file", str(cfg)]).trainer_args == ["adam_beta2=0.98"]
