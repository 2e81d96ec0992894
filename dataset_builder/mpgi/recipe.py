"""MpGI recipes: which models describe each image from which perspective, and how the descriptions are fused.

A recipe is a YAML file (shipped ones live in ``hqrs.dataset_builder.recipes``)::

    name: my-recipe
    backends:                      # one inference server each; one datatrove InferenceRunner stage each
      mllm:
        server: vllm               # vllm | sglang | endpoint
        model: Qwen/Qwen2.5-VL-7B-Instruct
    generators:                    # the perspectives
      - name: qwen-scene
        backend: mllm
        perspective: scene
        prompt: perspective.jinja  # a shipped template name or a path
    integrator:
      backend: template            # "template" (deterministic, no model) or a backend name
      captions: {short: 2, medium: 2, long: 2}

Every section is a frozen pydantic dataclass (``extra="forbid"``): a bad or unknown key raises
:class:`RecipeError`, one line naming the file, the key's path and what it expects::

    recipe 'r.yaml': generators[1].n: expected an integer >= 1, got 0
    recipe 'r.yaml': generators[0].temprature: unknown key; valid keys are backend, image, n, ...

Its JSON schema (for editors and linters of recipe files): :meth:`Recipe.model_json_schema` or
``hqrs mpgi recipe-schema``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from typing_extensions import dataclass_transform

from .prompts import template_source

ServerType = Literal["vllm", "sglang", "endpoint"]
FactFilter = Literal["off", "drop", "regenerate"]
Length = Literal["short", "medium", "long"]
StructuredOutput = Literal["auto", "json_schema", "off"]
SERVER_TYPES: tuple[str, ...] = get_args(ServerType)
FACT_FILTER_MODES: tuple[str, ...] = get_args(FactFilter)
LENGTHS: tuple[str, ...] = get_args(Length)
STRUCTURED_OUTPUT: tuple[str, ...] = get_args(StructuredOutput)
TEMPLATE_INTEGRATOR = "template"
# backend keys that change how requests are sent, not what the captions are (not part of the recipe hash)
OPERATIONAL_BACKEND_KEYS = (
    "server",
    "endpoint_url",
    "api_key_env",
    "max_concurrent",
    "request_timeout",
    "retries",
    "retry_backoff",
    "tp",
    "dp",
    "pp",
    "server_ready_attempts",
    "server_ready_delay",
    "circuit_breaker",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RecipeError(ValueError):
    """A recipe key or value is wrong; the message names its path in the YAML file."""


class _Problem(ValueError):
    """Raised by a validator: ``message`` about its value, or (with ``path``) about a key below it."""

    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.message, self.path = message, path


# --------------------------------------------------------------------------- #
# Value types: each says once what it accepts, in the words of a YAML file
# --------------------------------------------------------------------------- #


def _accepts(test: Callable[[Any], Any], expected: str) -> BeforeValidator:
    """Check the raw value before pydantic's type conversion (a bool is not an integer, "5" not a number)."""

    def check(value: Any) -> Any:
        if not test(value):
            raise _Problem(expected)
        return value

    return BeforeValidator(check)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(minimum: int) -> Any:
    check = _accepts(lambda v: _is_int(v) and v >= minimum, f"expected an integer >= {minimum}")
    return Annotated[int, Field(ge=minimum), check]


PositiveInt = _int_at_least(1)
Count = _int_at_least(0)
PositiveFloat = Annotated[
    float, Field(gt=0), _accepts(lambda v: _is_number(v) and v > 0, "expected a positive number")
]
NonNegativeFloat = Annotated[
    float, Field(ge=0), _accepts(lambda v: _is_number(v) and v >= 0, "expected a non-negative number")
]
Flag = Annotated[bool, _accepts(lambda v: isinstance(v, bool), "expected true or false")]
Name = Annotated[
    str,
    Field(pattern=_NAME_RE.pattern),
    _accepts(
        lambda v: isinstance(v, str) and _NAME_RE.match(v), "expected a name (letters, digits, '_', '.', '-')"
    ),
]
WordRange = Annotated[
    list[int | float],
    _accepts(
        lambda v: (
            isinstance(v, list | tuple) and len(v) == 2 and all(map(_is_number, v)) and 0 < v[0] <= v[1]
        ),
        "expected [min, max] word counts",
    ),
]


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise _Problem(f"not a regular expression: {e}") from None
    return pattern


# request parameters checked where a recipe sets them (others pass through to the server unchecked)
_SAMPLING_CHECKS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "max_tokens": (lambda v: _is_int(v) and v >= 1, "expected an integer >= 1"),
    "temperature": (lambda v: _is_number(v) and v >= 0, "expected a non-negative number"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "expected a number in (0, 1]"),
    "seed": (_is_int, "expected an integer"),
}


class _Problems(ValueError):
    """Several :class:`_Problem` of one value, reported together (every bad key of a section at once)."""

    def __init__(self, problems: list[_Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def _check_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    problems = [
        _Problem(f"{expected}, got {_show(sampling[key])}", key)
        for key, (test, expected) in _SAMPLING_CHECKS.items()
        if key in sampling and not test(sampling[key])
    ]
    if problems:
        raise problems[0] if len(problems) == 1 else _Problems(problems)
    return sampling


Sampling = Annotated[dict[str, Any], AfterValidator(_check_sampling)]
_CONFIG = ConfigDict(extra="forbid")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def _section(cls: type) -> type:
    """A frozen pydantic dataclass whose direct construction (``IntegratorSpec(...)``,
    ``dataclasses.replace``) raises :class:`RecipeError` too."""
    cls = pydantic_dataclass(frozen=True, config=_CONFIG)(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as e:
            raise RecipeError(describe_errors(e, type(self))) from None

    cls.__init__ = __init__
    return cls


# --------------------------------------------------------------------------- #
# Sections
# --------------------------------------------------------------------------- #


@_section
class BackendSpec:
    """One inference server (→ one datatrove ``InferenceConfig`` and one ``InferenceRunner`` stage).

    Args:
        server: ``vllm`` or ``sglang`` (datatrove spawns the server on the task's node) or ``endpoint``
            (any running OpenAI-compatible server, e.g. ``transformers serve``, at ``endpoint_url``).
        model: model id or local directory; sent as ``model`` in every request.
        endpoint_url: URL of an ``endpoint`` server, its root (``http://127.0.0.1:8000``) or its OpenAI
            base URL (``http://127.0.0.1:8000/v1``); both mean the same server.
        api_key_env: name of the environment variable holding the endpoint's API key (sent as a Bearer
            token to non-local endpoints). The key itself never goes into a recipe or a run directory.
        max_concurrent: requests in flight per task.
        request_timeout: seconds before a request counts as failed and is retried.
        retries: attempts per request after the first one (5xx, timeouts, resets, empty or
            malformed answers); then the record is marked failed.
        retry_backoff: seconds before the first retry, doubled each time.
        max_context, tp, dp, pp, model_kwargs: passed to datatrove's ``InferenceConfig``
            (``model_kwargs`` become server flags, e.g. ``{max-model-len: 16384}``).
        server_ready_attempts, server_ready_delay: readiness polling of the server (``/v1/models``).
        circuit_breaker: after this many consecutive connection failures (refused, reset, timed out) the
            stage stops (unfinished records stay pending) instead of timing out every record.
        max_image_side: images are downscaled so that their longer side is at most this (pixels).
    """

    server: ServerType
    model: Annotated[
        str, _accepts(lambda v: isinstance(v, str) and v, "expected a model id or a local model directory")
    ]
    endpoint_url: str | None = None
    api_key_env: Annotated[
        Annotated[str, Field(pattern=_ENV_NAME_RE.pattern)] | None,
        _accepts(
            lambda v: v is None or (isinstance(v, str) and _ENV_NAME_RE.match(v)),
            "expected the NAME of an environment variable (e.g. OPENAI_API_KEY)",
        ),
    ] = None
    max_concurrent: PositiveInt = 64
    request_timeout: PositiveFloat = 120.0
    retries: Count = 3
    retry_backoff: NonNegativeFloat = 1.0
    max_context: PositiveInt = 8192
    tp: PositiveInt = 1
    dp: PositiveInt = 1
    pp: PositiveInt = 1
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    server_ready_attempts: PositiveInt = 120
    server_ready_delay: PositiveFloat = 5.0
    circuit_breaker: PositiveInt = 5
    max_image_side: PositiveInt = 1024

    @model_validator(mode="after")
    def _endpoint_needs_url(self) -> BackendSpec:
        if self.server == "endpoint" and not re.match(r"^https?://", self.endpoint_url or ""):
            raise _Problem(
                "server 'endpoint' needs an http(s):// URL (the server root or its /v1 base URL), "
                f"got {self.endpoint_url!r}",
                "endpoint_url",
            )
        return self

    @property
    def server_root(self) -> str | None:
        """``endpoint_url`` without a trailing ``/`` or ``/v1`` (datatrove appends ``/v1/...`` itself)."""
        if self.endpoint_url is None:
            return None
        root = self.endpoint_url.rstrip("/")
        return root[: -len("/v1")] if root.endswith("/v1") else root


@_section
class GeneratorSpec:
    """One perspective: a model, a prompt template and sampling settings.

    Args:
        name: unique generator name; the provenance of captions refers to it.
        backend: key in ``backends``.
        perspective: what the prompt asks for (``relay``, ``scene``, ``objects``, ``spatial``, ``land-cover``).
        prompt: Jinja template (shipped name such as ``perspective.jinja``, or a path).
        relay_rules: put the rule facts in the prompt (the Rule-MLLM relay).
        image: send the image (as a data URL); ``false`` for text-only models.
        n: descriptions per image from this generator (requests with different seeds).
        sampling: request parameters (``temperature``, ``max_tokens``, ``top_p``, ``seed``...).
    """

    name: Name
    backend: str
    perspective: Name
    prompt: str = "perspective.jinja"
    relay_rules: Flag = False
    image: Flag = True
    n: PositiveInt = 1
    sampling: Sampling = dataclasses.field(default_factory=lambda: {"temperature": 0.7, "max_tokens": 256})


@_section
class IntegratorSpec:
    """The fusion of all perspectives into final captions.

    Args:
        backend: ``template`` (deterministic captions from the rule facts, no model) or a key in
            ``backends`` (an instruct LLM).
        prompt, repair_prompt: Jinja templates of the integration request and of the repair request
            sent when the answer is not valid JSON of the schema.
        captions: how many captions of each length (``short``/``medium``/``long``).
        words: word-count range per length, e.g. ``{short: [4, 15]}``; used in the prompt and checked.
        max_repairs: repair requests per image after an invalid answer.
        fact_filter: ``regenerate`` (ask again for captions that contradict the rule facts), ``drop``
            (remove them) or ``off``.
        max_regenerations: regeneration rounds for ``regenerate`` before the remaining bad captions
            are dropped.
        min_captions: fewer valid captions than this marks the image failed.
        sampling: request parameters of the integration requests.
        length_tolerance: a caption's word count may miss its ``words`` range by this fraction of the
            bounds (0.25: a ``[30, 90]`` long caption may have 23 to 112 words); others are rejected
            (regenerated like fact-filter rejects, or dropped).
        structured_output: ``auto`` sends the captions JSON schema as ``response_format``
            (``json_schema``) to vllm/sglang servers, which then generate valid JSON; ``json_schema``
            sends it to any server; ``off`` never does (the repair prompt handles invalid JSON).
        references, references_skip_splits, references_contamination, references_contamination_distance:
            show the source's human captions as one more perspective (``hqrs.dataset_builder.mpgi.references``),
            never for images of the skipped splits (default ``[test]``) or of the contamination sets.
    """

    backend: str = TEMPLATE_INTEGRATOR
    prompt: str = "integrate.jinja"
    repair_prompt: str = "repair.jinja"
    captions: dict[Length, Count] = dataclasses.field(
        default_factory=lambda: {"short": 2, "medium": 2, "long": 2}
    )
    words: dict[Length, WordRange] = dataclasses.field(
        default_factory=lambda: {"short": [4, 15], "medium": [12, 35], "long": [30, 90]}
    )
    max_repairs: Count = 2
    fact_filter: FactFilter = "regenerate"
    max_regenerations: Count = 1
    min_captions: PositiveInt = 1
    sampling: Sampling = dataclasses.field(default_factory=lambda: {"temperature": 0.7, "max_tokens": 1024})
    length_tolerance: NonNegativeFloat = 0.25
    structured_output: StructuredOutput = "auto"
    references: Flag = False
    references_skip_splits: list[Annotated[str, Field(min_length=1)]] = dataclasses.field(
        default_factory=lambda: ["test"]
    )
    references_contamination: list[Annotated[str, Field(min_length=1)]] = dataclasses.field(
        default_factory=list
    )
    references_contamination_distance: Annotated[
        int,
        Field(ge=-1, le=16),
        _accepts(lambda v: _is_int(v) and -1 <= v <= 16, "expected an integer in [-1, 16]"),
    ] = 4

    @model_validator(mode="after")
    def _captions_have_word_ranges(self) -> IntegratorSpec:
        if self.n_captions < 1:
            raise _Problem(
                "asks for no caption at all; expected a mapping like {short: 2, medium: 2, long: 2}",
                "captions",
            )
        for key in self.captions:
            if key not in self.words:
                raise _Problem(f"no word range for length {key!r}; add e.g. {key}: [8, 20]", "words")
        return self

    @property
    def n_captions(self) -> int:
        return sum(self.captions.values())


DEFAULT_REFUSAL_PATTERNS = [
    r"^\W*(?:I'?m|I am) (?:so |very )?sorry\b.{0,80}\b(?:can(?:no|')t|unable|not able|won'?t)\b",
    r"^\W*(?:I|We) (?:can(?:no|')t|am unable to|'m unable to|am not able to|won'?t) "
    r"(?:help|assist|comply|provide|describe|do that|fulfil)",
    r"^\W*(?:Sorry|Unfortunately),? (?:but )?I (?:can(?:no|')t|am unable|'m unable)",
    r"^\W*As an AI(?: language model)?\b",
]


@_section
class AnswerChecks:
    """How model answers are checked before they are stored (a failed check is retried with another seed,
    then the record is failed and retried on the next run).

    Args:
        refusal_patterns: case-insensitive regular expressions matched at the start of an answer.
        chars_per_token: an answer longer than ``max_tokens`` x this many characters is rejected (a server
            that ignores ``max_tokens``).
        max_chars: the longest perspective accepted when the request sets no ``max_tokens``.
        accept_truncated: keep an answer the server cut off at ``max_tokens`` (``finish_reason=length``;
            its text may end mid-sentence) instead of retrying it. Off by default; meant for perspectives
            deliberately capped by ``max_tokens`` and for random-weight test models, which never stop
            by themselves.
    """

    refusal_patterns: list[Annotated[str, AfterValidator(_compiles)]] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS)
    )
    chars_per_token: PositiveFloat = 8.0
    max_chars: PositiveInt = 20000
    accept_truncated: Flag = False


@_section
class ExecutionSpec:
    """How datatrove runs the stages.

    Args:
        records_per_chunk: checkpoint granularity of each InferenceRunner (documents per chunk file).
        slurm: keyword arguments of ``SlurmPipelineExecutor`` (``partition``, ``time``, ``gpus_per_task``,
            ``cpus_per_task``, ``mem_per_cpu_gb``, ``venv_path``, ``sbatch_args``...).
        ray: keyword arguments of ``RayPipelineExecutor`` (``gpus_per_task``, ``cpus_per_task``...).
    """

    records_per_chunk: PositiveInt = 500
    slurm: dict[str, Any] = dataclasses.field(default_factory=dict)
    ray: dict[str, Any] = dataclasses.field(default_factory=dict)


@_section
class Recipe:
    """A validated MpGI recipe; see the module docstring for the YAML layout.

    Args:
        name: the recipe's name (recorded in the run manifest).
        description: free text.
        backends: inference servers by name (``template`` is reserved).
        generators: the perspectives, in order.
        integrator: how the perspectives become captions.
        checks: how model answers are checked.
        execution: how datatrove runs the stages.
        source_path: where the recipe was loaded from (templates resolve against its folder); not a key of
            the file and not part of the hash.
    """

    name: Name
    description: str = ""
    backends: dict[Name, BackendSpec] = dataclasses.field(default_factory=dict)
    generators: list[GeneratorSpec] = dataclasses.field(default_factory=list)
    integrator: IntegratorSpec = dataclasses.field(default_factory=IntegratorSpec)
    checks: AnswerChecks = dataclasses.field(default_factory=AnswerChecks)
    execution: ExecutionSpec = dataclasses.field(default_factory=ExecutionSpec)
    source_path: str | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> Recipe:
        defined = f"(defined: {sorted(self.backends) or 'none'})"
        problems = []
        if TEMPLATE_INTEGRATOR in self.backends:
            problems.append(
                _Problem(
                    f"{TEMPLATE_INTEGRATOR!r} is reserved for the template integrator",
                    "backends",
                    TEMPLATE_INTEGRATOR,
                )
            )
        names: set[str] = set()
        for i, gen in enumerate(self.generators):
            if gen.name in names or gen.name in ("rule", "references"):
                problems.append(
                    _Problem(
                        f"{gen.name!r} is used twice (or is the reserved 'rule' or 'references')",
                        "generators",
                        i,
                        "name",
                    )
                )
            names.add(gen.name)
            if gen.backend not in self.backends:
                problems.append(
                    _Problem(
                        f"{gen.backend!r} is not defined under backends {defined}", "generators", i, "backend"
                    )
                )
        if self.integrator.backend != TEMPLATE_INTEGRATOR and self.integrator.backend not in self.backends:
            problems.append(
                _Problem(
                    f"{self.integrator.backend!r} is neither 'template' nor defined under backends {defined}",
                    "integrator",
                    "backend",
                )
            )
        if problems:
            raise problems[0] if len(problems) == 1 else _Problems(problems)
        return self

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]:
        """JSON schema of a recipe file: every key with its type, bounds, default and the description from
        its section's ``Args:`` docstring (``source_path`` left out: it is not a key of the file)."""
        schema = TypeAdapter(cls).json_schema()
        schema["properties"].pop("source_path")
        for section in [schema, *schema["$defs"].values()]:
            intro, _, args = section.get("description", "").partition("\nArgs:\n")
            section["description"] = intro.strip()
            # "    a, b: text" starts the entry of keys a and b; deeper-indented lines continue it
            for names, text in re.findall(r"^    ([\w, ]+):\s+(.*(?:\n {8}.*)*)", args, re.MULTILINE):
                for key in names.split(", "):
                    if key in section["properties"]:
                        section["properties"][key]["description"] = " ".join(text.split())
        return schema

    # ------------------------------------------------------------------ #
    @property
    def uses_models(self) -> bool:
        return bool(self.generators) or self.integrator.backend != TEMPLATE_INTEGRATOR

    def generator_backends(self) -> list[str]:
        """Backends that run generators, in first-use order (one generation stage each)."""
        out: list[str] = []
        for gen in self.generators:
            if gen.backend not in out:
                out.append(gen.backend)
        return out

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source_path")
        return data

    def content(self) -> dict[str, Any]:
        """What determines the captions: models, prompts, sampling, perspectives, integrator, caption spec.

        Operational settings (:data:`OPERATIONAL_BACKEND_KEYS`: endpoint, timeouts, concurrency, retries,
        parallelism; ``execution``: executor options) and the name/description are left out: they may change
        between runs of one run directory and are recorded per run in its manifest.
        """
        data = self.to_dict()
        for backend in data["backends"].values():
            for key in OPERATIONAL_BACKEND_KEYS:
                backend.pop(key, None)
        for key in ("execution", "name", "description"):
            data.pop(key)
        return data

    def operational(self) -> dict[str, Any]:
        """The settings :meth:`content` leaves out (recorded per run in the manifest; never a key)."""
        return {
            "backends": {
                name: {key: getattr(b, key) for key in OPERATIONAL_BACKEND_KEYS}
                for name, b in self.backends.items()
            },
            "execution": dataclasses.asdict(self.execution),
        }

    def hash(self, legacy: bool = False) -> str:
        """SHA-256 of the canonical JSON of :meth:`content` plus the text of every template it uses
        (``legacy``: of the whole recipe, as run directories made before 0.x recorded it)."""
        payload = self.to_dict() if legacy else self.content()
        templates = {gen.prompt for gen in self.generators}
        if self.integrator.backend != TEMPLATE_INTEGRATOR:
            templates |= {self.integrator.prompt, self.integrator.repair_prompt}
        payload["_templates"] = {t: template_source(t, self) for t in sorted(templates)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def models(self) -> dict[str, str]:
        return {key: b.model for key, b in self.backends.items()}


# ---------------------------------------------------------------------- #
# Error messages
# ---------------------------------------------------------------------- #

# pydantic error types -> what the recipe should hold instead, in the words of a YAML file
_EXPECTED = {
    "dict_type": "expected a mapping",
    "dataclass_type": "expected a mapping",
    "list_type": "expected a list",
    "string_type": "expected a string",
    "string_too_short": "expected a non-empty string",
    "bool_type": "expected true or false",
}


def _path(loc: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _keys_at(root: type, loc: tuple[str | int, ...]) -> list[str]:
    """The valid keys of the section at ``loc`` below ``root`` (a section class)."""
    tp: Any = root
    for part in loc:
        if dataclasses.is_dataclass(tp):
            tp = tp.__pydantic_fields__[part].annotation
        else:  # list[X] or dict[K, X]
            tp = get_args(tp)[-1]
    return sorted(f.name for f in dataclasses.fields(tp) if f.name != "source_path")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_errors(error: ValidationError, root: type) -> str:
    """One line for all the errors of a validation of ``root``: ``path: what is wrong, got value; ...``."""
    messages = []
    for err in error.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p != "[key]")
        kind, ctx = err["type"], err.get("ctx") or {}
        problem = ctx.get("error")
        if isinstance(problem, _Problems):
            messages += [f"{_path(loc + p.path)}: {p.message}" for p in problem.problems]
            continue
        if isinstance(problem, _Problem):
            loc += problem.path
            text = problem.message if problem.path else f"{problem.message}, got {_show(err['input'])}"
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            top = "top-level recipe " if root is Recipe and len(loc) == 1 else ""
            text = f"unknown {top}key; valid keys are {', '.join(_keys_at(root, loc[:-1]))}"
        elif kind == "missing":
            text = "missing required key"
        elif kind == "literal_error":
            text = f"expected one of {ctx['expected']}, got {_show(err['input'])}"
        else:
            text = f"{_EXPECTED.get(kind, err['msg'])}, got {_show(err['input'])}"
        messages.append(f"{_path(loc)}: {text}" if loc else text)
    return "; ".join(messages)


# ---------------------------------------------------------------------- #
# Loading
# ---------------------------------------------------------------------- #

_ENV_RE = re.compile(r"\$\{([^}:]*)(?::-([^}]*))?\}")
# The only environment variables a recipe may read: non-secret settings of shipped recipes. API keys come
# from ``api_key_env`` (read inside the task, never written anywhere); any other ``${VAR}`` is an error,
# so that ``model: "${HF_TOKEN}"`` cannot copy a secret into recipe.json, manifests, logs and requests.
ENV_ALLOWLIST = ("HQRS_MPGI_ENDPOINT", "HQRS_MPGI_MODEL")


def _expand_env(value: Any, where: str = "") -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in string values, for the variables of :data:`ENV_ALLOWLIST` only."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, default = m.groups()
        if name not in ENV_ALLOWLIST:
            raise RecipeError(
                f"{where}: ${{{name}}} is not allowed: a recipe may only read the non-secret "
                f"settings {', '.join(ENV_ALLOWLIST)} from the environment (an API key is named by "
                "backends.<name>.api_key_env and never copied into the recipe); write the value itself or "
                "pass it with --set"
            )
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        raise RecipeError(f"{where}: environment variable {name} is not set and has no default")

    return _ENV_RE.sub(sub, value)


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float rule: ``1e9``, ``1e-3`` and ``5.`` are numbers, as a user
    means them (YAML 1.1, which PyYAML follows, reads a float without a dot as a string)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse the text of a recipe file or of a ``--set`` value (safe loader, YAML 1.2 floats)."""
    return yaml.load(text, Loader=_YAMLLoader)  # noqa: S506 - a SafeLoader subclass


def _field_type(loc: list[str]) -> Any:
    """The declared type at ``loc`` (raw keys of a recipe mapping) below :class:`Recipe`; ``None`` if unknown."""
    tp: Any = Recipe
    for part in loc:
        if dataclasses.is_dataclass(tp):
            fields = tp.__pydantic_fields__
            if part not in fields:
                return None
            tp = fields[part].annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    return tp


def apply_overrides(
    data: dict[str, Any], overrides: dict[str, Any] | list[str] | None, recipe: str | None = None
) -> dict[str, Any]:
    """Set dotted keys (``backends.tiny.endpoint_url``, ``generators.0.n``) in a raw recipe mapping.

    ``overrides`` is a mapping or a list of ``KEY=VALUE`` strings (values parsed as YAML, with YAML 1.2
    floats: ``1e9`` is a number); the values are validated with the rest of the recipe afterwards. A numeric
    key indexes a list; an index the recipe (named ``recipe`` in errors) does not have is a
    :class:`RecipeError`: ``--set generators.0.n: recipe 'offline' has no generators[0] (it has 0 generators)``.
    """
    if isinstance(overrides, list | tuple):
        parsed = {}
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise RecipeError(
                    f"--set {item!r}: expected KEY=VALUE, e.g. backends.llm.endpoint_url=http://..."
                )
            try:
                parsed[key.strip()] = load_yaml(raw)
            except yaml.YAMLError as e:
                problem = " ".join(str(getattr(e, "problem", None) or e).split())
                raise RecipeError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
        overrides = parsed
    name = f"recipe {recipe!r}" if recipe else "the recipe"
    for dotted, value in (overrides or {}).items():
        parts = dotted.split(".")
        node: Any = data
        for i, part in enumerate(parts):
            above = _path(tuple(int(p) if p.isdigit() else p for p in parts[:i]))
            if isinstance(node, dict) and node.get(part) is None and i + 1 < len(parts):
                # a missing (or empty) key on the way: a new mapping, or an empty list where the schema has one
                declared = _field_type(parts[: i + 1])
                node[part] = [] if get_origin(declared) is list else {}
            if isinstance(node, list):
                if not part.isdigit():
                    raise RecipeError(
                        f"--set {dotted}: {above} is a list; index its items by number ({above}.0...)"
                    )
                if int(part) >= len(node):
                    items = parts[i - 1] if i else "items"
                    raise RecipeError(
                        f"--set {dotted}: {name} has no {above}[{part}] (it has {len(node)} {items})"
                    )
            elif not isinstance(node, dict):
                raise RecipeError(f"--set {dotted}: {above} is {_show(node)}, not a mapping or a list")
            key = int(part) if isinstance(node, list) else part
            if i == len(parts) - 1:
                node[key] = value
            else:
                node = node[key]
    return data


_SECTIONS = ("backends", "generators", "integrator", "checks", "execution")


def recipe_from_dict(data: dict[str, Any], source_path: str | None = None) -> Recipe:
    """Validate a raw recipe mapping (``${VAR}`` expanded here); errors are one :class:`RecipeError` line
    ``recipe '<source_path>': <key path>: <what is wrong>, got <value>``."""
    where = f"recipe {source_path!r}: " if source_path else ""
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe: '}the YAML document must be a mapping, got {_show(data)}")
    try:
        # an empty section (`integrator:` with nothing below) means its defaults
        data = {k: v for k, v in _expand_env(data).items() if not (k in _SECTIONS and v is None)}
        if "source_path" in data:  # where the recipe was read from, not a key of the file
            raise ValidationError.from_exception_data(
                "Recipe", [{"type": "extra_forbidden", "loc": ("source_path",), "input": data["source_path"]}]
            )
        return _RECIPE.validate_python({**data, "source_path": source_path})
    except ValidationError as e:
        raise RecipeError(where + describe_errors(e, Recipe)) from None
    except RecipeError as e:
        raise RecipeError(f"{where}{e}") from None


_RECIPE = TypeAdapter(Recipe)


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in ``hqrs.dataset_builder.recipes``."""
    root = resources.files("hqrs.dataset_builder.recipes")
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_recipe(
    name_or_path: str | os.PathLike, overrides: dict[str, Any] | list[str] | None = None
) -> Recipe:
    """Load a shipped recipe by name (``offline``, ``cpu-tiny``, ``gpu-vllm``) or a YAML file by path.

    Args:
        name_or_path: shipped recipe name or path to a YAML file.
        overrides: dotted keys to set before validation, e.g.
            ``{"backends.tiny.endpoint_url": "http://127.0.0.1:8000"}`` or ``["generators.0.n=2"]``.

    Example:
        >>> recipe = load_recipe("offline")
        >>> recipe.integrator.backend, recipe.integrator.n_captions
        ('template', 6)
    """
    text: str
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise RecipeError(
                f"recipe {str(path)!r} {what}; a recipe is a shipped name ({', '.join(shipped_recipes())}) "
                "or a YAML file"
            )
        text, source = path.read_text(encoding="utf-8"), str(path.resolve())
    else:
        name = str(name_or_path)
        available = shipped_recipes()
        if name not in available:
            raise RecipeError(
                f"unknown recipe {name!r}: use a shipped one ({', '.join(available)}) or a path to a YAML file"
            )
        text = (
            resources.files("hqrs.dataset_builder.recipes")
            .joinpath(f"{name}.yaml")
            .read_text(encoding="utf-8")
        )
        source = f"hqrs.dataset_builder.recipes/{name}.yaml"
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {source}: not valid YAML: {e}") from None
    if isinstance(data, dict):
        data = apply_overrides(data, overrides, recipe=str(name_or_path))
    return recipe_from_dict(data, source_path=source)
