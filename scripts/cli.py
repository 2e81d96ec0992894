"""Entry point of the ``hqrs`` console script.

``hqrs [-v|-q] COMMAND [options] [--config-file FILE]``

Any sub-command accepts ``--config-file FILE``: a YAML (or JSON) mapping whose keys are that command's
option names (``out_dir`` or ``out-dir``). Values from the file become the option defaults, so a
flag given on the command line always wins over the file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("hqrs")

# Modules that define ``register(subparsers, parents)``; one per top-level sub-command.
COMMAND_MODULES: tuple[str, ...] = (
    "hqrs.scripts.env",
    "hqrs.scripts.convert",
    "hqrs.scripts.build",
    "hqrs.scripts.mpgi",
    "hqrs.scripts.models",
    "hqrs.scripts.train",
    "hqrs.scripts.eval",
    "hqrs.scripts.push",
)


def version() -> str:
    """Installed version of the ``hqrs`` distribution (``pyproject.toml`` is the single source)."""
    try:
        return metadata.version("hqrs")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def setup_logging(verbosity: int) -> None:
    """Map ``-v``/``-q`` counts to log levels for hqrs and the HF libraries.

    0 → INFO for hqrs, WARNING for libraries; -v → DEBUG for hqrs, INFO for libraries;
    -vv → DEBUG everywhere; -q → WARNING; -qq → ERROR.
    """
    own = (
        logging.DEBUG
        if verbosity >= 1
        else {0: logging.INFO, -1: logging.WARNING}.get(verbosity, logging.ERROR)
    )
    libs = logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity == 1 else max(own, logging.WARNING)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )
    logging.getLogger().setLevel(libs)
    logger.setLevel(own)
    for name in ("transformers", "datasets", "huggingface_hub", "datatrove", "open_clip", "peft", "evaluate"):
        logging.getLogger(name).setLevel(libs)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", logging.getLevelName(libs).lower())


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that keeps its own record of what was added to it.

    ``--config-file`` needs a command's options by name, and the sub-command a command line selects before
    the real parse; argparse keeps both only in private attributes. This parser records them through its
    public methods instead: :attr:`options` (each ``Action`` ``add_argument`` returned, on the parser or on
    one of its argument groups) and :attr:`subcommands` (the action ``add_subparsers`` returned, whose
    ``choices`` maps names to sub-parsers). Sub-parsers are ``CommandParser`` too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options: list[argparse.Action] = []
        self.subcommands: argparse.Action | None = None
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.options.append(_repeatable(action, kwargs))
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        return _RecordedGroup(super().add_argument_group(*args, **kwargs), self.options)

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        return _RecordedGroup(super().add_mutually_exclusive_group(**kwargs), self.options)

    def add_subparsers(self, **kwargs: Any) -> Any:
        self.subcommands = super().add_subparsers(**kwargs)
        return self.subcommands


def _repeatable(action: argparse.Action, kwargs: dict[str, Any]) -> argparse.Action:
    """Mark ``action.repeatable``: it collects its values in a list (``action="append"``/``"extend"``)."""
    action.repeatable = kwargs.get("action") in ("append", "extend")
    return action


class _RecordedGroup:
    """An argument group whose ``add_argument`` also records the action in its parser's :attr:`options`."""

    def __init__(self, group: Any, options: list[argparse.Action]) -> None:
        self.group = group
        self.recorded = options

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self.group.add_argument(*args, **kwargs)
        self.recorded.append(_repeatable(action, kwargs))
        return action

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        return _RecordedGroup(self.group.add_mutually_exclusive_group(**kwargs), self.recorded)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.group, name)


def _add_common_options(parser: argparse.ArgumentParser, config_default: Any = None) -> None:
    """The "common options" group of every runnable command: ``--config-file``, ``-v``, ``-q``."""
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--config-file",
        metavar="YAML",
        type=Path,
        default=config_default,
        help="YAML (or JSON) mapping of this command's options (keys as option names); command-line flags "
        "override it",
    )
    # Also accepted after the sub-command; SUPPRESS keeps the top-level value when not given here.
    group.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (-vv: debug)"
    )
    group.add_argument(
        "-q", "--quiet", action="count", default=argparse.SUPPRESS, help="less logging (-qq: errors only)"
    )


def _common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    _add_common_options(parent)
    return parent


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="hqrs",
        description="MpGI remote-sensing vision-language data and models (HQRS-IT, HQRS-CLIP, RS-CoCa).",
    )
    parser.add_argument("--version", action="version", version=f"hqrs {version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging (-qq: errors only)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [_common_parent()]
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers, parents)
    return parser


def leaf_parser(
    subparsers: Any, name: str, parents: list[argparse.ArgumentParser], **kwargs: Any
) -> argparse.ArgumentParser:
    """Add a runnable sub-command parser with the common options.

    The parser records itself in the namespace, which is how ``--config-file`` finds the
    options of the command that was chosen, however deep it is nested (``hqrs mpgi run``).

    A command whose options are expensive to build (``hqrs train``: every ``TrainingArguments`` field, which
    needs transformers) passes ``lazy_parser=FACTORY``: the leaf then only holds the common options, and
    :func:`parse_args` parses everything else with ``FACTORY(prog)`` (a :class:`CommandParser`, built only
    when that command runs or shows its help).
    """
    lazy = kwargs.pop("lazy_parser", None)
    if lazy is not None:  # -h/--help and every option go to the full parser; no abbreviations of them
        kwargs.update(add_help=False, allow_abbrev=False)
        lazy = _with_common_options(lazy)
    sub = subparsers.add_parser(name, parents=parents, **kwargs)
    sub.set_defaults(_leaf=sub, lazy_parser=lazy)
    return sub


def _with_common_options(factory: Any) -> Any:
    """``factory`` whose parser also shows (and takes) the common options, so that the help of a lazily
    built command lists ``--config-file``, ``-v`` and ``-q`` like every other command's. The leaf parses
    them first; here they default to nothing, so they never overwrite what the leaf parsed."""

    def build(prog: str) -> argparse.ArgumentParser:
        full = factory(prog)
        _add_common_options(full, config_default=argparse.SUPPRESS)
        return full

    return build


_NOT_CONFIG = ("help", "config_file", "verbose", "quiet", argparse.SUPPRESS)


def _option_actions(parser: CommandParser) -> dict[str, argparse.Action]:
    """The options a config file may set, by flag name (``--format`` → ``format``) and by destination
    (``fmt``), both with ``_`` for ``-``."""
    found: dict[str, argparse.Action] = {}
    for a in parser.options:
        if not a.option_strings or a.dest in _NOT_CONFIG:
            continue
        for flag in a.option_strings:
            if flag.startswith("--"):
                found.setdefault(flag[2:].replace("-", "_"), a)
        found.setdefault(a.dest, a)
    return found


def _flag_names(parser: CommandParser) -> list[str]:
    """The names a config file may use (long flags, ``_`` shown as ``-``) and the positionals."""
    return sorted(
        {
            f[2:].replace("_", "-")
            for a in parser.options
            if a.dest not in _NOT_CONFIG
            for f in a.option_strings
            if f.startswith("--")
        }
        | {a.dest.replace("_", "-") for a in parser.options if not a.option_strings}
    )


_YES_NO = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _takes_list(action: argparse.Action) -> bool:
    """Whether the option collects several values (``action="append"``/``"extend"``, ``nargs`` ``*``, ``+``
    or a number)."""
    return getattr(action, "repeatable", False) or action.nargs in ("*", "+") or isinstance(action.nargs, int)


def _reads_bool(action: argparse.Action) -> bool:
    """Whether a bool is a value of this non-flag option: ``--bf16 [BOOL]`` (``nargs="?"``, ``const=True``) or
    a ``type`` that reads text as a bool (transformers' ``string_to_bool``: ``--disable-tqdm BOOL``)."""
    if action.nargs == "?" and isinstance(action.const, bool):
        return True
    try:
        return callable(action.type) and isinstance(action.type("true"), bool)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return False


def _config_value(action: argparse.Action, key: str, value: Any, path: Path, *, by_flag: bool) -> Any:
    """The value of ``action`` that ``key: value`` in the config file at ``path`` gives, checked against the
    option's kind as argparse checks a command line.

    A flag (``nargs=0``: ``store_true``/``store_false``/``store_const``) takes a bool (YAML ``true``/``false``,
    ``yes``/``no``); by its flag name (``no-progress: true``) it stores the flag's constant. Any other option
    refuses a bool (unless its own type reads one: ``--bf16 [BOOL]``), runs each value through the option's
    ``type`` (numbers included: ``shard-size: 1.5`` is an error for an ``int``) and ``choices``; an option that
    collects values (``append``, ``nargs``) takes a list, or one value as a one-element list; a ``NAME=VALUE``
    option also takes a mapping.

    Raises:
        ValueError: naming the file, the key, the bad value and what the option takes.
    """
    where = f"--config-file {str(path)!r}: {key}"
    if action.nargs == 0:
        flag = (
            value
            if isinstance(value, bool)
            else _YES_NO.get(value.lower())
            if isinstance(value, str)
            else None
        )
        if flag is None:
            raise ValueError(f"{where} is a flag: use true or false, got {value!r}")
        if by_flag or not isinstance(action.const, bool):
            return action.const if flag else action.default
        return flag
    many = _takes_list(action)
    if not many and isinstance(value, dict):
        value = json.dumps(value)  # what the command line takes for a mapping (--lr-scheduler-kwargs '{...}')
    if many and isinstance(value, dict) and action.metavar == "NAME=VALUE":
        value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
    items = value if many and isinstance(value, list) else [value]
    if not many and isinstance(value, (list, dict)):
        raise ValueError(f"{where} takes one value, got a {type(value).__name__}: {value!r}")
    if many and action.nargs == "+" and not items:
        raise ValueError(f"{where} needs at least one value, got an empty list")
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise ValueError(f"{where} takes {action.nargs} values, got {value!r}")
    reads_bool = _reads_bool(action)
    out = []
    for item in items:
        if isinstance(item, (list, dict)):
            raise ValueError(f"{where}: each value must be a single value, got {item!r}")
        if isinstance(item, bool) and not reads_bool:
            usage = " ".join(
                [max(action.option_strings, key=len, default=""), str(action.metavar or action.dest.upper())]
            ).strip()
            raise ValueError(
                f"{where} takes a value ({usage}), not the bool {item!r}: it is not a flag "
                f"(quote it if you mean the text {str(item).lower()!r})"
            )
        if item is None:
            raise ValueError(f"{where} has no value; give one or remove the key")
        if action.type is not None and not (reads_bool and isinstance(item, bool)):
            try:
                item = action.type(item if isinstance(item, str) else str(item))
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f"{where}={item!r}: {exc}") from None
        elif not isinstance(item, (str, bool)):
            item = str(item)  # argparse hands an untyped option the text
        if action.choices is not None and item not in action.choices:
            raise ValueError(f"{where}={item!r} is not one of {sorted(map(str, action.choices))}")
        out.append(item)
    return out if many else out[0]


def apply_config_file(leaf: CommandParser, path: Path) -> list[str]:
    """Use the YAML (or JSON) file at ``path`` as defaults of ``leaf``; returns the keys applied.

    Keys are option names (``out_dir`` or ``out-dir``) or positional names (``model``). A value
    from the file satisfies a required option or positional; the command line still wins.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is not YAML, not a mapping, names an unknown option or a value
            outside an option's choices.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--config-file {str(path)!r} does not exist or is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"--config-file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--config-file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ValueError(
            f"--config-file {str(path)!r} must hold a mapping of option names, got {type(data).__name__}"
        )
    actions = _option_actions(leaf)
    positionals = {a.dest: a for a in leaf.options if not a.option_strings}
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest) or positionals.get(dest)
        if action is None:
            known = ", ".join(_flag_names(leaf)) or "(none)"
            raise ValueError(
                f"--config-file {str(path)!r}: unknown option {key!r} for '{leaf.prog}'; known: {known}"
            )
        value = _config_value(action, str(key), value, path, by_flag=dest != action.dest)
        defaults[action.dest] = value
        action.required = False
        if not action.option_strings and action.nargs is None:
            action.nargs = "?"  # the file supplies it; a value on the command line still wins
    leaf.set_defaults(**defaults)
    return list(defaults)


def _chosen_leaf(parser: CommandParser, argv: Sequence[str]) -> CommandParser | None:
    """The runnable sub-command parser that ``argv`` selects (``hqrs mpgi run`` → its parser), if any.

    Walks the sub-command names in ``argv`` without parsing options, so that ``--config-file`` can
    supply required options before the real parse checks them.
    """
    current = parser
    for token in argv:
        sub = current.subcommands
        if sub is None:
            break
        if token in sub.choices:
            current = sub.choices[token]
    return current if current.get_default("_leaf") is current else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``): the sub-command, its ``--config-file``, then its options.

    A leaf built with ``lazy_parser`` gets the arguments it does not know parsed by its full parser.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config-file", type=Path, default=None)
    config_file = pre.parse_known_args(argv)[0].config_file
    leaf = _chosen_leaf(parser, argv)
    full = None
    if leaf is not None and leaf.get_default("lazy_parser") is not None:
        full = leaf.get_default("lazy_parser")(leaf.prog)
    applied = None
    if config_file is not None and leaf is not None:
        applied = apply_config_file(full if full is not None else leaf, config_file)
    if full is None:
        args = parser.parse_args(argv)
    else:
        args, rest = parser.parse_known_args(argv)
        vars(args).update(vars(full.parse_args(rest)))
    if applied is not None:
        vars(args)["config_keys"] = applied
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"hqrs: error: {exc}", file=sys.stderr)
        return 2
    verbosity = (args.verbose or 0) - (args.quiet or 0)
    setup_logging(verbosity)
    if getattr(args, "config_keys", None):
        logger.debug("options from %s: %s", args.config_file, ", ".join(args.config_keys))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("hqrs: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        # Library errors are written for users (they name the file/field and the fix).
        if verbosity >= 1:
            logger.exception("command failed")
        print(f"hqrs: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
