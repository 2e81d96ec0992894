"""Core file helpers shared by every layer (no hqrs imports): reading untrusted JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_json_utf8(path: str | Path, what: str) -> Any:
    """Read a JSON file that must be UTF-8; errors name the file and the byte offset.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the bytes are not UTF-8, or the text is not JSON (the message quotes the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{what} file {str(path)!r} is not UTF-8 (byte {data[exc.start : exc.start + 1]!r} at offset "
            f"{exc.start}); re-save it as UTF-8"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} file {str(path)!r} is not valid JSON: {exc}") from None
