"""Integration output handling: JSON extraction and repair, schema validation, the fact-consistency
filter, and the deterministic template integrator of the ``offline`` recipe."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..records import Caption
from ..rules import (
    NUMBER_WORDS,
    SYNONYMS,
    RuleFacts,
    count_phrase,
    counts_sentence,
    cover_phrases,
    footprint_sentence,
    join_list,
    land_cover_sentence,
    plural,
    positions_sentence,
    scene_phrase,
    sizes_sentence,
)
from .recipe import LENGTHS, IntegratorSpec

# JSON schema of the integrator's answer (documentation and the validator below agree).
CAPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["captions"],
    "properties": {
        "captions": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["text", "length"],
                "properties": {
                    "text": {"type": "string", "minLength": 1},
                    "length": {"enum": list(LENGTHS)},
                    "sources": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}


class IntegrationError(ValueError):
    """The integrator's answer is not usable; the message is shown to the model in the repair prompt."""


# --------------------------------------------------------------------------- #
# Prompt turns
# --------------------------------------------------------------------------- #

_TURN_RE = re.compile(r"^<\|turn:(user|assistant)\|>[ \t]*$", re.MULTILINE)


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """Chat messages of a rendered prompt: one user message, or the turns a template marks.

    A line ``<|turn:user|>`` or ``<|turn:assistant|>`` starts a turn, so that a template can show a
    small model a worked example as a real exchange (few-shot), which it imitates far better than an
    example inside one message. The last turn must be the user's.

    Raises:
        ValueError: turns are marked but the text does not end with a non-empty user turn.

    Example:
        >>> prompt_messages("<|turn:user|>\nQ1\n<|turn:assistant|>\nA1\n<|turn:user|>\nQ2")
        [{'role': 'user', 'content': 'Q1'}, {'role': 'assistant', 'content': 'A1'}, {'role': 'user', 'content': 'Q2'}]
    """
    parts = _TURN_RE.split(prompt)
    if len(parts) == 1:
        return [{"role": "user", "content": prompt}]
    if parts[0].strip():
        raise ValueError(f"prompt text before the first <|turn:...|> marker: {parts[0].strip()[:80]!r}")
    messages = [{"role": role, "content": text.strip()} for role, text in zip(parts[1::2], parts[2::2])]
    if messages[-1]["role"] != "user" or not messages[-1]["content"]:
        raise ValueError("a prompt with <|turn:...|> markers must end with a non-empty <|turn:user|>")
    return messages


# --------------------------------------------------------------------------- #
# JSON extraction
# --------------------------------------------------------------------------- #

_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def _brackets(text: str, start: int):
    """The brackets of ``text[start:]`` outside JSON strings: ``(pos, char, stack)`` after each one, with
    ``stack`` the closers still open. Stops at the first closer that does not match."""
    stack: list[str] = []
    in_str = esc = False
    for pos in range(start, len(text)):
        c = text[pos]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
            yield pos, c, stack
        elif c in "}]":
            if not stack or stack.pop() != c:
                return
            yield pos, c, stack


def _balanced_objects(text: str):
    """Yield every balanced ``{...}`` / ``[...]`` substring, outermost first, skipping string contents."""
    for start, ch in enumerate(text):
        if ch not in "{[":
            continue
        for end, c, stack in _brackets(text, start):
            if c in "}]" and not stack:
                yield text[start : end + 1]
                break


def _loose_fix(candidate: str) -> str:
    """Repairs small models make necessary: trailing commas, smart quotes, Python literals."""
    s = candidate.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")
    s = re.sub(r",\s*([}\]])", r"\1", s)
    s = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", s)))
    return s


def _complete_captions_prefix(text: str) -> str | None:
    """``{"captions": [{...}, {...}, {"te`` (an answer cut off by ``max_tokens``, or that rambles on after
    its last caption) → ``{"captions": [{...}, {...}]}``: the complete caption objects, closed.

    Small models often write good captions and then repeat themselves until the token limit; the complete
    objects before the cut are kept, the broken one is dropped. ``None`` when no caption object is complete.
    """
    start = text.find("{")
    if start < 0:
        return None
    cut = None
    for pos, c, stack in _brackets(text, start):
        if c in "}]":
            if not stack:
                return None  # a whole object: not truncated, the normal parse handles it
            if c == "}" and stack == ["}", "]"]:  # an item of the top-level list just closed
                cut = pos + 1
    if cut is None:
        return _first_item_of_cut_off_answer(text[start:])
    return text[start:cut] + "]}"


_ITEM_START_RE = re.compile(r'^\{\s*"captions"\s*:\s*\[\s*\{')
_LENGTH_RE = re.compile(r'"length"\s*:\s*"(short|medium|long)"')
_TEXT_RE = re.compile(r'"text"\s*:\s*"((?:[^"\\]|\\.)+)"')


def _first_item_of_cut_off_answer(text: str) -> str | None:
    """The first caption of ``{"captions": [{"length": "short", "text": "A.", "text": "A.", "te``: a small
    model that repeats the ``text`` key until the token limit; its length and first complete text."""
    if not _ITEM_START_RE.match(text):
        return None
    length, first = _LENGTH_RE.search(text), _TEXT_RE.search(text)
    if length is None or first is None:
        return None
    try:  # the model's string, with its escapes; a broken escape (``\\q``) means no caption
        first_text = json.loads(f'"{first.group(1)}"')
    except json.JSONDecodeError:
        return None
    return json.dumps({"captions": [{"length": length.group(1), "text": first_text}]})


def extract_json(text: str) -> Any:
    """The first JSON value in a model's answer: plain, inside a ```json fence, or embedded in prose; else
    the complete caption objects of an answer cut off mid-way (:func:`_complete_captions_prefix`).

    Raises:
        IntegrationError: when no candidate parses (even after removing trailing commas and smart quotes).
    """
    if not text or not text.strip():
        raise IntegrationError("the answer was empty")
    candidates = [text.strip()] + [m.strip() for m in _FENCE_RE.findall(text)]
    for cand in candidates:
        try:
            return json.loads(cand)
        except json.JSONDecodeError:
            pass
    prefix = _complete_captions_prefix(text)  # before the inner objects of a cut-off answer are tried
    if prefix is not None:
        for variant in (prefix, _loose_fix(prefix)):
            try:
                return json.loads(variant)
            except json.JSONDecodeError:
                continue
    for cand in _balanced_objects(text):
        for variant in (cand, _loose_fix(cand)):
            try:
                return json.loads(variant)
            except json.JSONDecodeError:
                continue
    raise IntegrationError("the answer contains no valid JSON object")


def example_texts(messages: list[dict]) -> set[str]:
    """Caption texts of the worked examples in a prompt's assistant turns (lower case, spaces folded)."""
    out: set[str] = set()
    for message in messages:
        if message.get("role") == "assistant" and isinstance(message.get("content"), str):
            out.update(" ".join(t.split()).lower() for t in _TEXT_RE.findall(message["content"]))
    return out


def validate_captions(data: Any, known_sources: list[str], examples: set[str] = frozenset()) -> list[Caption]:
    """Check ``data`` against :data:`CAPTIONS_SCHEMA` and turn it into :class:`Caption` objects.

    A bare list of caption objects is accepted as ``{"captions": [...]}``. Unknown source names are
    dropped; a caption without any known source is attributed to all perspectives. A caption copied from
    the prompt's worked example (``examples``, see :func:`example_texts`) describes another image: it is
    an error, like invalid JSON.
    """
    if isinstance(data, list):
        data = {"captions": data}
    if not isinstance(data, dict) or "captions" not in data:
        raise IntegrationError('expected a JSON object with a "captions" list')
    items = data["captions"]
    if not isinstance(items, list) or not items:
        raise IntegrationError('"captions" must be a non-empty list')
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            raise IntegrationError(
                f'captions[{i}] is a string; each caption must be {{"text", "length", "sources"}}'
            )
        if not isinstance(item, dict):
            raise IntegrationError(f"captions[{i}] must be an object")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise IntegrationError(f'captions[{i}]."text" must be a non-empty string')
        length = item.get("length")
        if length not in LENGTHS:
            raise IntegrationError(
                f'captions[{i}]."length" must be one of {", ".join(LENGTHS)}, got {length!r}'
            )
        sources = item.get("sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise IntegrationError(f'captions[{i}]."sources" must be a list of description names')
        sources = [s.strip("[] ") for s in sources]
        sources = [s for s in dict.fromkeys(sources) if s in known_sources] or list(known_sources)
        if " ".join(text.split()).lower() in examples:
            raise IntegrationError(
                f"captions[{i}] copies the example answer; describe this image from its own notes"
            )
        out.append(Caption(text=" ".join(text.split()), length=length, sources=sources))
    return out


# --------------------------------------------------------------------------- #
# Fact-consistency filter
# --------------------------------------------------------------------------- #

_NEGATIONS = {"no", "not", "without", "none", "nor", "never", "lacks", "absent", "zero"}
_BREAKERS = {"of", "and", "or", "rows", "row", "groups", "group", "pairs", "pair", "lines", "line", "sets"}
_BREAKERS |= {
    "clusters",
    "cluster",
    "with",
    "near",
    "beside",
    "next",
    "to",
    "in",
    "on",
    "at",
    "the",
    "a",
    "an",
}
_WORD_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_QUANTITY = "qty"  # stands for a measured quantity in a clause: never a count, and it ends a look-back
_BREAKERS.add(_QUANTITY)
# A number with a unit or a percent sign, or a decimal, is a measurement ("16%", "270 m", "0.5 km",
# "about 4 metres across"), not a count of the class named after it: "large vehicle 16%, small vehicle 2%".
_QUANTITY_RE = re.compile(
    r"(?<![\w.])(?:\d+(?:[.,]\d+)*|"
    + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True))
    + r")(?:\s*(?:%|percent\b|per\s+cent\b|m²|km²|sq\b|square\b|km\b|m\b|cm\b|metres?\b|meters?\b|"
    r"kilometres?\b|kilometers?\b|ft\b|feet\b|foot\b|miles?\b|pixels?\b|px\b|hectares?\b|ha\b|acres?\b|"
    r"×|x(?=\s*\d)|by(?=\s+\d))|(?<=\d)[.,]\d+)",
    re.IGNORECASE,
)


def _number(token: str) -> int | None:
    if token.isdigit():
        return int(token)
    if token == "single":
        return 1
    return NUMBER_WORDS.get(token)


def _class_forms(name: str) -> list[tuple[list[str], bool]]:
    """Word sequences that name ``name`` (singular and plural of the class and its synonyms)."""
    forms = []
    for syn in SYNONYMS.get(name, (name,)):
        forms.append((syn.split(), False))
        forms.append((plural(syn).split(), True))
    return forms


@dataclass
class FactCheck:
    """Contradictions of one caption with the rule facts (empty when consistent)."""

    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _class_regex(names: frozenset[str]) -> tuple[re.Pattern, dict[str, str]]:
    """One alternation of every form of ``names``, longest first, and form → class."""
    form_to_class = {}
    for name in sorted(names):
        for form, _ in _class_forms(name):
            form_to_class.setdefault(" ".join(form), name)
    forms = sorted(form_to_class, key=lambda f: (-len(f), f))
    return re.compile(r"\b(" + "|".join(re.escape(f) for f in forms) + r")\b"), form_to_class


_class_regex_cached = lru_cache(maxsize=1024)(_class_regex)


def check_caption(text: str, facts: RuleFacts) -> FactCheck:
    """Find claims in ``text`` that contradict ``facts``.

    Two kinds are detected: an explicit number before an annotated class that differs from its count
    ("three storage tanks" when five are annotated; up to two adjectives may stand between), and any
    mention of a class that exhaustive annotations exclude, unless a negation ("no", "without"...)
    precedes it in the same clause.
    """
    check = FactCheck()
    absent = set(facts.absent)
    classes = frozenset(facts.counts) | frozenset(absent)
    if not classes:
        return check
    pattern, form_to_class = _class_regex_cached(classes)
    text = _QUANTITY_RE.sub(f" {_QUANTITY} ", text.lower())
    for clause in re.split(r"[.;:!?]+", text):
        clause = " ".join(_WORD_RE.findall(clause.replace("-", " ")))
        for match in pattern.finditer(clause):
            name = form_to_class[match.group(1)]
            before = clause[: match.start()].split()
            if name in absent and facts.counts.get(name, 0) == 0:
                if not _NEGATIONS.intersection(before):
                    check.problems.append(f"mentions {plural(name)}, but the annotations show none")
                continue
            expected = facts.counts.get(name)
            # look back over up to two adjectives for an explicit number
            for word in reversed(before[-3:]):
                if word in _BREAKERS or word in _NEGATIONS:
                    break
                n = _number(word)
                if n is not None:
                    if n != expected:
                        claimed = name if n == 1 else plural(name)
                        check.problems.append(f"says {word} {claimed}, annotations count {expected}")
                    break
    return check


def filter_captions(
    captions: list[Caption], facts: RuleFacts
) -> tuple[list[Caption], list[tuple[Caption, FactCheck]]]:
    """Split ``captions`` into consistent ones and rejected ones with their problems."""
    kept, rejected = [], []
    for cap in captions:
        result = check_caption(cap.text, facts)
        (kept if result.ok else rejected).append(cap if result.ok else (cap, result))
    return kept, rejected


def select_captions(captions: list[Caption], spec: IntegratorSpec) -> tuple[list[Caption], dict[str, int]]:
    """Keep up to the requested number per length (first come first kept); drop exact duplicates.

    Returns the kept captions (in ``short, medium, long`` order) and the per-length shortfall.
    """
    seen: set[str] = set()
    by_len: dict[str, list[Caption]] = {k: [] for k in LENGTHS}
    for cap in captions:
        key = cap.text.lower()
        if key in seen:
            continue
        seen.add(key)
        by_len[cap.length].append(cap)
    kept, missing = [], {}
    for length in LENGTHS:
        want = spec.captions.get(length, 0)
        kept.extend(by_len[length][:want])
        if len(by_len[length]) < want:
            missing[length] = want - len(by_len[length])
    return kept, missing


# --------------------------------------------------------------------------- #
# Template integrator (offline recipe)
# --------------------------------------------------------------------------- #


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def template_pools(facts: RuleFacts) -> dict[str, list[str]]:
    """Every phrasing the template integrator can use for ``facts``, per length (distinct, in order).

    Built for every combination of scene label (or none), counts (one, several, many classes, numbers
    beyond twenty) and mask area shares: each sentence is grammatical (articles, plural and verb
    agreement, no fragments), states only facts and never lists absent classes (negations are
    rule facts, not caption content).
    """
    scene = scene_phrase(facts.scene[0]) if facts.scene else None
    subject = scene or "the ground"
    counts = list(facts.counts.items())
    main = count_phrase(counts[0][1], counts[0][0]) if counts else None
    count_list = join_list([count_phrase(n, c) for c, n in counts[:4]]) if counts else None
    be = ("is" if counts[0][1] == 1 else "are") if counts else "are"
    where = positions_sentence(facts)
    foot = footprint_sentence(facts)
    cover = land_cover_sentence(facts)
    covers = cover_phrases(facts, max_classes=3)
    opening = (
        f"This remote sensing image shows {scene}." if scene else "This is an overhead remote sensing image."
    )

    short: list[str] = []
    if scene and main:
        short += [
            f"An aerial view of {scene} with {main}.",
            f"A remote sensing image of {scene} showing {main}.",
            f"An overhead image of {scene} with {main}.",
            f"There {be} {main} in this aerial view of {scene}.",
        ]
    elif scene:
        short += [
            f"A remote sensing image of {scene}.",
            f"An aerial view of {scene}.",
            f"{_cap(scene)} seen from above.",
            f"An overhead image of {scene}.",
            f"A top-down view of {scene}.",
            f"{_cap(scene)} in a remote sensing image.",
        ]
    elif main:
        short += [
            f"An aerial image with {main}.",
            f"A remote sensing image showing {main}.",
            f"An overhead view of {main}.",
            f"There {be} {main} in this aerial view.",
        ]
    else:
        short += [
            "A remote sensing image of the ground.",
            "An aerial view of the ground.",
            "An overhead image of the land below.",
        ]
    if covers:
        short.append(f"An aerial image in which {covers[0]} of the area.")

    medium: list[str] = []
    if counts:
        medium.append(
            f"This remote sensing image shows {scene} with {count_list}."
            if scene
            else f"This remote sensing image shows {count_list}."
        )
        medium.append(f"In this overhead view of {subject}, there {be} {count_list}.")
        if where:
            medium.append(f"From above, {count_list} can be seen. {where}")
    else:
        medium += [
            f"This remote sensing image shows {subject}, seen from directly above.",
            f"Seen from directly above, the image shows {subject}.",
        ]
        if scene:
            medium += [
                f"The image is an overhead view of {scene}, taken from high above the ground.",
                f"A remote sensing image that shows {scene} from directly above.",
            ]
    if foot:
        medium.append(f"{opening} {foot}")
    if cover:
        medium.append(f"{opening} {cover}")

    long: list[str] = []
    long.append(" ".join(x for x in (opening, foot, counts_sentence(facts), where, cover) if x))
    full_list = join_list([count_phrase(n, c) for c, n in counts])
    if scene or not counts:
        alt = [f"Seen from above, the image shows {subject}."]
        if counts:
            alt.append(f"There {be} {full_list} in it.")
    else:
        alt = [f"Seen from above, the image shows {full_list}."]
    alt += [x for x in (where, foot) if x]
    long.append(" ".join(alt))
    if scene and not counts:
        long.append(f"This overhead remote sensing image, taken from high above the ground, shows {scene}.")
    sizes = sizes_sentence(facts)
    if sizes:
        long.append(" ".join(x for x in (opening, counts_sentence(facts), sizes) if x))
    return {"short": short, "medium": medium, "long": long}


def template_captions(facts: RuleFacts, spec: IntegratorSpec, seed: str) -> list[Caption]:
    """Deterministic captions of mixed lengths from the rule facts alone (no model).

    ``seed`` (the image id) picks among the phrasings of :func:`template_pools`, so that captions vary
    across images but a rerun gives the same text. Every caption states only facts, so it passes
    :func:`check_caption`.
    """
    pools = template_pools(facts)
    out: list[Caption] = []
    for length in LENGTHS:
        want = spec.captions.get(length, 0)
        pool = list(dict.fromkeys(pools[length]))
        if not want or not pool:
            continue
        start = int.from_bytes(hashlib.sha256(f"{seed}:{length}".encode()).digest()[:4], "big") % len(pool)
        for k in range(min(want, len(pool))):
            out.append(Caption(text=pool[(start + k) % len(pool)], length=length, sources=["rule"]))
    return out
