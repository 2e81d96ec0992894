"""Typed hand-offs between MpGI stages, and their one conversion to and from datatrove ``Document`` metadata.

A record travels through a pass as a datatrove ``Document``: ``text`` is the image path, ``id`` the image
id and ``metadata`` holds JSON (datatrove writes it to the stage outputs and checkpoints). Inside MpGI the
record is typed:

- :class:`StageInput` — what every stage reads: the :class:`~hqrs.dataset_builder.records.ImageRecord`, its
  rule description and :class:`~hqrs.dataset_builder.rules.RuleFacts`, the human-references perspective
  (if allowed) and the perspectives kept from an earlier failed attempt;
- :class:`GenerationResult` — one generation stage (``gen:<backend>``): status, error, the
  :class:`~hqrs.dataset_builder.records.Perspective` list, token usage and counters;
- :class:`IntegrationResult` — the integration stage: status, error, the
  :class:`~hqrs.dataset_builder.records.Caption` list (with their sources), usage, counters and filter stats.

Each type has one ``to_metadata``/``from_metadata`` pair, here and nowhere else; the rest of MpGI works on
the types. The JSON layout is the one run directories have always had (old run directories read the same)::

    metadata = {
        "record": {...ImageRecord...}, "rule_text": "...", "facts": {...RuleFacts...},
        "references": {...Perspective...},            # optional
        "prior_perspectives": [{...Perspective...}],  # optional
        "gen:<backend>": [{"status", "error", "perspectives", "usage", "counters", "seconds"}],
        "integration": [{"status", "error", "captions", "usage", "counters", "stats", "seconds"}],
    }

A stage result is stored as a one-element list because datatrove's ``InferenceRunner`` stores the list of
its rollouts' results under its ``metadata_key``.

Example:
    >>> from hqrs.dataset_builder.records import Perspective
    >>> result = GenerationResult("ok", perspectives=[Perspective("g", "scene", "m", "p1", "A port.")])
    >>> GenerationResult.from_metadata(result.to_metadata()) == result
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..records import Caption, ImageRecord, Perspective
from ..rules import RuleFacts

GEN_KEY_PREFIX = "gen:"
INTEGRATION_KEY = "integration"


# ``dataclasses.asdict`` deep-copies field by field through ``copy.deepcopy``: for these flat records of
# strings a plain dict is the same JSON at a fraction of the cost (they are built per request).
def perspective_to_metadata(p: Perspective) -> dict[str, Any]:
    """A :class:`Perspective` as stored in metadata."""
    return {
        "generator": p.generator,
        "perspective": p.perspective,
        "model": p.model,
        "prompt_id": p.prompt_id,
        "text": p.text,
    }


def perspective_from_metadata(data: dict[str, Any]) -> Perspective:
    """The :class:`Perspective` of :func:`perspective_to_metadata`'s dict."""
    return Perspective(
        generator=data["generator"],
        perspective=data["perspective"],
        model=data.get("model"),
        prompt_id=data.get("prompt_id"),
        text=data["text"],
    )


def caption_to_metadata(c: Caption) -> dict[str, Any]:
    """A :class:`Caption` as stored in metadata."""
    return {"text": c.text, "length": c.length, "sources": list(c.sources)}


def caption_from_metadata(data: dict[str, Any]) -> Caption:
    """The :class:`Caption` of :func:`caption_to_metadata`'s dict."""
    return Caption(text=data["text"], length=data["length"], sources=list(data.get("sources") or []))


def _counts(data: Any) -> dict[str, int]:
    return {str(k): int(v or 0) for k, v in (data or {}).items()}


@dataclass
class StageInput:
    """What every stage of a pass reads for one image (written once, by the pass input).

    Attributes:
        record: the image and its annotations.
        rule_text: the rule perspective's description.
        facts: the rule facts (the ground truth of the fact filter).
        references: the source's human captions as a perspective, where allowed (``mpgi.references``).
        prior_perspectives: perspectives of an earlier failed attempt, reused instead of asked again.
    """

    record: ImageRecord
    rule_text: str
    facts: RuleFacts
    references: Perspective | None = None
    prior_perspectives: list[Perspective] = field(default_factory=list)
    # the stored JSON of ``record`` and ``facts`` (templates render from it; ``ImageRecord.to_dict`` costs
    # ~0.4 ms for 30 objects)
    _record_data: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    _facts_data: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def template_variables(self) -> dict[str, Any]:
        """``record``, ``facts`` (plain dicts) and ``rule_text``: the variables a generator prompt renders with."""
        return {
            "record": self._record_data if self._record_data is not None else self.record.to_dict(),
            "facts": self._facts_data if self._facts_data is not None else self.facts.to_dict(),
            "rule_text": self.rule_text,
        }

    def to_metadata(self) -> dict[str, Any]:
        variables = self.template_variables()
        meta: dict[str, Any] = {
            "record": variables["record"],
            "rule_text": self.rule_text,
            "facts": variables["facts"],
        }
        if self.references is not None:
            meta["references"] = perspective_to_metadata(self.references)
        if self.prior_perspectives:
            meta["prior_perspectives"] = [perspective_to_metadata(p) for p in self.prior_perspectives]
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> StageInput:
        references = meta.get("references")
        return cls(
            record=ImageRecord.from_dict(meta["record"]),
            rule_text=meta["rule_text"],
            facts=RuleFacts.from_dict(meta["facts"]),
            references=perspective_from_metadata(references) if references else None,
            prior_perspectives=[perspective_from_metadata(p) for p in meta.get("prior_perspectives") or []],
            _record_data=meta["record"],
            _facts_data=meta["facts"],
        )


@dataclass
class StageOutcome:
    """What every stage result has: ``status``, ``error`` and (keyword-only) ``usage``, ``counters``,
    ``seconds``; :class:`GenerationResult` and :class:`IntegrationResult` add their own payload.

    Attributes:
        status: ``"ok"`` or ``"failed"``.
        error: why it failed (``None`` when ok).
        usage: ``prompt_tokens`` / ``completion_tokens``.
        counters: requests, retries, errors and rejected answers by kind.
        seconds: the stage's time for this image (``None`` where not measured).
    """

    status: str
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict, kw_only=True)
    counters: dict[str, int] = field(default_factory=dict, kw_only=True)
    seconds: float | None = field(default=None, kw_only=True)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def _metadata(self, payload: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The stored layout: status, error, ``payload``, usage, counters, ``extra``, seconds (if measured)."""
        out: dict[str, Any] = {"status": self.status, "error": self.error, **payload}
        out["usage"] = dict(self.usage)
        out["counters"] = dict(self.counters)
        out.update(extra or {})
        if self.seconds is not None:
            out["seconds"] = self.seconds
        return out

    @staticmethod
    def _common_fields(data: dict[str, Any]) -> dict[str, Any]:
        """The :class:`StageOutcome` fields of stored ``data`` (a missing status reads as failed)."""
        return {
            "status": data.get("status", "failed"),
            "error": data.get("error"),
            "usage": _counts(data.get("usage")),
            "counters": _counts(data.get("counters")),
            "seconds": data.get("seconds"),
        }


@dataclass
class GenerationResult(StageOutcome):
    """The outcome of one generation stage (every generator of one backend) for one image.

    Attributes:
        status, error, usage, counters, seconds: see :class:`StageOutcome` (a failed stage keeps the
            perspectives that succeeded).
        perspectives: the generated descriptions, with their generator, model and prompt id.
    """

    perspectives: list[Perspective] = field(default_factory=list)

    def to_metadata(self) -> dict[str, Any]:
        return self._metadata({"perspectives": [perspective_to_metadata(p) for p in self.perspectives]})

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> GenerationResult:
        return cls(
            **cls._common_fields(data),
            perspectives=[perspective_from_metadata(p) for p in data.get("perspectives") or []],
        )


@dataclass
class IntegrationResult(StageOutcome):
    """The outcome of the integration stage for one image.

    Attributes:
        status, error, usage, counters, seconds: see :class:`StageOutcome`.
        captions: the final captions with their sources (``Perspective.generator`` names); empty unless ok.
        stats: repairs, regenerations and captions rejected/dropped by the length and fact filters
            (``None`` where the integrator keeps none, e.g. the template integrator).
    """

    captions: list[Caption] = field(default_factory=list)
    stats: dict[str, int] | None = None

    def to_metadata(self) -> dict[str, Any]:
        captions = {"captions": [caption_to_metadata(c) for c in self.captions]} if self.ok else {}
        stats = {"stats": dict(self.stats)} if self.stats is not None else {}
        return self._metadata(captions, stats)

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> IntegrationResult:
        stats = data.get("stats")
        return cls(
            **cls._common_fields(data),
            captions=[caption_from_metadata(c) for c in data.get("captions") or []],
            stats=_counts(stats) if stats is not None else None,
        )


def _first(meta: dict[str, Any], key: str) -> dict[str, Any] | None:
    results = meta.get(key) or []
    return results[0] if results else None


def generation_of(meta: dict[str, Any], backend: str) -> GenerationResult | None:
    """The result of the generation stage of ``backend`` in a document's metadata (``None``: not run)."""
    data = _first(meta, GEN_KEY_PREFIX + backend)
    return GenerationResult.from_metadata(data) if data is not None else None


def integration_of(meta: dict[str, Any]) -> IntegrationResult | None:
    """The result of the integration stage in a document's metadata (``None``: not run)."""
    data = _first(meta, INTEGRATION_KEY)
    return IntegrationResult.from_metadata(data) if data is not None else None


def stage_ok(meta: dict[str, Any], stage_key: str) -> bool:
    """Whether the stage ``stage_key`` (``gen:<backend>`` or ``integration``) ended ``ok`` for a document."""
    data = _first(meta, stage_key)
    return data is not None and data.get("status") == "ok"


def set_integration(meta: dict[str, Any], result: IntegrationResult) -> None:
    """Store ``result`` as the integration stage's result (steps that are not an ``InferenceRunner``)."""
    meta[INTEGRATION_KEY] = [result.to_metadata()]
