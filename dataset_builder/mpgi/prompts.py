"""Jinja prompt templates of MpGI and the chat payloads built from them.

A template is named either by a file shipped in ``hqrs.dataset_builder.recipes`` (``perspective.jinja``,
``integrate.jinja``, ``repair.jinja``) or by a path (relative paths resolve against the recipe file's
folder and must stay inside it). Templates render in jinja2's ``ImmutableSandboxedEnvironment`` with
``StrictUndefined``: a misspelt variable is an error, not an empty string, and a template cannot reach
Python internals (recipes are shared files, i.e. untrusted data).
"""

from __future__ import annotations

import base64
import hashlib
import io
import mimetypes
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from PIL import Image

from ..sources.images import pixel_limit

if TYPE_CHECKING:
    from .recipe import Recipe


SHIPPED_PACKAGE = "hqrs.dataset_builder.recipes"


def _shipped_names() -> list[str]:
    return sorted(p.name for p in resources.files(SHIPPED_PACKAGE).iterdir() if p.name.endswith(".jinja"))


def _resolve(name: str, recipe_path: str | None) -> Path | None:
    """The file of template ``name``: inside the recipe file's folder (after following links), or
    ``None`` for a template shipped in the package. Anything else (an absolute path elsewhere, ``..``
    out of the folder, a link pointing out of it) is a ``ValueError``: a recipe is data and may only
    read its own templates."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"prompt template {name!r}: expected a template file name")
    path = Path(name)
    if recipe_path and Path(recipe_path).is_file():
        folder = Path(recipe_path).resolve().parent
        candidate = (folder / path).resolve()  # an absolute `path` replaces `folder` here
        if candidate.is_relative_to(folder):
            if candidate.is_file():
                return candidate
        else:
            raise ValueError(
                f"prompt template {name!r} resolves to {str(candidate)!r}, outside the recipe's folder "
                f"{str(folder)!r}: templates are read only from the recipe's own folder or the shipped "
                f"templates ({', '.join(_shipped_names())}); copy the template next to the recipe"
            )
    if path.is_absolute() or len(path.parts) != 1 or name in (".", ".."):
        raise ValueError(
            f"prompt template {name!r} is not in the recipe's folder and is not a shipped template "
            f"({', '.join(_shipped_names())}): templates are read only from the recipe's own folder "
            "or the package's recipes"
        )
    return None


@lru_cache(maxsize=64)
def _read_template(name: str, recipe_path: str | None) -> str:
    path = _resolve(name, recipe_path)
    if path is not None:
        return path.read_text(encoding="utf-8")
    shipped = resources.files(SHIPPED_PACKAGE).joinpath(name)
    if not shipped.is_file():
        where = f"next to the recipe {recipe_path!r} " if recipe_path else ""
        raise ValueError(
            f"prompt template {name!r} is neither a file {where}nor a shipped template "
            f"({', '.join(_shipped_names())})"
        )
    return shipped.read_text(encoding="utf-8")


def template_source(name: str, recipe: Recipe | None = None) -> str:
    return _read_template(name, recipe.source_path if recipe is not None else None)


# Recipes are shared files: their templates render in jinja2's immutable sandbox (no attribute walk to
# Python internals such as ``cycler.__init__.__globals__``, no mutation of the variables passed in).
class _RecipeSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, plus bounds on ``*`` and ``**`` (``{{ 'a' * 10**10 }}`` would take
    all memory; the sandbox already bounds ``range``)."""

    intercepted_binops = frozenset({"*", "**"})
    max_size = 1_000_000

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError(f"exponent {right!r} is too large in a template")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > self.max_size
                ):
                    raise SecurityError(
                        f"a repeated sequence of more than {self.max_size} items in a template"
                    )
        return super().call_binop(context, operator, left, right)


_ENV = _RecipeSandbox(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False, trim_blocks=False
)


@lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def prompt_id(name: str, recipe: Recipe | None = None) -> str:
    """Provenance id of a template: ``name@<first 10 hex of sha256(template text)>``."""
    digest = hashlib.sha256(template_source(name, recipe).encode()).hexdigest()[:10]
    return f"{Path(name).name}@{digest}"


def render(name: str, recipe: Recipe | None = None, **variables: Any) -> str:
    """Render template ``name`` with ``variables``; errors name the template and the missing variable."""
    try:
        return _compile(template_source(name, recipe)).render(**variables).strip()
    except jinja2.UndefinedError as e:
        raise ValueError(
            f"prompt template {name!r}: {e.message}; available variables: {sorted(variables)}"
        ) from e
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"prompt template {name!r} line {e.lineno}: {e.message}") from e
    except (TypeError, OverflowError) as e:  # {% include %} without a loader, a too large range()
        raise ValueError(
            f"prompt template {name!r}: {e} (recipe templates cannot include, import or extend other files)"
        ) from None
    except SecurityError as e:
        raise ValueError(
            f"prompt template {name!r} tried an operation the template sandbox forbids ({e}); recipe "
            "templates may only format the variables they are given"
        ) from None


# --------------------------------------------------------------------------- #
# Images as data URLs
# --------------------------------------------------------------------------- #


def image_data_url(path: str | Path, max_side: int = 1024) -> str:
    """The image at ``path`` as a ``data:`` URL, downscaled so that its longer side is <= ``max_side``.

    PNG and JPEG files that are small enough are sent byte for byte; everything else (TIFF, large
    images) is re-encoded as PNG (lossless).
    """
    path = Path(path)
    data = path.read_bytes()
    mime = mimetypes.guess_type(path.name)[0] or ""
    # no Pillow size limit: the source that made the record checked the image against its max_pixels
    with pixel_limit(None), Image.open(io.BytesIO(data)) as im:
        if mime in ("image/png", "image/jpeg") and max(im.size) <= max_side:
            return f"data:{mime};base64,{base64.b64encode(data).decode()}"
        im = im.convert("RGB") if im.mode not in ("RGB", "L") else im
        if max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def chat_payload(text: str, image_url: str | None, sampling: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completions payload: one user message with the image (if any) and the text."""
    if image_url is None:
        content: Any = text
    else:
        content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}]
    payload = {"messages": [{"role": "user", "content": content}]}
    payload.update(sampling)
    return payload
