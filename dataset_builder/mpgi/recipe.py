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

Every section is a validated dataclass; a bad or unknown key raises ``ValueError`` naming its path
(``generators[1].sampling``) and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .prompts import template_source

SERVER_TYPES = ("vllm", "sglang", "endpoint")
FACT_FILTER_MODES = ("off", "drop", "regenerate")
LENGTHS = ("short", "medium", "long")
TEMPLATE_INTEGRATOR = "template"
STRUCTURED_OUTPUT = ("auto", "json_schema", "off")
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


class RecipeError(ValueError):
    """A recipe key or value is wrong; the message names its path in the YAML file."""


def _check_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise RecipeError(f"{where}: {value!r} is not a valid name (letters, digits, '_', '.', '-')")
    return value


def _positive_int(value: Any, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecipeError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _positive_float(value: Any, where: str, allow_zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 if allow_zero else value > 0)
    ):
        raise RecipeError(
            f"{where}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}"
        )
    return float(value)


@dataclass
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

    server: str
    model: str
    endpoint_url: str | None = None
    api_key_env: str | None = None
    max_concurrent: int = 64
    request_timeout: float = 120.0
    retries: int = 3
    retry_backoff: float = 1.0
    max_context: int = 8192
    tp: int = 1
    dp: int = 1
    pp: int = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    server_ready_attempts: int = 120
    server_ready_delay: float = 5.0
    circuit_breaker: int = 5
    max_image_side: int = 1024

    @property
    def server_root(self) -> str | None:
        """``endpoint_url`` without a trailing ``/`` or ``/v1`` (datatrove appends ``/v1/...`` itself)."""
        if self.endpoint_url is None:
            return None
        root = self.endpoint_url.rstrip("/")
        return root[: -len("/v1")] if root.endswith("/v1") else root

    def validate(self, where: str) -> None:
        if self.server not in SERVER_TYPES:
            raise RecipeError(f"{where}.server: {self.server!r} is not one of {', '.join(SERVER_TYPES)}")
        if not isinstance(self.model, str) or not self.model:
            raise RecipeError(
                f"{where}.model: needs a model id or a local model directory, got {self.model!r}"
            )
        if self.server == "endpoint":
            if not isinstance(self.endpoint_url, str) or not re.match(r"^https?://", self.endpoint_url):
                raise RecipeError(
                    f"{where}.endpoint_url: server 'endpoint' needs an http(s):// URL (the server root or "
                    "its /v1 base URL), "
                    f"got {self.endpoint_url!r}"
                )
        if self.api_key_env is not None and (
            not isinstance(self.api_key_env, str)
            or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env)
        ):
            raise RecipeError(
                f"{where}.api_key_env: expected the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                f"got {self.api_key_env!r}"
            )
        for name in (
            "max_concurrent",
            "max_context",
            "tp",
            "dp",
            "pp",
            "server_ready_attempts",
            "circuit_breaker",
            "max_image_side",
        ):
            _positive_int(getattr(self, name), f"{where}.{name}")
        _positive_int(self.retries, f"{where}.retries", minimum=0)
        for name in ("request_timeout", "server_ready_delay"):
            setattr(self, name, _positive_float(getattr(self, name), f"{where}.{name}"))
        self.retry_backoff = _positive_float(self.retry_backoff, f"{where}.retry_backoff", allow_zero=True)
        if not isinstance(self.model_kwargs, dict):
            raise RecipeError(f"{where}.model_kwargs: expected a mapping, got {self.model_kwargs!r}")


@dataclass
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

    name: str
    backend: str
    perspective: str
    prompt: str = "perspective.jinja"
    relay_rules: bool = False
    image: bool = True
    n: int = 1
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.7, "max_tokens": 256})

    def validate(self, where: str) -> None:
        _check_name(self.name, f"{where}.name")
        _check_name(self.perspective, f"{where}.perspective")
        _positive_int(self.n, f"{where}.n")
        if not isinstance(self.sampling, dict):
            raise RecipeError(f"{where}.sampling: expected a mapping, got {self.sampling!r}")
        for flag in ("relay_rules", "image"):
            if not isinstance(getattr(self, flag), bool):
                raise RecipeError(f"{where}.{flag}: expected true or false, got {getattr(self, flag)!r}")


@dataclass
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
    captions: dict[str, int] = field(default_factory=lambda: {"short": 2, "medium": 2, "long": 2})
    words: dict[str, list[int]] = field(
        default_factory=lambda: {"short": [4, 15], "medium": [12, 35], "long": [30, 90]}
    )
    max_repairs: int = 2
    fact_filter: str = "regenerate"
    max_regenerations: int = 1
    min_captions: int = 1
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.7, "max_tokens": 1024})
    length_tolerance: float = 0.25
    structured_output: str = "auto"
    references: bool = False
    references_skip_splits: list[str] = field(default_factory=lambda: ["test"])
    references_contamination: list[str] = field(default_factory=list)
    references_contamination_distance: int = 4

    @property
    def n_captions(self) -> int:
        return sum(self.captions.values())

    def validate(self, where: str) -> None:
        if not isinstance(self.captions, dict) or not self.captions:
            raise RecipeError(f"{where}.captions: expected a mapping like {{short: 2, medium: 2, long: 2}}")
        for key, value in self.captions.items():
            if key not in LENGTHS:
                raise RecipeError(f"{where}.captions.{key}: unknown length; use {', '.join(LENGTHS)}")
            _positive_int(value, f"{where}.captions.{key}", minimum=0)
        if self.n_captions < 1:
            raise RecipeError(f"{where}.captions: asks for no caption at all")
        if not isinstance(self.words, dict):
            raise RecipeError(
                f"{where}.words: expected a mapping like {{short: [8, 15]}}, got {self.words!r}"
            )
        for key, value in self.words.items():
            if key not in LENGTHS:
                raise RecipeError(f"{where}.words.{key}: unknown length; use {', '.join(LENGTHS)}")
            if not (
                isinstance(value, list | tuple)
                and len(value) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
                and 0 < value[0] <= value[1]
            ):
                raise RecipeError(f"{where}.words.{key}: expected [min, max] word counts, got {value!r}")
        for key in self.captions:
            if key not in self.words:
                raise RecipeError(f"{where}.words: no word range for length {key!r}")
        _positive_int(self.max_repairs, f"{where}.max_repairs", minimum=0)
        _positive_int(self.max_regenerations, f"{where}.max_regenerations", minimum=0)
        _positive_int(self.min_captions, f"{where}.min_captions")
        if self.fact_filter not in FACT_FILTER_MODES:
            raise RecipeError(
                f"{where}.fact_filter: {self.fact_filter!r} is not one of {', '.join(FACT_FILTER_MODES)}"
            )
        if not isinstance(self.sampling, dict):
            raise RecipeError(f"{where}.sampling: expected a mapping, got {self.sampling!r}")
        self.length_tolerance = _positive_float(
            self.length_tolerance, f"{where}.length_tolerance", allow_zero=True
        )
        if self.structured_output not in STRUCTURED_OUTPUT:
            raise RecipeError(
                f"{where}.structured_output: {self.structured_output!r} is not one of {', '.join(STRUCTURED_OUTPUT)}"
            )
        if not isinstance(self.references, bool):
            raise RecipeError(f"{where}.references: expected true or false, got {self.references!r}")
        for key in ("references_skip_splits", "references_contamination"):
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise RecipeError(f"{where}.{key}: expected a list of strings, got {value!r}")
        if (
            isinstance(self.references_contamination_distance, bool)
            or not isinstance(self.references_contamination_distance, int)
            or not -1 <= self.references_contamination_distance <= 16
        ):
            raise RecipeError(
                f"{where}.references_contamination_distance: expected an integer in [-1, 16], "
                f"got {self.references_contamination_distance!r}"
            )


DEFAULT_REFUSAL_PATTERNS = [
    r"^\W*(?:I'?m|I am) (?:so |very )?sorry\b.{0,80}\b(?:can(?:no|')t|unable|not able|won'?t)\b",
    r"^\W*(?:I|We) (?:can(?:no|')t|am unable to|'m unable to|am not able to|won'?t) "
    r"(?:help|assist|comply|provide|describe|do that|fulfil)",
    r"^\W*(?:Sorry|Unfortunately),? (?:but )?I (?:can(?:no|')t|am unable|'m unable)",
    r"^\W*As an AI(?: language model)?\b",
]


@dataclass
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

    refusal_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS))
    chars_per_token: float = 8.0
    max_chars: int = 20000
    accept_truncated: bool = False

    def validate(self, where: str) -> None:
        if not isinstance(self.refusal_patterns, list) or not all(
            isinstance(p, str) for p in self.refusal_patterns
        ):
            raise RecipeError(f"{where}.refusal_patterns: expected a list of regular expressions")
        for i, pattern in enumerate(self.refusal_patterns):
            try:
                re.compile(pattern)
            except re.error as e:
                raise RecipeError(
                    f"{where}.refusal_patterns[{i}]: {pattern!r} is not a regular expression: {e}"
                ) from None
        self.chars_per_token = _positive_float(self.chars_per_token, f"{where}.chars_per_token")
        _positive_int(self.max_chars, f"{where}.max_chars")
        if not isinstance(self.accept_truncated, bool):
            raise RecipeError(
                f"{where}.accept_truncated: expected true or false, got {self.accept_truncated!r}"
            )


@dataclass
class ExecutionSpec:
    """How datatrove runs the stages.

    Args:
        records_per_chunk: checkpoint granularity of each InferenceRunner (documents per chunk file).
        slurm: keyword arguments of ``SlurmPipelineExecutor`` (``partition``, ``time``, ``gpus_per_task``,
            ``cpus_per_task``, ``mem_per_cpu_gb``, ``venv_path``, ``sbatch_args``...).
        ray: keyword arguments of ``RayPipelineExecutor`` (``gpus_per_task``, ``cpus_per_task``...).
    """

    records_per_chunk: int = 500
    slurm: dict[str, Any] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        _positive_int(self.records_per_chunk, f"{where}.records_per_chunk")
        for name in ("slurm", "ray"):
            if not isinstance(getattr(self, name), dict):
                raise RecipeError(f"{where}.{name}: expected a mapping of executor arguments")


@dataclass
class Recipe:
    """A validated MpGI recipe; see the module docstring for the YAML layout."""

    name: str
    description: str = ""
    backends: dict[str, BackendSpec] = field(default_factory=dict)
    generators: list[GeneratorSpec] = field(default_factory=list)
    integrator: IntegratorSpec = field(default_factory=IntegratorSpec)
    checks: AnswerChecks = field(default_factory=AnswerChecks)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    source_path: str | None = None  # where it was loaded from (not part of the hash)

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        for key, backend in self.backends.items():
            _check_name(key, f"backends.{key}")
            if key == TEMPLATE_INTEGRATOR:
                raise RecipeError(
                    f"backends.{key}: {TEMPLATE_INTEGRATOR!r} is reserved for the template integrator"
                )
            backend.validate(f"backends.{key}")
        names = set()
        for i, gen in enumerate(self.generators):
            gen.validate(f"generators[{i}]")
            if gen.name in names or gen.name in ("rule", "references"):
                raise RecipeError(
                    f"generators[{i}].name: {gen.name!r} is used twice (or is the reserved 'rule' or 'references')"
                )
            names.add(gen.name)
            if gen.backend not in self.backends:
                raise RecipeError(
                    f"generators[{i}].backend: {gen.backend!r} is not defined under backends "
                    f"(defined: {sorted(self.backends) or 'none'})"
                )
        self.integrator.validate("integrator")
        if self.integrator.backend != TEMPLATE_INTEGRATOR and self.integrator.backend not in self.backends:
            raise RecipeError(
                f"integrator.backend: {self.integrator.backend!r} is neither 'template' nor defined under "
                f"backends (defined: {sorted(self.backends) or 'none'})"
            )
        self.checks.validate("checks")
        self.execution.validate("execution")

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
        data = asdict(self)
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
            "execution": asdict(self.execution),
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
# Loading
# ---------------------------------------------------------------------- #


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    known = {f.name for f in fields(cls)} - {"source_path"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(f"{where}.{unknown[0]}: unknown key; valid keys are {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as e:  # a required key is missing
        missing = [f.name for f in fields(cls) if f.name not in data and f.name in str(e)]
        raise RecipeError(f"{where}: missing required key {missing[0] if missing else ''!r} ({e})") from None


_ENV_RE = re.compile(r"\$\{([^}:]*)(?::-([^}]*))?\}")
# The only environment variables a recipe may read: non-secret settings of shipped recipes. API keys come
# from ``api_key_env`` (read inside the task, never written anywhere); any other ``${VAR}`` is an error,
# so that ``model: "${HF_TOKEN}"`` cannot copy a secret into recipe.json, manifests, logs and requests.
ENV_ALLOWLIST = ("HQRS_MPGI_ENDPOINT", "HQRS_MPGI_MODEL")


def _expand_env(value: Any, where: str = "") -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in string values, for the variables of :data:`ENV_ALLOWLIST` only."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name = m.group(1)
            if name not in ENV_ALLOWLIST:
                raise RecipeError(
                    f"{where or 'recipe'}: ${{{name}}} is not allowed: a recipe may only read the non-secret "
                    f"settings {', '.join(ENV_ALLOWLIST)} from the environment (an API key is named by "
                    "backends.<name>.api_key_env and never copied into the recipe); write the value itself or "
                    "pass it with --set"
                )
            if os.environ.get(name):
                return os.environ[name]
            if m.group(2) is not None:
                return m.group(2)
            raise RecipeError(
                f"{where or 'recipe'}: environment variable {name} is not set and has no default"
            )

        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Set dotted keys (``backends.tiny.endpoint_url``, ``generators.0.n``) in a raw recipe mapping.

    ``overrides`` is a mapping or a list of ``KEY=VALUE`` strings (values parsed as YAML).
    """
    if not overrides:
        return data
    if isinstance(overrides, list | tuple):
        parsed = {}
        for item in overrides:
            if "=" not in item:
                raise RecipeError(
                    f"override {item!r}: expected KEY=VALUE, e.g. backends.llm.endpoint_url=http://..."
                )
            key, _, raw = item.partition("=")
            parsed[key.strip()] = yaml.safe_load(raw)
        overrides = parsed
    for dotted, value in overrides.items():
        node: Any = data
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(
                        f"override {dotted!r}: {where} is not an index of a {len(node)}-item list"
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise RecipeError(
                    f"override {dotted!r}: {where} is inside a value that is not a mapping or list"
                )
    return data


def recipe_from_dict(data: dict[str, Any], source_path: str | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {source_path or ''}: the YAML document must be a mapping")
    data = _expand_env(data)
    known = {f.name for f in fields(Recipe)} - {"source_path"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(
            f"{unknown[0]}: unknown top-level recipe key; valid keys are {', '.join(sorted(known))}"
        )
    if "name" not in data:
        raise RecipeError("name: missing required key (the recipe's name)")
    backends_raw = data.get("backends") or {}
    if not isinstance(backends_raw, dict):
        raise RecipeError("backends: expected a mapping of backend name → settings")
    gens_raw = data.get("generators") or []
    if not isinstance(gens_raw, list):
        raise RecipeError("generators: expected a list of generator settings")
    try:
        return Recipe(
            name=data["name"],
            description=data.get("description", ""),
            backends={k: _build(BackendSpec, v, f"backends.{k}") for k, v in backends_raw.items()},
            generators=[_build(GeneratorSpec, g, f"generators[{i}]") for i, g in enumerate(gens_raw)],
            integrator=_build(IntegratorSpec, data.get("integrator") or {}, "integrator"),
            checks=_build(AnswerChecks, data.get("checks") or {}, "checks"),
            execution=_build(ExecutionSpec, data.get("execution") or {}, "execution"),
            source_path=source_path,
        )
    except RecipeError as e:
        if source_path:
            raise RecipeError(f"recipe {source_path}: {e}") from None
        raise


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
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
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
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {source}: not valid YAML: {e}") from None
    if isinstance(data, dict):
        data = apply_overrides(data, overrides)
    return recipe_from_dict(data, source_path=source)
