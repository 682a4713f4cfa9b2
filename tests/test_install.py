"""install.py with a fake ``launch`` module (as modules/launch_utils.py v1.10.1 defines ``is_installed``,
``run_pip`` and ``args``): nothing for face detection by default, insightface only when chosen, never both
onnxruntime builds, never a source build, and every outcome on stdout (the WebUI shows only that)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

INSTALL_PY = Path(__file__).resolve().parents[1] / "install.py"
A1111_PACKAGES = ("open_clip_torch", "numpy", "opencv-python", "scikit-image", "scipy", "tqdm", "requests")
"""What a fresh A1111 v1.10.1 has of what install.py looks for (no onnx, onnxruntime, insightface)."""
PIP_REFUSAL = (
    "Couldn't install onnx for MagicNaming.\nCommand: \"python\" -m pip install \"onnx\" --only-binary :all: "
    "--prefer-binary\nError code: 1\nstdout: Looking in indexes: https://pypi.org/simple\n"
    "stderr: ERROR: Could not find a version that satisfies the requirement onnx (from versions: none)\n"
    "ERROR: No matching distribution found for onnx\n"
)


def load_install_module():
    spec = importlib.util.spec_from_file_location("magicnaming_install_under_test", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeLaunch(types.SimpleNamespace):
    """launch.is_installed / run_pip / args as modules/launch_utils.py defines them (v1.10.1)."""

    def __init__(self, installed=(), fail=(), settings_file=None):
        super().__init__(installed=set(installed), fail=set(fail), pip_calls=[], constraints=[],
                         args=types.SimpleNamespace(ui_settings_file=settings_file))

    def is_installed(self, package: str) -> bool:
        return package in self.installed

    def run_pip(self, command: str, desc: str | None = None, live: bool = False):
        self.pip_calls.append(command)
        constraints_file = command.split(" -c ")[1].strip('"')
        self.constraints.append(Path(constraints_file).read_text().split())
        if any(f'"{name}"' in command for name in self.fail):
            raise RuntimeError(PIP_REFUSAL)


def installed_packages(launch: FakeLaunch) -> list[str]:
    return [call.split('"')[1] for call in launch.pip_calls]


def settings(tmp_path, detector: str) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"magicnaming_face_detector": detector, "sd_model_checkpoint": "x"}))
    return str(path)


@pytest.mark.parametrize(
    ("installed", "expected"),
    [((), ["open-clip-torch>=2.20.0"]), (("open_clip_torch",), []), (A1111_PACKAGES, [])],
)
def test_by_default_nothing_is_installed_for_face_detection(tmp_path, capsys, installed, expected):
    module = load_install_module()
    for detector in ("auto", "yunet"):
        launch = FakeLaunch(installed, settings_file=settings(tmp_path, detector))
        assert module.main(launch, cuda=True, environ={}) == []
        assert installed_packages(launch) == expected
    assert "insightface" not in capsys.readouterr().out


def test_choosing_insightface_installs_it_without_its_dependencies_after_what_it_needs(tmp_path, capsys):
    module = load_install_module()
    launch = FakeLaunch(A1111_PACKAGES, settings_file=settings(tmp_path, "insightface"))
    assert module.main(launch, cuda=False, environ={}) == []
    assert installed_packages(launch) == ["onnxruntime", "onnx", "insightface==2.1"]
    assert all("--only-binary :all:" in call for call in launch.pip_calls)  # never a source build
    assert "--no-deps" in launch.pip_calls[-1] and "--no-deps" not in launch.pip_calls[0]
    out = capsys.readouterr().out
    assert "installing insightface for the insightface face detector (the face detector setting is " \
           "'insightface' in config.json)" in out
    assert "[MagicNaming] installed insightface==2.1 for the insightface face detector" in out


@pytest.mark.parametrize("present", ["onnxruntime-gpu", "onnxruntime"])
def test_an_installed_onnxruntime_build_gets_no_other_one(tmp_path, present):
    module = load_install_module()
    launch = FakeLaunch((*A1111_PACKAGES, present), settings_file=settings(tmp_path, "insightface"))
    module.main(launch, cuda=True, environ={})
    assert installed_packages(launch) == ["onnx", "insightface==2.1"]
    assert not any("onnxruntime" in call for call in launch.pip_calls)  # insightface goes in with --no-deps


def test_cuda_picks_the_gpu_build_and_never_both():
    module = load_install_module()
    for cuda in (False, True):
        plan = [step.package for step in module.plan_installs(lambda _package: False, cuda, True)]
        assert ("onnxruntime" in plan) != ("onnxruntime-gpu" in plan)
        assert ("onnxruntime-gpu" in plan) == cuda
        assert plan[-1] == "insightface" and "opencv-python-headless" in plan  # no OpenCV at all: headless


def test_the_environment_variable_chooses_and_can_forbid(tmp_path):
    module = load_install_module()
    launch = FakeLaunch(A1111_PACKAGES, settings_file=str(tmp_path / "absent.json"))
    module.main(launch, cuda=False, environ={"MAGICNAMING_INSTALL_INSIGHTFACE": "1"})
    assert installed_packages(launch)[-1] == "insightface==2.1"
    launch = FakeLaunch(A1111_PACKAGES, settings_file=settings(tmp_path, "insightface"))
    module.main(launch, cuda=False, environ={"MAGICNAMING_INSTALL_INSIGHTFACE": "0"})
    assert launch.pip_calls == []


def test_a_failing_pip_prints_its_reason_on_stdout_and_insightface_is_not_installed(tmp_path, capsys):
    module = load_install_module()
    launch = FakeLaunch(A1111_PACKAGES, fail=("onnx",), settings_file=settings(tmp_path, "insightface"))
    assert module.main(launch, cuda=False, environ={}) == ["onnx", "insightface"]
    assert installed_packages(launch) == ["onnxruntime", "onnx"]
    captured = capsys.readouterr()
    assert captured.err == ""
    assert ("[MagicNaming] could not install onnx for the insightface face detector: ERROR: Could not find "
            "a version that satisfies the requirement onnx (from versions: none) ERROR: No matching "
            "distribution found for onnx.") in captured.out
    assert "not installing insightface==2.1: onnx could not be installed" in captured.out
    assert "WebUI starts anyway; choose the 'auto' or 'yunet' face detector" in captured.out


def test_pip_may_not_change_an_installed_package(tmp_path):
    """Each pip call is constrained to the installed versions (insightface's deps would pull numpy 2 and
    pydantic 2 into the WebUI otherwise), and the constraints file is gone afterwards."""
    import importlib.metadata

    module = load_install_module()
    launch = FakeLaunch(A1111_PACKAGES, settings_file=settings(tmp_path, "insightface"))
    module.main(launch, cuda=False, environ={})
    numpy_pin = f"numpy=={importlib.metadata.version('numpy')}"
    pydantic_pin = f"pydantic=={importlib.metadata.version('pydantic')}"
    assert len(launch.constraints) == 3
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


def test_an_unreadable_settings_file_is_said_and_installs_nothing(tmp_path, capsys):
    module = load_install_module()
    bad = tmp_path / "config.json"
    bad.write_text("{broken")
    launch = FakeLaunch(A1111_PACKAGES, settings_file=str(bad))
    assert module.main(launch, cuda=False, environ={}) == [] and launch.pip_calls == []
    assert "could not read the WebUI settings" in capsys.readouterr().out


def test_broken_launch_module_does_not_raise(capsys):
    module = load_install_module()

    class Broken:
        def is_installed(self, package):
            raise OSError("metadata unreadable")

    assert module.main(Broken(), cuda=False, environ={}) == []
    assert "install step skipped: metadata unreadable" in capsys.readouterr().out


def test_main_uses_the_launch_module_when_run_by_the_webui(monkeypatch, tmp_path):
    launch = FakeLaunch(("open_clip_torch", "insightface", "onnxruntime"),
                        settings_file=settings(tmp_path, "auto"))
    monkeypatch.setitem(sys.modules, "launch", launch)
    module = load_install_module()
    assert module.main(environ={}) == []
    assert launch.pip_calls == []


def test_torch_that_fails_to_import_means_no_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" raise ImportError
    assert load_install_module().torch_sees_cuda() is False


FAKE_LAUNCH_MODULE = '''
"""launch.py as the WebUI's installer subprocess imports it (PYTHONPATH holds the WebUI folder)."""
import json, os, types
args = types.SimpleNamespace(ui_settings_file=os.environ["FAKE_SETTINGS"])
installed = set(json.loads(os.environ["FAKE_INSTALLED"]))
def is_installed(package):
    return package in installed
def run_pip(command, desc=None, live=False):
    print(f"Installing {desc}")  # launch_utils.run prints the description on stdout
    if "onnx\\"" in command:
        raise RuntimeError(os.environ["FAKE_REFUSAL"])
'''


def test_run_as_the_webui_runs_it_everything_is_on_stdout_and_it_exits_0(tmp_path):
    """modules/launch_utils.py v1.10.1 ``run_extension_installer``: ``python install.py`` with PYTHONPATH set
    to the WebUI folder; it prints the installer's stdout, and stderr only when the exit code is not 0."""
    (tmp_path / "launch.py").write_text(textwrap.dedent(FAKE_LAUNCH_MODULE))
    env = {"PYTHONPATH": str(tmp_path), "FAKE_SETTINGS": settings(tmp_path, "insightface"),
           "FAKE_INSTALLED": json.dumps(A1111_PACKAGES), "FAKE_REFUSAL": PIP_REFUSAL, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(INSTALL_PY)], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Installing onnxruntime for MagicNaming" in result.stdout
    assert "could not install onnx for the insightface face detector: ERROR: Could not find a version" \
           in result.stdout
    assert "not installing insightface==2.1" in result.stdout
