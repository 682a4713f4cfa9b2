"""MagicNaming's install step: the WebUI runs this file at every start (not under --skip-install).

It installs, with the WebUI's own pip (``launch.run_pip``), only what is missing:

- open_clip_torch, unless it is present (the WebUI ships it);
- insightface;
- onnxruntime-gpu when torch sees CUDA, else onnxruntime; neither when either one is already installed
  (having both breaks onnxruntime's GPU providers).

A failed install never stops the WebUI: the error is printed and the extension loads anyway, telling the
user in its tab and status line which package is missing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

PINS = {
    "open_clip_torch": "open-clip-torch>=2.20.0",
    "insightface": "insightface==0.7.3",
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime-gpu",
}
"""Package -> pip requirement (requirements.txt lists the same)."""


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
    except Exception as error:  # never break the WebUI's start
        print(f"[MagicNaming] install step skipped: {error}", file=sys.stderr)
        return []
    failed = []
    for package in plan:
        try:
            launch_module.run_pip(f'install "{PINS[package]}"', f"{package} for MagicNaming")
        except Exception as error:  # run_pip raises RuntimeError with pip's output
            failed.append(package)
            print(
                f"[MagicNaming] could not install {package} ({error}). The WebUI starts anyway; MagicNaming "
                f"photo features stay off until it is installed: pip install \"{PINS[package]}\" in the "
                "WebUI's environment, then restart.",
                file=sys.stderr,
            )
    return failed


if __name__ in ("__main__", "builtins"):  # a subprocess (A1111, Forge) or exec() (old WebUIs)
    main()
