"""Stage a model or dataset folder exactly as it will be uploaded, check it, and push it.

``hqrs push ... --dry-run OUT`` and a real push go through the same :func:`stage_model` /
:func:`stage_dataset`: the staged folder *is* what :meth:`huggingface_hub.HfApi.upload_folder`
sends, so a dry run shows the exact files and operations.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hqrs.dataset_builder.build_folder import CARD, BuildFolder

from .cards import MODEL_KINDS, model_kind, render_dataset_card, render_model_card

# What a model repo may hold: safetensors weights and text metadata; never pickles.
MODEL_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "image_processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
TEXT_SUFFIXES = {".json", ".md", ".py", ".txt", ".yaml", ".yml", ".jinja", ".csv"}
# Every Hugging Face token format: user/fine-grained "hf_…", OAuth "hf_oauth_…", organisation "api_org_…"
# and the legacy "api_…" tokens.
TOKEN_RE = re.compile(rb"(?<![A-Za-z0-9])(?:hf_(?:oauth_)?|api_org_|api_)[A-Za-z0-9]{30,}")
# Environment variables whose values are secrets wherever they are set; plus any *_TOKEN / *_API_KEY /
# *_SECRET* / *_PASSWORD variable, and the recipe's api_key_env targets (see secret_values).
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN", "OPENAI_API_KEY")
_SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|API_KEY|APIKEY|SECRET|SECRET_KEY|PASSWORD)$")
_MIN_SECRET = 8  # shorter values ("1", "true") are settings, not secrets, and would match everywhere
_CHUNK = 1 << 22


@dataclass
class PlannedFile:
    path_in_repo: str
    size: int
    sha256: str


@dataclass
class PushPlan:
    """The exact content of one upload: a staged folder and its file list."""

    repo_id: str
    repo_type: str  # "model" | "dataset"
    folder: Path
    files: list[PlannedFile] = field(default_factory=list)

    def operations(self) -> list[str]:
        return [f"add {f.path_in_repo} ({f.size} bytes, sha256 {f.sha256[:12]})" for f in self.files]


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    if "/" not in repo_id:
        raise ValueError(f"--repo-id {repo_id!r} must be ORG/NAME (or USER/NAME)")
    try:
        validate_repo_id(repo_id)
    except Exception as exc:  # HFValidationError: message says what is wrong
        raise ValueError(f"--repo-id {repo_id!r} is not a valid Hub repo id: {exc}") from None


def _prepare_out(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"staging folder {str(out_dir)!r} is not empty; give a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)


def _copy_matching(src: Path, dst: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in sorted(src.glob(pattern)):
            if path.is_file():
                target = dst / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def _plan(folder: Path, repo_id: str, repo_type: str) -> PushPlan:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        files.append(
            PlannedFile(path.relative_to(folder).as_posix(), path.stat().st_size, digest.hexdigest())
        )
    return PushPlan(repo_id=repo_id, repo_type=repo_type, folder=folder, files=files)


def stage_model(
    model_dir: str | Path,
    out_dir: str | Path,
    repo_id: str,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    results: list | None = None,
    training: str | None = None,
    license: str = "apache-2.0",
) -> PushPlan:
    """Copy what a model repo holds into ``out_dir``, render its card and run :func:`check_folder`."""
    _validate_repo_id(repo_id)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    kind = model_kind(model_dir)
    pickles = [p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles and not list(model_dir.glob("*.safetensors")):
        raise ValueError(
            f"{str(model_dir)!r} holds only pickled weights {pickles}; re-save with save_pretrained(safe_serialization=True)"
        )
    _prepare_out(out_dir)
    _copy_matching(model_dir, out_dir, MODEL_PATTERNS)
    for name in kind.remote_files:  # remote code always comes from this package, never from the folder
        (out_dir / name).write_bytes(_package_source(name))
    kind.write_remote_code(out_dir)  # RS-CoCa: code files + auto_map of config and processor (#15.1)
    card = render_model_card(
        model_dir,
        repo_id,
        base_model=base_model,
        datasets=datasets,
        results=results,
        training=training,
        license=license,
    )
    card.save(out_dir / "README.md")
    check_folder(out_dir, "model")
    return _plan(out_dir, repo_id, "model")


def stage_dataset(
    dataset_dir: str | Path,
    out_dir: str | Path,
    repo_id: str,
    *,
    stats: dict | None = None,
    plots: list[str | Path] | None = None,
    sources: list[dict[str, str]] | None = None,
    license: str = "other",
) -> PushPlan:
    """Copy a ``hqrs build`` folder's shards, report and plots into ``out_dir`` with a rendered card.

    The staged folder has the build folder's layout (:class:`~hqrs.dataset_builder.build_folder.BuildFolder`):
    :meth:`~hqrs.dataset_builder.build_folder.BuildFolder.publish_files` (parquet shards, the build report
    with local paths made relative, plots), ``--plot`` files under ``stats/`` and the card.

    Raises:
        ValueError: a ``--format webdataset`` / ``open_clip-csv`` build (only parquet builds are pushed;
            the message names the format and says to rebuild with ``--format parquet``), a folder that is no
            build, bad ``stats`` / ``sources``, a plot that is no image (:func:`check_plot`) or what
            :func:`check_folder` refuses.
    """
    _validate_repo_id(repo_id)
    build, staged = BuildFolder(dataset_dir), BuildFolder(out_dir)
    plots = [Path(plot) for plot in plots or []]
    for plot in plots:
        check_plot(plot)
    names = [plot.name for plot in plots]
    if len(set(names)) < len(names):
        same = sorted({str(p) for p in plots if names.count(p.name) > 1})
        raise ValueError(
            f"plots {same} have the same file name and would overwrite each other in stats/; rename one"
        )
    # rendered first: a folder that is no (parquet) build, bad stats / sources fail before anything is
    # written to out_dir
    card = render_dataset_card(
        build.root,
        repo_id,
        stats=stats,
        plots=[staged.relative(staged.stats_file(plot.name)) for plot in plots],
        sources=sources,
        license=license,
    )
    _prepare_out(staged.root)
    for path in build.publish_files():
        target = staged.path(build.relative(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    if staged.report.is_file():
        public = _without_local_paths(json.loads(staged.report.read_text(encoding="utf-8")), build.root)
        staged.report.write_text(json.dumps(public, indent=2), encoding="utf-8")
    for plot in plots:
        target = staged.stats_file(plot.name)
        target.parent.mkdir(exist_ok=True)
        shutil.copy2(plot, target)
    card.save(staged.card)
    check_folder(staged.root, "dataset", recipe_secret_names(build.run_dir()))
    return _plan(staged.root, repo_id, "dataset")


# What a dataset card shows as a plot (``![name](stats/NAME)``): the image formats the Hub renders in a
# card, recognised by their content (the suffix must agree, so the file is served as what it is).
PLOT_FORMATS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "GIF": (".gif",), "WEBP": (".webp",)}


def check_plot(path: str | Path) -> str:
    """The image format of ``--plot`` file ``path`` (``"PNG"``, ``"JPEG"``, ``"GIF"``, ``"WEBP"`` or ``"SVG"``).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: ``path`` is not an image of those formats (by content: a JSON file, an image that does
            not decode, another image format) or its suffix names another format; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plot {str(path)!r} not found")
    expected = "a PNG, JPEG, GIF, WebP or SVG image (e.g. the *.png `hqrs eval dataset` writes)"
    suffix = path.suffix.lower()
    if suffix == ".svg":
        head = path.read_bytes()[:4096].lstrip().lower()
        if b"<svg" not in head or not (head.startswith((b"<?xml", b"<svg", b"<!--", b"<!doctype svg"))):
            raise ValueError(f"plot {str(path)!r} is named .svg but is not an SVG image; give {expected}")
        return "SVG"
    try:
        with Image.open(path) as image:
            fmt = image.format or "?"
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"plot {str(path)!r} is not an image ({type(exc).__name__}: {exc}); give {expected}"
        ) from None
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"plot {str(path)!r} is a {fmt} image, which a card does not show; give {expected}")
    if suffix not in PLOT_FORMATS[fmt]:
        raise ValueError(
            f"plot {str(path)!r} is a {fmt} image named {suffix or 'without a suffix'}; rename it to "
            f"{path.stem}{PLOT_FORMATS[fmt][0]}"
        )
    return fmt


_ABS_PATH = re.compile(r"(?<![\w./])/(?:[^/\s\"'?&=]+/)*[^/\s\"'?&=]+")


def _without_local_paths(value, root: Path):
    """The build report as published: local absolute paths become paths relative to the build folder,
    or ``<local>/NAME`` for files outside it (the report keeps file names and reasons, not the machine's layout)."""
    if isinstance(value, dict):
        return {k: _without_local_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(v, root) for v in value]
    if not isinstance(value, str):
        return value
    root = root.resolve()

    def relative(match: re.Match) -> str:
        path = Path(match.group(0))
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            return f"<local>/{path.name}"

    return _ABS_PATH.sub(relative, value)


def _package_source(name: str) -> bytes:
    return resources.files("hqrs.modeling").joinpath(name).read_bytes()


def _private_strings() -> list[str]:
    """Strings that must not appear in anything we upload: home folder, user name, working folder."""
    found = {str(Path.home()), os.getcwd(), tempfile.gettempdir()}
    user = getpass.getuser()
    if user and user not in {"root"}:
        found.add(f"/{user}/")
    return sorted(s for s in found if s and s != "/")


def secret_values(extra_names: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """``{variable name: value}`` of the secrets set in this process: :data:`SECRET_ENV`, every variable
    named like a token, key, secret or password, the names in ``extra_names`` (a recipe's
    ``api_key_env`` targets), and the token ``hf auth login`` stored. Values shorter than 8 characters
    are left out."""
    names = {*SECRET_ENV, *extra_names, *(k for k in os.environ if _SECRET_NAME.search(k.upper()))}
    found = {n: os.environ[n] for n in sorted(names) if len(os.environ.get(n, "")) >= _MIN_SECRET}
    try:
        from huggingface_hub import get_token

        stored = get_token()
    except Exception:  # no token file, unreadable HF_HOME: nothing stored to look for
        stored = None
    if stored and len(stored) >= _MIN_SECRET and stored not in found.values():
        found["the stored Hugging Face token (hf auth login)"] = stored
    return found


def recipe_secret_names(run_dir: str | Path | None) -> list[str]:
    """The ``api_key_env`` names of the backends of the recipe an MpGI run recorded (``recipe.json``)."""
    if run_dir is None or not (Path(run_dir) / "recipe.json").is_file():
        return []
    try:
        recipe = json.loads((Path(run_dir) / "recipe.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    backends = recipe.get("backends") if isinstance(recipe, dict) else None
    names = []
    for backend in (backends or {}).values() if isinstance(backends, dict) else []:
        name = backend.get("api_key_env") if isinstance(backend, dict) else None
        if isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            names.append(name)
    return names


def _find_secrets(data: bytes, secrets: dict[str, bytes]) -> list[str]:
    """What ``data`` holds: ``"the value of $NAME"`` per secret found, and ``"a Hugging Face token"`` for
    any token format. Never the secret itself."""
    found = [
        f"the value of ${name}" if not name.startswith("the ") else name
        for name, v in secrets.items()
        if v in data
    ]
    if TOKEN_RE.search(data):
        found.append("a Hugging Face token (hf_… / api_org_… format)")
    return found


def _string_buffers(array):
    """The UTF-8 data buffers of every string array inside ``array`` (lists and structs unpacked)."""
    import pyarrow as pa

    t = array.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        buffers = array.buffers()
        if len(buffers) > 2 and buffers[2] is not None:
            yield buffers[2].to_pybytes()
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        yield from _string_buffers(array.flatten())
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from _string_buffers(array.field(i))
    elif pa.types.is_dictionary(t):
        yield from _string_buffers(array.dictionary)


def _has_text(t) -> bool:
    import pyarrow as pa

    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_text(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_text(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_dictionary(t):
        return _has_text(t.value_type)
    return False


def _scan_parquet(path: Path, secrets: dict[str, bytes]) -> list[str]:
    """Secrets in a parquet file: its key-value metadata and every text column (nested ones included),
    decompressed one row group at a time; each hit names the column and the first row holding it."""
    import pyarrow.parquet as pq

    problems = []
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # ArrowInvalid: not parquet at all
        return [f"cannot be read as parquet ({type(exc).__name__}), so it cannot be checked for secrets"]
    meta = pf.schema_arrow.metadata or {}
    for what in _find_secrets(b"\n".join(k + b"=" + v for k, v in meta.items()), secrets):
        problems.append(f"file metadata contains {what}")
    columns = [f.name for f in pf.schema_arrow if _has_text(f.type)]
    row0 = 0
    for rg in range(pf.num_row_groups):
        table = pf.read_row_group(rg, columns=columns)
        for name in columns:
            for chunk in table.column(name).chunks:
                hits = [w for buf in _string_buffers(chunk) for w in _find_secrets(buf, secrets)]
                if not hits:
                    continue
                rows = chunk.to_pylist()
                first = next(
                    (i for i, v in enumerate(rows) if _find_secrets(json.dumps(v).encode(), secrets)), 0
                )
                for what in dict.fromkeys(hits):
                    problems.append(f"column {name!r} (row {row0 + first}) contains {what}")
        row0 += table.num_rows
    return list(dict.fromkeys(problems))


def _scan_bytes(path: Path, secrets: dict[str, bytes]) -> list[str]:
    """Secrets in any other file, read in overlapping chunks (a ``.safetensors`` file: its JSON header,
    where metadata strings live; the tensors are numbers)."""
    overlap = max([64, *(len(v) for v in secrets.values())])
    found: list[str] = []
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            return _find_secrets(f.read(min(size, 100 << 20)), secrets)
        tail = b""
        while chunk := f.read(_CHUNK):
            found += _find_secrets(tail + chunk, secrets)
            tail = chunk[-overlap:]
    return list(dict.fromkeys(found))


def check_folder(folder: str | Path, repo_type: str, secret_names: list[str] | tuple[str, ...] = ()) -> None:
    """Refuse to upload a folder that leaks secrets or is not what the Hub expects.

    Checks: the card's metadata parses into huggingface_hub's card-data type; no file holds a secret
    (:func:`secret_values`: the values of the token variables set here and of ``secret_names``, and
    every Hugging Face token format), whatever its kind: text files whole, parquet files through
    their decompressed text columns and metadata, other binary files byte by byte (safetensors: the
    header); no absolute local path or user name in any text file; no pickled weights; remote-code
    files equal this package's ``hqrs.modeling`` sources. Messages name the file, column, row and
    variable, never the secret.
    """
    from huggingface_hub import DatasetCard, ModelCard

    folder = Path(folder)
    problems: list[str] = []
    card_path = folder / CARD  # a model folder's card has the same name as a build folder's
    if not card_path.is_file():
        problems.append("README.md (the card) is missing")
    else:
        card_cls = ModelCard if repo_type == "model" else DatasetCard
        try:
            card_cls.load(card_path, ignore_metadata_errors=False)
        except Exception as exc:  # ValueError / yaml errors: report, never upload a broken card
            problems.append(f"README.md metadata does not parse as {card_cls.__name__}: {_redact(exc)}")
    private = _private_strings()
    secrets = {name: value.encode() for name, value in secret_values(tuple(secret_names)).items()}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix in PICKLE_SUFFIXES:
            problems.append(f"{rel}: pickled file; only safetensors are uploaded")
        if path.suffix == ".parquet":
            problems += [f"{rel}: {what}" for what in _scan_parquet(path, secrets)]
            continue
        if path.suffix not in TEXT_SUFFIXES:
            problems += [f"{rel}: contains {what}" for what in _scan_bytes(path, secrets)]
            continue
        data = path.read_bytes()
        problems += [f"{rel}: contains {what}" for what in _find_secrets(data, secrets)]
        text = data.decode("utf-8", errors="replace")
        for s in private:
            if s in text:
                problems.append(f"{rel}: contains the local path or user name {s!r}")
    if repo_type == "model":
        kind = model_kind(folder)
        for name in kind.remote_files:
            staged = folder / name
            if not staged.is_file() or staged.read_bytes() != _package_source(name):
                problems.append(f"{name}: remote code differs from hqrs.modeling/{name}")
    if problems:
        message = f"refusing to upload {str(folder)!r}:\n  - " + "\n  - ".join(problems)
        raise ValueError(_redact(message, secrets))


def _redact(text, secrets: dict[str, bytes] | None = None) -> str:
    """``text`` with every secret value and token-shaped string replaced by ``<redacted>``."""
    text = str(text)
    for value in (secrets or {}).values():
        text = text.replace(value.decode(errors="replace"), "<redacted>")
    return TOKEN_RE.sub(b"<redacted>", text.encode()).decode()


def push(
    plan: PushPlan,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
):
    """Create the repo (if needed) and upload the staged folder in one commit.

    The token comes from the standard discovery (``HF_TOKEN``, then ``hf auth login``'s file) unless
    given. Errors name what to do: log in, ask for write access, or check the network.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = token or get_token()
    if not token:
        raise PermissionError(
            "no Hugging Face token found: run `hf auth login` or set HF_TOKEN (use --dry-run to stage only)"
        )
    api = HfApi(token=token)
    message = commit_message or f"Upload {plan.repo_type} with hqrs"
    try:
        api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=private, exist_ok=True)
        if revision:
            api.create_branch(plan.repo_id, repo_type=plan.repo_type, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=plan.folder,
            repo_type=plan.repo_type,
            revision=revision,
            commit_message=message,
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"the Hub refused {plan.repo_type} repo {plan.repo_id!r} (HTTP {status}): the token has no write "
                "access to that namespace; use a write token or a repo id under your own name"
            ) from None
        raise OSError(f"the Hub answered HTTP {status} for {plan.repo_id!r}: {exc}") from None
    except Exception as exc:
        if not _is_transport_error(exc):
            raise
        raise ConnectionError(
            f"could not reach the Hub at {api.endpoint} ({type(exc).__name__}: {exc}); check the network or HF_ENDPOINT"
        ) from None


def _is_transport_error(exc: BaseException) -> bool:
    """A connection-level failure of the Hub client's HTTP library (httpx or httpx2, by version) or the OS."""
    if isinstance(exc, OSError):
        return True
    return any(
        cls.__name__ == "TransportError" and cls.__module__.startswith("httpx") for cls in type(exc).__mro__
    )


__all__ = ["MODEL_KINDS", "PushPlan", "check_folder", "check_plot", "push", "stage_dataset", "stage_model"]
