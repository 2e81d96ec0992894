"""The rule perspective of MpGI: a deterministic description of an image from its annotations.

:func:`rule_facts` extracts the structured facts (scene, per-class counts, which classes are annotated
exhaustively, 3×3 grid positions, relative sizes, land-cover fractions, ground footprint) and
:func:`rule_text` writes them as plain English. The same :class:`RuleFacts` drive the fact-consistency
filter of the integration stage, so a caption is checked against exactly what the text states.

Example:
    >>> from hqrs.dataset_builder.records import ImageRecord, ObjectAnnotation
    >>> record = ImageRecord(
    ...     image_id="0123456789abcdef", image="p.png", source="dota", width=1000, height=1000, gsd=0.27,
    ...     labels=["DenseResidential"],
    ...     objects=[ObjectAnnotation("small-vehicle", bbox=(10, 10, 30, 20)),
    ...              ObjectAnnotation("small-vehicle", bbox=(40, 12, 60, 22)),
    ...              ObjectAnnotation("storage-tank", bbox=(480, 480, 560, 560))],
    ... )
    >>> print(rule_text(record))
    The scene is dense residential. The image covers about 270 m × 270 m of ground. It contains two small vehicles and one storage tank. The small vehicles are in the top left; the storage tank is in the center. The storage tank is the largest annotated object, about 22 m across; the small vehicles are about 4 m across.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from .records import ImageRecord, ObjectAnnotation

# --------------------------------------------------------------------------- #
# Class names
# --------------------------------------------------------------------------- #

# Words that appear glued together in RS class names ("baseballfield", "denseresidential",
# "Expressway-Service-area", "Soccer_ball_field"); used to split an unseparated name into words.
_VOCAB = frozenset(
    """
    agricultural airplane airport area bare baseball basketball beach bridge buildings building center
    chaparral chimney church commercial container course court crane dam dense desert diamond expressway farmland
    field football forest freeway golf ground harbor harbour helicopter helipad home homes industrial
    intersection lake land large lot meadow medium mobile mountain overpass park parking pitch plane
    playground pond pool port railway residential resort river road roundabout runway school service
    ship soccer ball sparse square stadium station storage swimming tank tanks tennis toll track train
    vehicle viaduct windmill court courts water wetland island rural urban bus truck car boat
    """.split()
)

# Names whose normal English form is not just the split words.
_CANONICAL = {
    "plane": "plane",
    "airplane": "plane",
    "golffield": "golf course",
    "golf field": "golf course",
    "golfcourse": "golf course",
    "storagetanks": "storage tank",
    "storage tanks": "storage tank",
    "harbour": "harbor",
    "baseball field": "baseball field",
    "soccer ball field": "soccer field",
    "groundtrackfield": "ground track field",
    "trainstation": "train station",
    "expressway service area": "expressway service area",
    "expressway toll station": "expressway toll station",
}

# Words the fact filter also accepts for a class (always lower case, singular).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "plane": ("plane", "airplane", "aircraft", "aeroplane", "jet"),
    "ship": ("ship", "vessel"),
    "storage tank": ("storage tank", "oil tank"),
    "swimming pool": ("swimming pool", "pool"),
    "soccer field": ("soccer field", "soccer ball field", "football field"),
    "harbor": ("harbor", "harbour"),
    "vehicle": ("vehicle", "car"),
    "small vehicle": ("small vehicle", "car"),
    "large vehicle": ("large vehicle", "truck", "bus"),
}

_UNCOUNTABLE_ENDINGS = ("aircraft",)


@lru_cache(maxsize=4096)
def _split_glued(word: str) -> str:
    """Split ``"denseresidential"`` into ``"dense residential"`` when every piece is a known word."""
    n = len(word)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for end in range(1, n + 1):
        for start in range(max(0, end - 14), end):
            prev = best[start]
            piece = word[start:end]
            if prev is not None and piece in _VOCAB:
                cand = prev + [piece]
                if best[end] is None or len(cand) < len(best[end]):
                    best[end] = cand
    return " ".join(best[n]) if best[n] else word


@lru_cache(maxsize=4096)
def normalise_class(name: str) -> str:
    """English singular form of a class name from any RS dataset.

    ``small-vehicle`` → ``small vehicle``; ``Expressway-Service-area`` → ``expressway service area``;
    ``Ground_Track_Field`` → ``ground track field``; ``baseballfield`` → ``baseball field``;
    ``DenseResidential`` → ``dense residential``; ``storagetanks`` → ``storage tank``.
    """
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.strip())  # CamelCase
    text = re.sub(r"[-_/]+", " ", text).lower()
    text = " ".join(_split_glued(w) for w in text.split())
    text = " ".join(text.split())
    return _CANONICAL.get(text, text)


def plural(noun: str) -> str:
    """English plural of a (multi-word) noun phrase: only the last word changes."""
    head, _, last = noun.rpartition(" ")
    if last.endswith(_UNCOUNTABLE_ENDINGS):
        out = last
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        out = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
NUMBER_WORDS = {w: i for i, w in enumerate(_NUMBER_WORDS)}


def number_word(n: int) -> str:
    """``3`` → ``"three"`` up to twenty, digits beyond."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def count_phrase(n: int, name: str) -> str:
    """``count_phrase(3, "small vehicle")`` → ``"three small vehicles"``."""
    return f"{number_word(n)} {name if n == 1 else plural(name)}"


def article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# Scene labels that name a kind of area by an adjective ("industrial" → "an industrial area").
_AREA_SCENES = frozenset(
    {"residential", "commercial", "industrial", "agricultural", "rural", "urban", "suburban"}
)
# Scene labels whose English noun phrase is not just the label with an article.
_SCENE_PHRASES = {
    "center": "a town center",
    "parking": "a parking lot",
    "plane": "planes at an airport",
    "storage tank": "storage tanks",
    "playfields": "playing fields",
    "square": "a town square",
    "mobile home": "a mobile home park",
}
# Mass nouns: no article ("farmland", "bare land").
_MASS_SCENES = frozenset(
    {"farmland", "bare land", "chaparral", "grassland", "cropland", "water", "snow", "ice"}
)


def scene_phrase(name: str) -> str:
    """A noun phrase for a normalised scene label, article included when English needs one.

    ``"dense residential"`` → ``"a dense residential area"``; ``"airport"`` → ``"an airport"``;
    ``"farmland"`` → ``"farmland"``; ``"buildings"`` → ``"buildings"``; ``"center"`` → ``"a town center"``.
    """
    name = " ".join(name.split())
    if name in _SCENE_PHRASES:
        return _SCENE_PHRASES[name]
    if name in _AREA_SCENES or name.endswith((" residential", " industrial", " commercial")):
        return article(f"{name} area")
    if name in _MASS_SCENES or name.endswith("land"):
        return name
    last = name.rsplit(" ", 1)[-1]
    if last.endswith("s") and not last.endswith(("ss", "us", "is")):  # a plural label: "buildings"
        return name
    return article(name)


# --------------------------------------------------------------------------- #
# Positions and sizes
# --------------------------------------------------------------------------- #

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


def grid_cell(x: float, y: float, width: int, height: int) -> str:
    """Name of the 3×3 grid cell holding point ``(x, y)``: ``"top left"``, ``"center"``, ``"bottom"``..."""
    col = min(2, max(0, int(3 * x / width)))
    row = min(2, max(0, int(3 * y / height)))
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return f"middle {_COLS[col]}"
    if col == 1:
        return _ROWS[row]
    return f"{_ROWS[row]} {_COLS[col]}"


GRID_CELLS = tuple(
    grid_cell((c + 0.5) * 3, (r + 0.5) * 3, 9, 9) for r in range(3) for c in range(3)
)  # reading order


# --------------------------------------------------------------------------- #
# Facts
# --------------------------------------------------------------------------- #


@dataclass
class RuleFacts:
    """What the annotations of one image state, normalised; the ground truth for the fact filter.

    Attributes:
        scene: normalised scene labels.
        counts: annotated instances per normalised class (objects, else mask instance counts).
        exhaustive: normalised classes whose instances are all annotated (absent ⇒ none in the image).
        positions: per class, the grid cells holding its instances, most populated first.
        sizes_m: per class, the median object size in metres (``sqrt(area) * gsd``), when GSD is known.
        relative_size: per class, the median object area as a fraction of the image area.
        land_cover: normalised mask class → area fraction, largest first.
        footprint_m: ground width and height covered by the image in metres, when GSD is known.
    """

    scene: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    exhaustive: list[str] = field(default_factory=list)
    positions: dict[str, list[str]] = field(default_factory=dict)
    sizes_m: dict[str, float] = field(default_factory=dict)
    relative_size: dict[str, float] = field(default_factory=dict)
    land_cover: dict[str, float] = field(default_factory=dict)
    footprint_m: tuple[float, float] | None = None

    @property
    def absent(self) -> list[str]:
        """Exhaustively annotated classes with no instance (and not the scene itself): a caption must not
        claim them."""
        return [c for c in self.exhaustive if self.counts.get(c, 0) == 0 and c not in self.scene]

    def to_dict(self) -> dict:
        return {
            "scene": list(self.scene),
            "counts": dict(self.counts),
            "exhaustive": list(self.exhaustive),
            "positions": {k: list(v) for k, v in self.positions.items()},
            "sizes_m": dict(self.sizes_m),
            "relative_size": dict(self.relative_size),
            "land_cover": dict(self.land_cover),
            "footprint_m": list(self.footprint_m) if self.footprint_m else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RuleFacts:
        data = dict(data)
        if data.get("footprint_m") is not None:
            data["footprint_m"] = tuple(data["footprint_m"])
        return cls(**data)


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _round_metres(value: float) -> int:
    """Round a ground distance to 2 significant digits (270.3 → 270, 1234 → 1200)."""
    if value <= 0:
        return 0
    digits = max(0, int(math.floor(math.log10(value))) - 1)
    return int(round(value / 10**digits) * 10**digits)


def rule_facts(record: ImageRecord) -> RuleFacts:
    """The normalised facts of ``record``'s annotations (deterministic)."""
    facts = RuleFacts()
    seen: set[str] = set()
    for label in record.labels:
        name = normalise_class(label)
        if name not in seen:
            seen.add(name)
            facts.scene.append(name)

    by_class: dict[str, list[ObjectAnnotation]] = {}
    for obj in record.objects:
        by_class.setdefault(normalise_class(obj.category), []).append(obj)
    # most frequent first, ties by name: a stable order for the text
    order = sorted(by_class, key=lambda c: (-len(by_class[c]), c))
    facts.counts = {c: len(by_class[c]) for c in order}
    image_area = float(record.width * record.height)
    for c in order:
        cells = Counter(grid_cell(*o.center, record.width, record.height) for o in by_class[c])
        facts.positions[c] = sorted(cells, key=lambda k: (-cells[k], GRID_CELLS.index(k)))
        areas = [o.area for o in by_class[c]]
        facts.relative_size[c] = _median(areas) / image_area
        if record.gsd is not None:
            facts.sizes_m[c] = math.sqrt(_median(areas)) * record.gsd

    if record.mask is not None:
        fractions: dict[str, float] = {}
        for name, frac in record.mask.class_fractions.items():
            key = normalise_class(name)
            fractions[key] = fractions.get(key, 0.0) + float(frac)
        facts.land_cover = dict(sorted(fractions.items(), key=lambda kv: (-kv[1], kv[0])))
        extra: dict[str, int] = {}
        for name, count in record.mask.instance_counts.items():
            key = normalise_class(name)
            if key not in facts.counts:
                extra[key] = extra.get(key, 0) + int(count)
        for key in sorted(extra, key=lambda k: (-extra[k], k)):
            if extra[key] > 0:
                facts.counts[key] = extra[key]

    exhaustive = []
    for name in record.exhaustive_classes:
        key = normalise_class(name)
        if key not in exhaustive:
            exhaustive.append(key)
    facts.exhaustive = exhaustive
    if record.gsd is not None:
        facts.footprint_m = (record.width * record.gsd, record.height * record.gsd)
    return facts


# --------------------------------------------------------------------------- #
# Text
# --------------------------------------------------------------------------- #


_CELL_TEXT = {"top": "top center", "bottom": "bottom center"}  # "in the top" is not English


def _where(cells: list[str]) -> str:
    cells = [_CELL_TEXT.get(c, c) for c in cells]
    if len(cells) >= 5:
        return "spread across the image"
    if len(cells) == 1:
        return f"in the {cells[0]}"
    if len(cells) <= 3:
        return "in the " + join_list(cells)
    return "mostly in the " + join_list(cells[:2])


def _subject(name: str, n: int) -> tuple[str, str]:
    """("the storage tanks", "are") for a class and its count."""
    return (f"the {name}", "is") if n == 1 else (f"the {plural(name)}", "are")


def scene_sentence(facts: RuleFacts) -> str | None:
    if not facts.scene:
        return None
    return f"The scene is {join_list(facts.scene)}."


def footprint_sentence(facts: RuleFacts) -> str | None:
    if facts.footprint_m is None:
        return None
    w, h = (_round_metres(v) for v in facts.footprint_m)
    return f"The image covers about {w} m × {h} m of ground."


def counts_sentence(facts: RuleFacts) -> str | None:
    if not facts.counts:
        return None
    return f"It contains {join_list([count_phrase(n, c) for c, n in facts.counts.items()])}."


def absent_sentence(facts: RuleFacts, max_classes: int = 6) -> str | None:
    absent = facts.absent
    if not absent or not facts.counts:
        return None
    names = [plural(c) for c in absent[:max_classes]]
    return f"There are no {join_list(names).replace(' and ', ' or ')}."


def positions_sentence(facts: RuleFacts) -> str | None:
    parts = []
    for c, n in facts.counts.items():
        if c not in facts.positions:
            continue
        subj, verb = _subject(c, n)
        parts.append(f"{subj} {verb} {_where(facts.positions[c])}")
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def sizes_sentence(facts: RuleFacts) -> str | None:
    classes = [c for c in facts.counts if c in facts.relative_size]
    if not classes:
        return None
    ranked = sorted(classes, key=lambda c: (-facts.relative_size[c], c))
    big = ranked[0]
    if len(ranked) == 1 and facts.counts[big] == 1:
        share = facts.relative_size[big]
        return f"The {big} takes up about {max(1, round(100 * share))}% of the image."
    n_big = facts.counts[big]
    subj, verb = _subject(big, n_big)
    label = "the largest annotated object" if n_big == 1 else "the largest annotated objects"
    text = f"{subj[0].upper()}{subj[1:]} {verb} {label}"
    if big in facts.sizes_m:
        text += f", about {max(1, _round_metres(facts.sizes_m[big]))} m across"
    if len(ranked) > 1:
        small = ranked[-1]
        s_subj, s_verb = _subject(small, facts.counts[small])
        if small in facts.sizes_m:
            text += f"; {s_subj} {s_verb} about {max(1, _round_metres(facts.sizes_m[small]))} m across"
        else:
            text += f"; {s_subj} {s_verb} the smallest"
    return text + "."


# Mask classes named in the plural even without instance counts ("buildings cover", "water covers").
_COUNTABLE_COVER = frozenset({"building", "road", "tree", "car", "house", "vehicle", "ship", "boat", "field"})


def cover_phrases(facts: RuleFacts, max_classes: int = 5, min_fraction: float = 0.01) -> list[str]:
    """``["large vehicles cover about 16%", "water about 2%"]``: the mask classes' shares of the image.

    A class with annotated instances (a countable thing: vehicles, ships) is named in the plural, a class
    without (water, forest, impervious surface) as it is; the first phrase carries the verb.
    """
    items = [(c, f) for c, f in facts.land_cover.items() if f >= min_fraction][:max_classes]
    out = []
    for i, (c, f) in enumerate(items):
        counted = facts.counts.get(c, 0) > 0 or c.rsplit(" ", 1)[-1] in _COUNTABLE_COVER
        name = plural(c) if counted else c
        verb = ("cover" if counted else "covers") if i == 0 else ""
        out.append(" ".join(w for w in (name, verb, f"about {round(100 * f)}%") if w))
    return out


def land_cover_sentence(facts: RuleFacts, max_classes: int = 5, min_fraction: float = 0.01) -> str | None:
    """``"Large vehicles cover about 16% of the image, small vehicles about 2%."`` (mask area shares)."""
    phrases = cover_phrases(facts, max_classes, min_fraction)
    if not phrases:
        return None
    first = phrases[0]
    text = f"{first} of the image" + "".join(f", {p}" for p in phrases[1:]) + "."
    return text[0].upper() + text[1:]


SENTENCE_BUILDERS = (
    scene_sentence,
    footprint_sentence,
    counts_sentence,
    absent_sentence,
    positions_sentence,
    sizes_sentence,
    land_cover_sentence,
)


def rule_sentences(facts: RuleFacts) -> list[str]:
    return [s for build in SENTENCE_BUILDERS if (s := build(facts))]


def rule_text(record: ImageRecord, facts: RuleFacts | None = None) -> str:
    """The rule perspective: all facts of ``record`` as a short paragraph (deterministic).

    An image without annotations gets ``"No annotations are available for this image."`` so the
    perspective is never empty.
    """
    facts = facts if facts is not None else rule_facts(record)
    sentences = rule_sentences(facts)
    return " ".join(sentences) if sentences else "No annotations are available for this image."
