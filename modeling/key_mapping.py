"""Declarative state-dict conversion: key tables of ``Rule(source pattern → target, op)``.

A converter is a :class:`KeyTable`: an ordered list of :class:`Rule` objects. Each rule maps a source
key pattern to one or more target key patterns and names the tensor operation between them. Patterns
carry named placeholders: ``{layer}`` matches a decimal index, ``{name:REGEX}`` matches ``REGEX``
(without dots unless the regex says so). Every op has an exact inverse, so
``table.inverted().convert(table.convert(sd))`` reproduces ``sd`` bit for bit.

Ops (forward ↔ inverse):

* ``rename`` ↔ ``rename``: the tensor is passed through unchanged (no copy).
* ``split_qkv`` ↔ ``merge_qkv``: one tensor cut in 3 equal parts along dim 0 (fused ``in_proj`` →
  ``q_proj``/``k_proj``/``v_proj``) ↔ the 3 parts concatenated along dim 0.
* ``transpose`` ↔ ``transpose``: 2-D transpose (open_clip ``x @ W`` projections ↔ ``nn.Linear`` weights).
* ``unsqueeze`` ↔ ``squeeze``: add ↔ remove a leading dimension of size 1.

Conversion is strict: a source key that no rule matches, a key that two rules match, a multi-source
rule with a missing part, or a target key written twice all fail together in one
:class:`UnmappedKeysError` that lists the keys.

Example:
    >>> import torch
    >>> table = KeyTable(
    ...     "demo",
    ...     [
    ...         Rule("blocks.{i}.attn.in_proj_weight", ("layers.{i}.q.weight", "layers.{i}.k.weight", "layers.{i}.v.weight"), "split_qkv"),
    ...         Rule("proj", "projection.weight", "transpose"),
    ...     ],
    ... )
    >>> sd = {"blocks.0.attn.in_proj_weight": torch.arange(12.0).reshape(6, 2), "proj": torch.ones(2, 3)}
    >>> out = table.convert(sd)
    >>> sorted(out), tuple(out["projection.weight"].shape)
    (['layers.0.k.weight', 'layers.0.q.weight', 'layers.0.v.weight', 'projection.weight'], (3, 2))
    >>> back = table.inverted().convert(out)
    >>> all(torch.equal(back[k], sd[k]) for k in sd)
    True
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

__all__ = [
    "OPS",
    "KeyTable",
    "MissingKeysError",
    "Rule",
    "UnmappedKeysError",
    "check_complete",
    "format_key_list",
    "load_checkpoint",
]

# op name → (number of source tensors, number of target tensors, inverse op name)
OPS: dict[str, tuple[int | None, int | None, str]] = {
    "rename": (1, 1, "rename"),
    "split_qkv": (1, 3, "merge_qkv"),
    "merge_qkv": (3, 1, "split_qkv"),
    "transpose": (1, 1, "transpose"),
    "unsqueeze": (1, 1, "squeeze"),
    "squeeze": (1, 1, "unsqueeze"),
}

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]+))?\}")
_MAX_LISTED = 20


def format_key_list(keys: Iterable[str], limit: int = _MAX_LISTED) -> str:
    """``"a, b, c"`` for up to ``limit`` keys, then ``"… and N more"``."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    if len(keys) > limit:
        shown += f", … and {len(keys) - limit} more"
    return shown


class UnmappedKeysError(ValueError):
    """The key table does not fit the state dict: unmatched, ambiguous, incomplete or duplicate keys."""

    def __init__(
        self,
        table: str,
        unmatched: Sequence[str] = (),
        duplicates: Sequence[str] = (),
        ambiguous: Sequence[str] = (),
        incomplete: Sequence[str] = (),
    ):
        self.table = table
        self.unmatched = list(unmatched)
        self.duplicates = list(duplicates)
        self.ambiguous = list(ambiguous)
        self.incomplete = list(incomplete)
        parts = []
        if self.unmatched:
            parts.append(
                f"{len(self.unmatched)} source key(s) match no rule: {format_key_list(self.unmatched)}"
            )
        if self.ambiguous:
            parts.append(
                f"{len(self.ambiguous)} source key(s) match more than one rule: {format_key_list(self.ambiguous)}"
            )
        if self.incomplete:
            parts.append(
                f"{len(self.incomplete)} source key(s) needed together with matched keys are absent: "
                f"{format_key_list(self.incomplete)}"
            )
        if self.duplicates:
            parts.append(
                f"{len(self.duplicates)} target key(s) produced more than once: {format_key_list(self.duplicates)}"
            )
        super().__init__(f"key table {table!r} does not fit this state dict; " + "; ".join(parts))


class MissingKeysError(ValueError):
    """A converted state dict lacks expected keys, has extra ones, or has tensors of the wrong shape."""

    def __init__(
        self,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        context: str = "",
    ):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {format_key_list(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {format_key_list(self.unexpected)}")
        if self.mismatched:
            parts.append(
                f"{len(self.mismatched)} key(s) with the wrong shape: {format_key_list(self.mismatched, 8)}"
            )
        head = f"{context}: " if context else ""
        super().__init__(head + "; ".join(parts))


def check_complete(
    converted: Mapping[str, Any],
    expected_keys: Iterable[str] | Mapping[str, Sequence[int]],
    context: str = "",
) -> None:
    """Raise :class:`MissingKeysError` unless ``converted`` has exactly ``expected_keys``.

    ``expected_keys`` may be a mapping ``key → shape`` (e.g. ``{k: v.shape for k, v in
    model.state_dict().items()}``); then shapes are compared as well and every mismatch is listed as
    ``key: got (…) expected (…)``. ``context`` prefixes the message (say what was being loaded).
    """
    expected = list(expected_keys)
    expected_set = set(expected)
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected_set]
    mismatched = []
    if isinstance(expected_keys, Mapping):
        for key in expected:
            if key in converted:
                got = tuple(converted[key].shape)
                want = tuple(expected_keys[key])
                if got != want:
                    mismatched.append(f"{key}: got {got} expected {want}")
    if missing or unexpected or mismatched:
        raise MissingKeysError(missing, unexpected, mismatched, context=context)


def _as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class _Pattern:
    text: str
    regex: re.Pattern = field(compare=False)
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, specs: Mapping[str, str] | None = None) -> _Pattern:
        """Compile ``text``; ``specs`` gives the regex of placeholders written without one."""
        pieces, names, last = [], [], 0
        for m in _PLACEHOLDER.finditer(text):
            pieces.append(re.escape(text[last : m.start()]))
            name = m.group(1)
            sub = m.group(2) or (specs or {}).get(name) or r"\d+"
            if name in names:
                pieces.append(f"(?P={name})")
            else:
                pieces.append(f"(?P<{name}>{sub})")
                names.append(name)
            last = m.end()
        pieces.append(re.escape(text[last:]))
        return cls(text, re.compile("".join(pieces)), tuple(names))

    def fill(self, bindings: Mapping[str, str]) -> str:
        return _PLACEHOLDER.sub(lambda m: bindings[m.group(1)], self.text)


@dataclass(frozen=True)
class Rule:
    """One line of a key table: ``source`` pattern(s) → ``target`` pattern(s) through ``op``.

    Args:
        source: a key pattern such as ``"transformer.resblocks.{layer}.attn.in_proj_weight"``; a tuple
            of 3 patterns for ``merge_qkv``.
        target: a key pattern, or a tuple of 3 patterns for ``split_qkv`` (order q, k, v).
        op: one of ``rename``, ``split_qkv``, ``merge_qkv``, ``transpose``, ``unsqueeze``, ``squeeze``.

    Every target pattern must use the same placeholders as the source pattern(s).
    """

    source: str | tuple[str, ...]
    target: str | tuple[str, ...]
    op: str = "rename"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"Rule op {self.op!r} is not one of {sorted(OPS)}")
        n_src, n_tgt, _ = OPS[self.op]
        sources, targets = _as_tuple(self.source), _as_tuple(self.target)
        if len(sources) != n_src or len(targets) != n_tgt:
            raise ValueError(
                f"Rule {self.source!r} → {self.target!r}: op {self.op!r} takes {n_src} source and "
                f"{n_tgt} target pattern(s), got {len(sources)} and {len(targets)}"
            )
        names = {frozenset(_Pattern.parse(p).names) for p in sources + targets}
        if len(names) != 1:
            raise ValueError(
                f"Rule {self.source!r} → {self.target!r}: all patterns must use the same placeholders"
            )

    def placeholder_specs(self) -> dict[str, str]:
        """Regex of each placeholder, from whichever pattern of the rule spells it (``{p:weight|bias}``)."""
        specs: dict[str, str] = {}
        for text in self.sources + self.targets:
            for m in _PLACEHOLDER.finditer(text):
                if m.group(2):
                    specs.setdefault(m.group(1), m.group(2))
        return specs

    @property
    def sources(self) -> tuple[str, ...]:
        return _as_tuple(self.source)

    @property
    def targets(self) -> tuple[str, ...]:
        return _as_tuple(self.target)

    def inverted(self) -> Rule:
        """The rule for the opposite direction (targets become sources, op becomes its inverse)."""
        inverse = OPS[self.op][2]
        target = self.sources[0] if len(self.sources) == 1 else self.sources
        source = self.targets[0] if len(self.targets) == 1 else self.targets
        return Rule(source, target, inverse)

    def apply(self, tensors: Sequence[torch.Tensor], keys: Sequence[str]) -> list[torch.Tensor]:
        """Apply the op to the source tensors (``keys`` name them for error messages)."""
        op = self.op
        if op == "rename":
            return [tensors[0]]
        if op == "split_qkv":
            (t,) = tensors
            if t.shape[0] % 3:
                raise ValueError(f"{keys[0]}: cannot split shape {tuple(t.shape)} in 3 along dim 0 (q, k, v)")
            return list(torch.chunk(t, 3, dim=0))
        if op == "merge_qkv":
            shapes = {tuple(t.shape) for t in tensors}
            if len(shapes) != 1:
                raise ValueError(
                    f"{format_key_list(keys)}: q/k/v shapes differ ({sorted(shapes)}), cannot concatenate"
                )
            return [torch.cat(list(tensors), dim=0)]
        if op == "transpose":
            (t,) = tensors
            if t.ndim != 2:
                raise ValueError(f"{keys[0]}: transpose needs a 2-D tensor, got shape {tuple(t.shape)}")
            return [t.t().contiguous()]
        if op == "unsqueeze":
            return [tensors[0].unsqueeze(0)]
        if op == "squeeze":
            (t,) = tensors
            if t.ndim == 0 or t.shape[0] != 1:
                raise ValueError(
                    f"{keys[0]}: squeeze needs a leading dimension of size 1, got {tuple(t.shape)}"
                )
            return [t.squeeze(0)]
        raise AssertionError(op)  # pragma: no cover - guarded by __post_init__


class KeyTable:
    """An ordered, named list of :class:`Rule` objects that converts whole state dicts.

    Example:
        >>> import torch
        >>> table = KeyTable("t", [Rule("a.{i}.w", "b.{i}.weight")])
        >>> table.convert({"a.0.w": torch.zeros(1), "a.1.w": torch.ones(1)}).keys()
        dict_keys(['b.0.weight', 'b.1.weight'])
        >>> try:
        ...     table.convert({"a.0.w": torch.zeros(1), "stray": torch.ones(1)})
        ... except UnmappedKeysError as err:
        ...     print(err)
        key table 't' does not fit this state dict; 1 source key(s) match no rule: stray
    """

    def __init__(self, name: str, rules: Sequence[Rule]):
        if not rules:
            raise ValueError(f"key table {name!r} has no rules")
        self.name = name
        self.rules: tuple[Rule, ...] = tuple(rules)
        specs = [r.placeholder_specs() for r in self.rules]
        self._patterns = [[_Pattern.parse(p, sp) for p in r.sources] for r, sp in zip(self.rules, specs)]
        self._targets = [[_Pattern.parse(p, sp) for p in r.targets] for r, sp in zip(self.rules, specs)]

    def __repr__(self) -> str:
        return f"KeyTable({self.name!r}, {len(self.rules)} rules)"

    def inverted(self) -> KeyTable:
        """The table for the opposite direction; ``t.inverted().convert(t.convert(sd))`` equals ``sd``."""
        name = self.name[:-9] if self.name.endswith(" inverted") else f"{self.name} inverted"
        return KeyTable(name, [r.inverted() for r in self.rules])

    def _match(self, key: str) -> list[tuple[int, int, dict[str, str]]]:
        hits = []
        for ri, patterns in enumerate(self._patterns):
            for pi, pattern in enumerate(patterns):
                m = pattern.regex.fullmatch(key)
                if m:
                    hits.append((ri, pi, m.groupdict()))
        return hits

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert ``state_dict``; raises :class:`UnmappedKeysError` listing every key that does not fit.

        Tensors are not copied by ``rename`` and ``split_qkv`` (views), so converting a memory-mapped
        checkpoint does not read it into memory.
        """
        unmatched, ambiguous, incomplete, duplicates = [], [], [], []
        groups: dict[tuple[int, tuple[tuple[str, str], ...]], None] = {}
        for key in state_dict:
            hits = self._match(key)
            if not hits:
                unmatched.append(key)
            elif len(hits) > 1:
                ambiguous.append(key)
            else:
                ri, _, bindings = hits[0]
                groups.setdefault((ri, tuple(sorted(bindings.items()))), None)

        out: dict[str, torch.Tensor] = {}
        for ri, binding_items in groups:
            bindings = dict(binding_items)
            rule = self.rules[ri]
            src_keys = [p.fill(bindings) for p in self._patterns[ri]]
            absent = [k for k in src_keys if k not in state_dict]
            if absent:
                incomplete.extend(absent)
                continue
            results = rule.apply([state_dict[k] for k in src_keys], src_keys)
            for pattern, tensor in zip(self._targets[ri], results):
                target = pattern.fill(bindings)
                if target in out:
                    duplicates.append(target)
                out[target] = tensor
        if unmatched or ambiguous or incomplete or duplicates:
            raise UnmappedKeysError(self.name, unmatched, sorted(set(duplicates)), ambiguous, incomplete)
        return out


# --------------------------------------------------------------------------------------------------
# open_clip residual attention block → HF pre-LN encoder layer (CLIP's and RS-CoCa's towers)
# --------------------------------------------------------------------------------------------------

WEIGHT_OR_BIAS = "{p:weight|bias}"


def resblock_rules(src: str, dst: str) -> list[Rule]:
    """Rules for one open_clip ``ResidualAttentionBlock`` → an HF layer with ``layer_norm1``,
    ``self_attn.{q,k,v,out}_proj``, ``layer_norm2`` and ``mlp.fc1/fc2``.

    ``src`` / ``dst`` are the block prefixes, usually with a ``{layer}`` placeholder
    (``"visual.transformer.resblocks.{layer}"`` → ``"vision_model.encoder.layers.{layer}"``).
    """
    wb = WEIGHT_OR_BIAS
    return [
        Rule(f"{src}.ln_1.{wb}", f"{dst}.layer_norm1.{{p}}"),
        Rule(
            f"{src}.attn.in_proj_{wb}", tuple(f"{dst}.self_attn.{q}_proj.{{p}}" for q in "qkv"), "split_qkv"
        ),
        Rule(f"{src}.attn.out_proj.{wb}", f"{dst}.self_attn.out_proj.{{p}}"),
        Rule(f"{src}.ln_2.{wb}", f"{dst}.layer_norm2.{{p}}"),
        Rule(f"{src}.mlp.c_fc.{wb}", f"{dst}.mlp.fc1.{{p}}"),
        Rule(f"{src}.mlp.c_proj.{wb}", f"{dst}.mlp.fc2.{{p}}"),
    ]


# --------------------------------------------------------------------------------------------------
# open_clip tower options a plain pre-norm transformer (CLIP's and RS-CoCa's) cannot represent
# --------------------------------------------------------------------------------------------------

# Option → the only value the converters accept; a checkpoint config with any other value is refused
# with the option named. Shared by the CLIP and RS-CoCa converters; each adds its own.
_TOWER_PLAIN = {
    "ls_init_value": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
OPEN_CLIP_PLAIN_VISION = {
    **_TOWER_PLAIN,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "timm_model_name": None,
}
OPEN_CLIP_PLAIN_TEXT = {
    **_TOWER_PLAIN,
    "no_causal_mask": False,
    "proj_bias": False,
    "proj_type": "linear",
    "hf_model_name": None,
}

# What a CLIP-style text tower (CLIPTextModel: argmax pooling, no CLS embedding) needs of open_clip's
# text_cfg, and the top-level config keys such a model may have (the ViT and ResNet CLIP converters).
OPEN_CLIP_CLIP_TEXT = {
    **OPEN_CLIP_PLAIN_TEXT,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "embed_cls": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
}
OPEN_CLIP_CLIP_TOP_LEVEL = {
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "quick_gelu",
    "init_logit_scale",
    "custom_text",
}
# Entries that some checkpoints carry but that hold no weights: the text causal mask (a buffer open_clip
# rebuilds from context_length and no longer saves) and the integers of OpenAI's TorchScript state dict.
OPEN_CLIP_DERIVED_KEYS = ("attn_mask", "input_resolution", "context_length", "vocab_size")


def open_clip_expected_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``open_clip.create_model(model_name)``'s state dict, built on the meta device
    (no memory, no weights), to check a converted state dict loads with ``strict=True``."""
    import open_clip

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip logs "No pretrained weights loaded" on the root logger
    try:
        with torch.device("meta"):
            ref = open_clip.create_model(model_name, pretrained=None, device="meta")
    finally:
        root.setLevel(level)
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------

_STRIP_PREFIXES = ("module.", "_orig_mod.")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _torch_reason(exc: BaseException) -> str:
    """The most telling line of a torch.load error (without ANSI colour codes)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if "Unsupported global" in line or "GLOBAL" in line:
            return line
    return lines[0] if lines else type(exc).__name__


def _refused(path: Path, why: str, exc: BaseException) -> ValueError:
    return ValueError(
        f"refused to load {str(path)!r}: {why}. hqrs reads torch checkpoints with "
        "torch.load(weights_only=True) only, which never runs code from the file. Re-save just the "
        "weights where you trust the file, e.g. torch.save(model.state_dict(), 'weights.pt') or "
        f"safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'). (torch: {_torch_reason(exc)})"
    )


def _torch_load(path: Path) -> Any:
    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's TorchScript dispatch warning; we raise instead
            # mmap keeps the tensors file-backed: converting a checkpoint does not copy it into memory.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise _refused(
            path,
            "it holds pickled Python objects beyond tensors and plain containers (code would run on load)",
            exc,
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if "TorchScript" in str(exc):
            raise _refused(
                path, "it is a TorchScript archive (serialized code), not a state dict", exc
            ) from None
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: the file is truncated or not a torch checkpoint "
            f"({_torch_reason(exc)}). Download or copy it again."
        ) from None


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: the file is truncated or not a safetensors file "
            f"({exc}). Download or copy it again."
        ) from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch file (``.pt``/``.pth``/``.bin``/``.ckpt``).

    Torch files are read with ``torch.load(weights_only=True, mmap=True)``; a file holding pickled
    code (or a TorchScript archive) is refused with a ``ValueError`` that says why. An open_clip_train
    checkpoint ``{"state_dict": ..., "epoch": ..., "optimizer": ...}`` is unwrapped, and the
    ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes are stripped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown suffix, truncated/corrupt file, pickled code, or no tensor state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        obj: Any = _safetensors_load(path)
    elif suffix in _TORCH_SUFFIXES:
        obj = _torch_load(path)
    else:
        raise ValueError(
            f"checkpoint {str(path)!r} has suffix {suffix!r}; expected .safetensors or one of "
            f"{', '.join(_TORCH_SUFFIXES)}"
        )
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict (a mapping of names "
            "to tensors, optionally under 'state_dict')"
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a state dict: {len(not_tensors)} entr(y/ies) are not tensors "
            f"({format_key_list(not_tensors)}); open_clip_train checkpoints keep the weights under 'state_dict'"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        new = _strip_prefixes(str(key))
        if new in out:
            raise ValueError(
                f"checkpoint {str(path)!r}: key {new!r} appears twice once prefixes are stripped"
            )
        out[new] = value
    if not out:
        raise ValueError(f"checkpoint {str(path)!r} holds an empty state dict")
    return out
