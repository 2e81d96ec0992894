"""Shared test set-up: offline Hub, markers and the real-data fixture.

The network guard is pytest-socket (``--allow-hosts=127.0.0.1,::1`` in pyproject's addopts): a
test that connects anywhere but this machine fails with ``SocketConnectBlockedError``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports huggingface_hub: nothing in the suite may reach the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
RS_REAL = Path(os.environ.get("HQRS_RS_REAL", REPO_ROOT.parent / "shared" / "data" / "rs_real"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("HQRS_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow test: opt in with --run-slow or HQRS_RUN_SLOW=1")
    cuda = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def rs_real() -> Path:
    """``../shared/data/rs_real``: real public RS images, captions and boxes (see its SOURCES.md).

    Skips cleanly where the folder is absent. Never copy these files into the repository.
    """
    if not (RS_REAL / "SOURCES.md").is_file():
        pytest.skip(f"real RS samples not found at {RS_REAL} (set HQRS_RS_REAL to their folder)")
    return RS_REAL


@pytest.fixture
def loopback_and_unix_sockets():
    """pytest-socket's loopback-only rule widened to every loopback host the MpGI tests serve on
    (``127.0.0.2`` is the "remote" host that takes the OpenAI-client path) plus unix sockets: datatrove's
    ``LocalPipelineExecutor`` always starts a ``multiprocess.Manager`` (an AF_UNIX socket, local by nature).

    Use it with ``pytestmark = pytest.mark.usefixtures("loopback_and_unix_sockets")``.
    """
    from pytest_socket import socket_allow_hosts

    socket_allow_hosts(["127.0.0.1", "127.0.0.2", "::1"], allow_unix_socket=True)
    yield
