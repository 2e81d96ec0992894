"""Shared set-up of the MpGI tests: tiny image records, a recipe against a loopback server, the
``hqrs mpgi run`` command line, and a real ``transformers serve`` process on a free loopback port.

The pytest-socket rule these tests need (loopback hosts plus unix sockets) is the
``loopback_and_unix_sockets`` fixture in ``tests/conftest.py``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from hqrs.dataset_builder.mpgi.loopback import prompt_text
from hqrs.dataset_builder.mpgi.prompts import image_data_url
from hqrs.dataset_builder.records import ImageRecord, ObjectAnnotation


def make_records(folder: Path, n: int) -> list[ImageRecord]:
    """``n`` records of distinct 32x24 PNG images in ``folder``, labelled ``site<i>``, with 1-3 ships each."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (32, 24), (37 * i % 256, 90, 160)).save(path)
        objects = [ObjectAnnotation("ship", bbox=(1 + j, 1, 6 + j, 5)) for j in range(1 + i % 3)]
        out.append(
            ImageRecord(
                image_id=f"{i:016x}",
                image=str(path),
                source="test",
                width=32,
                height=24,
                gsd=0.5,
                labels=[f"site{i}"],
                objects=objects,
                exhaustive_classes=["ship", "plane"],
            )
        )
    return out


def loop_recipe(url: str, **backend) -> dict:
    """A recipe dict whose one endpoint backend ``m`` (``backend`` overrides its settings) serves a relay and
    a scene generator and the integrator; fast timeouts and retries for a loopback server."""
    return {
        "name": "loop",
        "backends": {
            "m": {
                "server": "endpoint",
                "endpoint_url": url,
                "model": "loopback",
                "request_timeout": 1.0,
                "retries": 2,
                "retry_backoff": 0.01,
                "server_ready_attempts": 5,
                "server_ready_delay": 0.2,
                **backend,
            }
        },
        "generators": [
            {"name": "relay", "backend": "m", "perspective": "relay", "relay_rules": True},
            {"name": "scene", "backend": "m", "perspective": "scene", "n": 2},
        ],
        "integrator": {"backend": "m", "max_repairs": 1, "fact_filter": "regenerate", "max_regenerations": 1},
    }


def site_of(payload: dict) -> int | None:
    """Which record a request is about: the relay and integration prompts name 'site<i>'; the scene
    prompt only carries the image, so those map through the image data URL."""
    m = re.search(r"The scene is site(\d+)\.", prompt_text(payload))
    if m:
        return int(m.group(1))
    for message in payload["messages"]:
        if isinstance(message["content"], list):
            url = message["content"][0]["image_url"]["url"]
            return IMAGE_URLS.get(url)
    return None


IMAGE_URLS: dict[str, int] = {}


def index_images(records):
    IMAGE_URLS.clear()
    for i, r in enumerate(records):
        IMAGE_URLS[image_data_url(r.image)] = i


def mpgi_run_argv(recipe: str | Path, source: str | Path, out: str | Path, *extra: str) -> list[str]:
    """``mpgi run --recipe RECIPE --source SOURCE --out OUT [extra...]`` for the ``hqrs`` CLI."""
    return ["mpgi", "run", "--recipe", str(recipe), "--source", str(source), "--out", str(out), *extra]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def transformers_serve(
    log_path: Path, launcher: Sequence[str], env: Mapping[str, str], *extra_args: str
) -> Iterator[tuple[str, Callable[[float], None]]]:
    """Start ``transformers serve`` (``launcher``: the command before ``serve``) on a free loopback port,
    on CPU, logging to ``log_path``; yield ``(url, wait_ready)`` and stop the server on exit.

    ``wait_ready(seconds)`` polls ``/v1/models`` until it answers 200, and fails the test (with the end of
    the log) if the server exits or is not ready in time; call it after any set-up that can overlap the
    server's start.
    """
    port = free_port()
    command = [*launcher, "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args, "--device", "cpu"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(env))
    url = f"http://127.0.0.1:{port}"

    def wait_ready(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"transformers serve not ready after {seconds:g} s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.5)

    try:
        yield url, wait_ready
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
