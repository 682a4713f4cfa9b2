"""install.py with a fake ``launch`` module: what gets installed in each situation, and failures survive."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

INSTALL_PY = Path(__file__).resolve().parents[1] / "install.py"


def load_install_module():
    spec = importlib.util.spec_from_file_location("magicnaming_install_under_test", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeLaunch(types.SimpleNamespace):
    """launch.is_installed / launch.run_pip as modules/launch_utils.py defines them (v1.10.1)."""

    def __init__(self, installed=(), fail=()):
        super().__init__(installed=set(installed), fail=set(fail), pip_calls=[], constraints=[])

    def is_installed(self, package: str) -> bool:
        return package in self.installed

    def run_pip(self, command: str, desc: str | None = None, live: bool = False):
        self.pip_calls.append(command)
        constraints_file = command.split(" -c ")[1].strip('"')
        self.constraints.append(Path(constraints_file).read_text().split())
        if any(name in command for name in self.fail):
            raise RuntimeError(f"Couldn't install {desc}.\nCommand: pip {command}\nError code: 1")


def installed_packages(launch: FakeLaunch) -> list[str]:
    return [call.split('"')[1] for call in launch.pip_calls]


@pytest.mark.parametrize(
    ("installed", "cuda", "expected"),
    [
        ((), False, ["open-clip-torch>=2.20.0", "insightface==0.7.3", "onnxruntime"]),
        (("open_clip_torch",), False, ["insightface==0.7.3", "onnxruntime"]),
        (("open_clip_torch",), True, ["insightface==0.7.3", "onnxruntime-gpu"]),
        (("open_clip_torch", "onnxruntime"), True, ["insightface==0.7.3"]),
        (("open_clip_torch", "onnxruntime-gpu"), False, ["insightface==0.7.3"]),
        (("open_clip_torch", "insightface", "onnxruntime"), True, []),
    ],
)
def test_installs_only_what_is_missing(installed, cuda, expected):
    module = load_install_module()
    launch = FakeLaunch(installed)
    assert module.main(launch, cuda=cuda) == []
    assert installed_packages(launch) == expected


def test_pip_may_not_change_an_installed_package(tmp_path):
    """Each pip call is constrained to the installed versions (insightface's deps would pull numpy 2 and
    pydantic 2 into the WebUI otherwise), and the constraints file is gone afterwards."""
    import importlib.metadata

    module = load_install_module()
    launch = FakeLaunch(("open_clip_torch",))
    module.main(launch, cuda=False)
    numpy_pin = f"numpy=={importlib.metadata.version('numpy')}"
    pydantic_pin = f"pydantic=={importlib.metadata.version('pydantic')}"
    assert len(launch.constraints) == 2
    assert all(numpy_pin in pins and pydantic_pin in pins for pins in launch.constraints)
    assert not Path(launch.pip_calls[0].split(" -c ")[1].strip('"')).exists()


def test_installed_pins_skip_unusable_metadata():
    module = load_install_module()

    class Dist:
        def __init__(self, name, version):
            self.metadata, self.version = {"Name": name}, version

    dists = [Dist("NumPy", "1.26.2"), Dist("torch", "2.1.2+cu121"), Dist(None, "1.0"), Dist("bad name", "1"),
             Dist("weird", "not a version;rm")]
    assert module.installed_pins(dists) == ["NumPy==1.26.2", "torch==2.1.2+cu121"]


def test_never_both_onnxruntime_builds():
    module = load_install_module()
    for cuda in (False, True):
        plan = module.plan_installs(lambda _package: False, cuda)
        assert ("onnxruntime" in plan) != ("onnxruntime-gpu" in plan)


def test_failed_pip_is_reported_and_the_rest_still_installs(capsys):
    module = load_install_module()
    launch = FakeLaunch(("open_clip_torch",), fail=("insightface",))
    assert module.main(launch, cuda=False) == ["insightface"]
    assert installed_packages(launch) == ["insightface==0.7.3", "onnxruntime"]
    err = capsys.readouterr().err
    assert "could not install insightface" in err and "WebUI starts anyway" in err


def test_broken_launch_module_does_not_raise(capsys):
    module = load_install_module()

    class Broken:
        def is_installed(self, package):
            raise OSError("metadata unreadable")

    assert module.main(Broken(), cuda=False) == []
    assert "install step skipped: metadata unreadable" in capsys.readouterr().err


def test_main_uses_the_launch_module_when_run_by_the_webui(monkeypatch):
    launch = FakeLaunch(("open_clip_torch", "insightface", "onnxruntime"))
    monkeypatch.setitem(sys.modules, "launch", launch)
    module = load_install_module()
    assert module.main() == []
    assert launch.pip_calls == []


def test_torch_that_fails_to_import_means_no_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" raise ImportError
    assert load_install_module().torch_sees_cuda() is False
