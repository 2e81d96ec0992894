"""The references perspective: a source's human captions, given to the integrator as one more description.

Caption datasets (UCM-Captions, RSICD, Sydney, RSITMD) come with five human sentences per image; a
recipe with ``integrator.references: true`` shows them to the integrating LLM next to the rule facts and
the MLLM perspectives. They are never shown for an image that an evaluation may use:

- an image of a split named in ``integrator.references_skip_splits`` (default ``[test]``), and
- an image of a contamination set (``integrator.references_contamination``: source specs as for
  ``hqrs build --contamination``, e.g. ``karpathy:RSICD/dataset_rsicd.json?splits=test``; matched by
  content id or by perceptual hash within ``references_contamination_distance`` bits).

Otherwise the test captions would leak into training captions (and into CLIP retrieval scores).

Example:
    >>> from hqrs.dataset_builder.records import ImageRecord
    >>> guard = ReferenceGuard(skip_splits=("test",))
    >>> rec = ImageRecord(image_id="0" * 16, image="a.jpg", source="ucm", width=8, height=8,
    ...                   references=["Many buildings.", "many buildings. ", "A road."], split="train")
    >>> guard.perspective(rec)["text"]
    'Human captions of this image: (1) Many buildings. (2) A road.'
    >>> rec.split = "test"; guard.perspective(rec) is None
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..records import ImageRecord, Perspective
from ..sources import SkipReport, load_source

GENERATOR = "references"
PERSPECTIVE = "human-references"


@dataclass
class ReferenceGuard:
    """Decides which records show their human captions to the integrator, and writes that perspective.

    Args:
        skip_splits: source splits whose images never show references.
        content_ids: image ids (content hashes) of contamination sets.
        phashes: perceptual hashes (64-bit ints) of contamination sets.
        distance: Hamming distance within which a perceptual hash counts as the same image (-1: exact
            content only).
        max_references: at most this many distinct sentences per image.
    """

    skip_splits: tuple[str, ...] = ("test",)
    content_ids: set[str] = field(default_factory=set)
    phashes: list[int] = field(default_factory=list)
    distance: int = 4
    max_references: int = 5
    withheld: dict[str, int] = field(default_factory=dict)  # reason → records (for the run report)

    @classmethod
    def from_spec(cls, integrator) -> ReferenceGuard | None:
        """The guard of a recipe's integrator (``None`` when the recipe does not use references)."""
        if not getattr(integrator, "references", False):
            return None
        guard = cls(
            skip_splits=tuple(integrator.references_skip_splits),
            distance=int(integrator.references_contamination_distance),
        )
        guard.add_contamination(integrator.references_contamination)
        return guard

    def add_contamination(self, specs: Iterable[str]) -> None:
        """Read the images of source specs (``KIND:PATH?...``; a folder means ``images:FOLDER``)."""
        for spec in specs:
            if Path(spec).is_dir():
                spec = f"images:{spec}"
            if ":" not in spec:
                raise ValueError(
                    f"integrator.references_contamination: {spec!r} is neither a folder nor a source spec "
                    f"KIND:PATH (e.g. karpathy:RSICD/dataset_rsicd.json?splits=test)"
                )
            report = SkipReport()
            n = 0
            for record in load_source(spec).records(report):
                n += 1
                self.content_ids.add(record.image_id)
                if record.meta.get("phash"):
                    self.phashes.append(int(record.meta["phash"], 16))
            if n == 0:
                raise ValueError(
                    f"integrator.references_contamination: {spec!r} has no readable image ({len(report)} "
                    f"skipped): an empty contamination set would guard nothing"
                )

    def reason_withheld(self, record: ImageRecord) -> str | None:
        """Why ``record`` may not show its references (``None``: it may)."""
        if record.split is not None and record.split in self.skip_splits:
            return f"{record.split} split"
        if record.image_id in self.content_ids:
            return "in a contamination set"
        phash = record.meta.get("phash") if isinstance(record.meta, dict) else None
        if phash and self.phashes and self.distance >= 0:
            value = int(phash, 16)
            if any((value ^ other).bit_count() <= self.distance for other in self.phashes):
                return "in a contamination set (perceptual hash)"
        return None

    def perspective(self, record: ImageRecord) -> Perspective | None:
        """The references perspective of ``record``, or ``None`` (no references, or withheld)."""
        refs: list[str] = []
        seen: set[str] = set()
        for ref in record.references:
            text = " ".join(str(ref).split())
            key = text.lower().rstrip(" .")
            if text and key not in seen:
                seen.add(key)
                refs.append(text if text.endswith((".", "!", "?")) else text + ".")
        if not refs:
            return None
        reason = self.reason_withheld(record)
        if reason is not None:
            self.withheld[reason] = self.withheld.get(reason, 0) + 1
            return None
        refs = [r[:1].upper() + r[1:] for r in refs[: self.max_references]]
        text = "Human captions of this image: " + " ".join(f"({i}) {r}" for i, r in enumerate(refs, 1))
        return Perspective(
            generator=GENERATOR, perspective=PERSPECTIVE, model=None, prompt_id=None, text=text
        )
