"""Suite-wide test settings: no network, no CUDA assumptions, hypothesis tuned for a shared 2-core machine."""

from __future__ import annotations

import importlib
import importlib.metadata
import ipaddress
import os
import socket
import warnings
from pathlib import Path

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


def pytest_addoption(parser):
    parser.addoption(
        "--check-pins",
        metavar="REQUIREMENTS",
        help="stop before the tests unless every name==version of this requirements file is the version "
        "installed and imported (CI's second environment: requirements-forge-ui.txt)",
    )


def pin_mismatches(requirements: Path) -> list[str]:
    """Each ``name==version`` of ``requirements`` that is not what this interpreter finds first."""
    problems = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if not version:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name}=={version}: not installed")
            continue
        if installed != version:
            problems.append(f"{name}=={version}: {installed} is installed")
            continue
        try:  # the module imported must be that distribution's, not one further down sys.path
            with warnings.catch_warnings():  # pytest's filters are not set yet: no import noise
                warnings.simplefilter("ignore")
                module = importlib.import_module(name.replace("-", "_"))
        except ImportError:  # distribution and module names differ (e.g. markdown-it-py): metadata only
            continue
        imported = getattr(module, "__version__", version)
        if imported != version:
            problems.append(f"{name}=={version}: {imported} is imported (from {module.__file__})")
    return problems


def pytest_configure(config):
    requirements = config.getoption("--check-pins")
    if requirements:
        problems = pin_mismatches(Path(requirements))
        if problems:
            listed = "\n  ".join(problems)
            raise pytest.UsageError(f"this environment does not match {requirements}:\n  {listed}")
