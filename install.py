"""MagicNaming's install step: the WebUI runs this file at every start (not under --skip-install).

It installs, with the WebUI's own pip (``launch.run_pip``), only what is missing:

- open_clip_torch, unless it is present (the WebUI ships it);
- insightface;
- onnxruntime-gpu when torch sees CUDA, else onnxruntime; neither when either one is already installed
  (having both breaks onnxruntime's GPU providers).

Every pip call runs with a constraints file pinning each distribution already installed to its installed
version, so installing never upgrades or downgrades what the WebUI runs on (left free, insightface's
dependencies pull in numpy 2 and pydantic 2 through albumentations, which breaks v1.10.1's start). When a
package cannot be installed without such a change, pip fails and nothing changes.

A failed install never stops the WebUI: the error is printed and the extension loads anyway, telling the
user in its tab and status line which package is missing.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable

PINS = {
    "open_clip_torch": "open-clip-torch>=2.20.0",
    "insightface": "insightface==0.7.3",
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime-gpu",
}
"""Package -> pip requirement (requirements.txt lists the same)."""


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


def plan_installs(is_installed: Callable[[str], bool], cuda: bool) -> list[str]:
    """The packages (keys of PINS) to install, in order, given what is installed and whether CUDA is seen."""
    plan = []
    if not (is_installed("open_clip_torch") or is_installed("open_clip")):
        plan.append("open_clip_torch")
    if not is_installed("insightface"):
        plan.append("insightface")
    if not (is_installed("onnxruntime") or is_installed("onnxruntime-gpu")):
        plan.append("onnxruntime-gpu" if cuda else "onnxruntime")
    return plan


def main(launch_module: object | None = None, cuda: bool | None = None) -> list[str]:
    """Install what is missing; return the packages whose install failed (messages already printed)."""
    try:
        if launch_module is None:
            import launch as launch_module
        plan = plan_installs(launch_module.is_installed, torch_sees_cuda() if cuda is None else cuda)
        constraints = _write_constraints(installed_pins()) if plan else None
    except Exception as error:  # never break the WebUI's start
        print(f"[MagicNaming] install step skipped: {error}", file=sys.stderr)
        return []
    if constraints is None:
        return []
    failed = []
    try:
        for package in plan:
            try:
                launch_module.run_pip(
                    f'install "{PINS[package]}" -c "{constraints}"', f"{package} for MagicNaming"
                )
            except Exception as error:  # run_pip raises RuntimeError with pip's output
                failed.append(package)
                print(
                    f"[MagicNaming] could not install {package} (pip may have refused to change a package "
                    f"the WebUI has installed: {error}). The WebUI starts anyway; MagicNaming photo features "
                    f"stay off until it is installed: pip install \"{PINS[package]}\" in the WebUI's "
                    "environment, then restart.",
                    file=sys.stderr,
                )
    finally:
        os.unlink(constraints)
    return failed


def _write_constraints(pins: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix="-magicnaming-constraints.txt", delete=False) as handle:
        handle.write("\n".join(pins) + "\n")
    return handle.name


if __name__ in ("__main__", "builtins"):  # a subprocess (A1111, Forge) or exec() (old WebUIs)
    main()
