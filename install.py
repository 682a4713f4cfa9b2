"""MagicNaming's install step: the WebUI runs this file at every start (not under --skip-install).

It installs, with the WebUI's own pip (``launch.run_pip``), only what is missing:

- always: open_clip_torch, unless it is present (the WebUI ships it). Nothing for face detection: the
  default detector, YuNet, runs on the OpenCV the WebUI already has.
- only when the user chose insightface as the face detector (the ``magicnaming_face_detector`` setting is
  ``insightface`` in the WebUI's config file, or ``MAGICNAMING_INSTALL_INSIGHTFACE=1`` is in the
  environment; ``=0`` forbids it whatever the setting says): onnxruntime-gpu when torch sees CUDA, else
  onnxruntime, and neither when either one is installed (both in one environment break each other); the
  other packages insightface imports that are missing (onnx, scikit-image, ...); then insightface itself
  with ``--no-deps``, so its own requirement on ``onnxruntime`` never adds the CPU build next to the GPU one.
  insightface is not installed when one of those failed.

Every pip call runs with ``--only-binary :all:`` (nothing is ever built from source: insightface 0.7.3's
source build needs a compiler and, with the WebUI's protobuf 3.20.0 pin, tries to build onnx too) and with a
constraints file pinning each installed distribution to its installed version, so installing never upgrades
or downgrades what the WebUI runs on. When a package cannot be installed that way, pip fails and nothing
changes.

Every outcome is printed on stdout, failures with pip's own reason: the WebUI shows an installer's stdout
(its stderr only when the installer itself fails). A failed install never stops the WebUI: the extension
loads and its status line says what is missing and what to do.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

PINS = {
    "open_clip_torch": "open-clip-torch>=2.20.0",
}
"""Run-time packages -> pip requirement (requirements.txt lists the same)."""

INSIGHTFACE_PIN = "insightface==2.1"
"""The insightface release installed on request: a pure-Python wheel (0.7.3 has only a source package).
insightface 0.7.3 installed some other way works as well."""
RUNTIMES = {"onnxruntime": "onnxruntime", "onnxruntime-gpu": "onnxruntime-gpu"}
INSIGHTFACE_DEPENDENCIES = {
    "onnx": "onnx",
    "scikit-image": "scikit-image",
    "scipy": "scipy",
    "tqdm": "tqdm",
    "requests": "requests",
}
"""What insightface imports besides numpy, OpenCV and onnxruntime: distribution -> requirement. With the
constraints, pip picks the newest version that fits what is installed (with the WebUI's protobuf 3.20.0:
onnx 1.12)."""
OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless")
OPENCV_REQUIREMENT = "opencv-python-headless"
"""Installed for insightface only when no OpenCV build is there at all (the WebUI ships one)."""

SETTING_KEY = "magicnaming_face_detector"
ENV_VAR = "MAGICNAMING_INSTALL_INSIGHTFACE"
PIP_OPTIONS = "--only-binary :all:"
PREFIX = "[MagicNaming]"


class Step(NamedTuple):
    """One pip install: ``package`` (what is checked/reported), its requirement, and the steps it needs.
    (A NamedTuple: a dataclass needs its module in sys.modules, which an exec()-ed install.py is not.)"""

    package: str
    requirement: str
    no_deps: bool = False
    needs: tuple[str, ...] = ()
    purpose: str = ""


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.!+_-]*$")


def installed_pins(distributions: Iterable[importlib.metadata.Distribution] | None = None) -> list[str]:
    """``name==version`` for each installed distribution (sorted; odd names or versions left out)."""
    if distributions is None:
        distributions = importlib.metadata.distributions()
    pins = {}
    for dist in distributions:
        name, version = dist.metadata["Name"], dist.version
        if name and version and _NAME_RE.match(name) and _VERSION_RE.match(version):
            pins[name.lower()] = f"{name}=={version}"
    return sorted(pins.values(), key=str.lower)


def torch_sees_cuda() -> bool:
    """Whether the WebUI's torch can use a CUDA device (False if torch itself fails to import)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # any torch trouble means: do not pick the GPU build
        return False


def settings_file(launch_module: object) -> Path:
    """The WebUI's settings file: ``launch.args.ui_settings_file`` (``--ui-settings-file``, default
    ``config.json`` in its data folder), else ``config.json`` in the working folder (the WebUI's)."""
    name = getattr(getattr(launch_module, "args", None), "ui_settings_file", None)
    return Path(name) if name else Path("config.json")


def insightface_choice(settings: Path, environ: Mapping[str, str]) -> str | None:
    """Why insightface is to be installed (the environment variable, or the setting), or None."""
    flag = environ.get(ENV_VAR, "").strip().lower()
    if flag in ("1", "true", "yes", "on"):
        return f"{ENV_VAR}={environ[ENV_VAR].strip()}"
    if flag in ("0", "false", "no", "off"):
        return None
    try:
        data = json.loads(settings.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        print(f"{PREFIX} could not read the WebUI settings {settings} ({error}); not installing insightface")
        return None
    if isinstance(data, dict) and data.get(SETTING_KEY) == "insightface":
        return f"the face detector setting is 'insightface' in {settings.name}"
    return None


def plan_installs(is_installed: Callable[[str], bool], cuda: bool, insightface: bool) -> list[Step]:
    """The pip installs to run, in order, given what is installed, whether CUDA is seen and whether the
    insightface detector was chosen."""
    plan = []
    if not (is_installed("open_clip_torch") or is_installed("open_clip")):
        towers = "the photo encoder's CLIP towers"
        plan.append(Step("open_clip_torch", PINS["open_clip_torch"], purpose=towers))
    if not insightface or is_installed("insightface"):
        return plan
    purpose = "the insightface face detector"
    needs = []
    if not (is_installed("onnxruntime") or is_installed("onnxruntime-gpu")):
        runtime = "onnxruntime-gpu" if cuda else "onnxruntime"
        plan.append(Step(runtime, RUNTIMES[runtime], purpose=purpose))
        needs.append(runtime)
    if not any(is_installed(name) for name in OPENCV_DISTRIBUTIONS):
        plan.append(Step(OPENCV_REQUIREMENT, OPENCV_REQUIREMENT, purpose=purpose))
        needs.append(OPENCV_REQUIREMENT)
    for package, requirement in INSIGHTFACE_DEPENDENCIES.items():
        if not is_installed(package):
            plan.append(Step(package, requirement, purpose=purpose))
            needs.append(package)
    plan.append(Step("insightface", INSIGHTFACE_PIN, no_deps=True, needs=tuple(needs), purpose=purpose))
    return plan


def pip_reason(error: Exception) -> str:
    """pip's own reason from ``launch.run_pip``'s error (its ``ERROR:`` lines, else its last lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line[line.index("ERROR:"):] for line in lines if "ERROR:" in line]  # also "stderr: ERROR: ..."
    return " ".join(errors or lines[-4:]) or type(error).__name__


def main(
    launch_module: object | None = None, cuda: bool | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Install what is missing; return the packages whose install failed or was skipped (all printed)."""
    environ = os.environ if environ is None else environ
    try:
        if launch_module is None:
            import launch as launch_module
        reason = insightface_choice(settings_file(launch_module), environ)
        plan = plan_installs(
            launch_module.is_installed, torch_sees_cuda() if cuda is None else cuda, reason is not None
        )
        constraints = _write_constraints(installed_pins()) if plan else None
    except Exception as error:  # never break the WebUI's start
        print(f"{PREFIX} install step skipped: {error}")
        return []
    if constraints is None:
        return []
    if any(step.package == "insightface" for step in plan):
        print(f"{PREFIX} installing insightface for the insightface face detector ({reason})")
    try:
        return _run(plan, launch_module, constraints)
    finally:
        os.unlink(constraints)


def _run(plan: list[Step], launch_module: object, constraints: str) -> list[str]:
    failed: list[str] = []
    for step in plan:
        blocked = [need for need in step.needs if need in failed]
        if blocked:
            failed.append(step.package)
            print(f"{PREFIX} not installing {step.requirement}: {', '.join(blocked)} could not be installed. "
                  f"{_what_now(step)}")
            continue
        options = f"{PIP_OPTIONS} --no-deps" if step.no_deps else PIP_OPTIONS
        try:
            command = f'install "{step.requirement}" {options} -c "{constraints}"'
            launch_module.run_pip(command, f"{step.package} for MagicNaming")
        except Exception as error:  # run_pip raises RuntimeError with pip's output
            failed.append(step.package)
            print(f"{PREFIX} could not install {step.requirement} for {step.purpose}: {pip_reason(error)}. "
                  f"{_what_now(step)}")
            continue
        print(f"{PREFIX} installed {step.requirement} for {step.purpose}")
    return failed


def _what_now(step: Step) -> str:
    if step.package == "open_clip_torch":
        return ("The WebUI starts anyway; identities from photos stay off until it is installed: pip install "
                f"\"{step.requirement}\" in the WebUI's environment, then restart.")
    return ("The WebUI starts anyway; choose the 'auto' or 'yunet' face detector in Settings > MagicNaming "
            "(YuNet needs nothing installed), or install insightface by hand (pip install --no-deps "
            f"\"{INSIGHTFACE_PIN}\" plus onnxruntime, or onnxruntime-gpu, never both) and restart.")


def _write_constraints(pins: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix="-magicnaming-constraints.txt", delete=False) as handle:
        handle.write("\n".join(pins) + "\n")
    return handle.name


if __name__ in ("__main__", "builtins"):  # a subprocess (A1111, Forge) or exec() (old WebUIs)
    main()
    sys.stdout.flush()
