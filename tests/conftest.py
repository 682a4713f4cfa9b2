"""Suite-wide test settings: no network, no CUDA assumptions, hypothesis tuned for a shared 2-core machine."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    from hypothesis import settings

    settings.register_profile("magicnaming", deadline=None, max_examples=150)
    settings.load_profile("magicnaming")
except ImportError:  # hypothesis is in requirements-dev.txt; only property tests need it
    pass


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests may talk to loopback (TestClient, torchrun rendezvous) and nothing else: no download can hide."""
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        if not _is_local(address):
            raise OSError(f"network access attempted in a test: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
