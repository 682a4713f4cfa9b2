"""A stand-in for the parts of the AUTOMATIC1111 WebUI (v1.10.1) that MagicNaming imports, for tests.

``webui_modules()`` puts the stand-in's ``modules`` package on ``sys.path`` (fresh, so every test starts with
empty caches, callbacks and settings) and removes it, and every module imported from it, afterwards. The
``webui`` pytest fixture (``pytest_plugins = ["webui_standin"]`` in a test module) does that around a test
and hands over a namespace of the stand-in's modules, the toy model classes, and helpers to load the
extension's script file and build txt2img runs.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import pytest

STANDIN_ROOT = Path(__file__).resolve().parent
BUILTIN_SCRIPTS = STANDIN_ROOT / "builtin_scripts"
REPO_ROOT = STANDIN_ROOT.parents[1]


def _standin_module_names() -> list[str]:
    names = []
    for name, module in list(sys.modules.items()):
        if name == "modules" or name.startswith("modules.") or name == "toy_sdxl" or name.endswith(".py"):
            names.append(name)
        elif name.startswith("webui_standin.toy_sdxl"):
            names.append(name)
        elif getattr(module, "__file__", None) and str(STANDIN_ROOT) in str(module.__file__):
            names.append(name)
    return names


@contextlib.contextmanager
def webui_modules():
    """The stand-in ``modules`` package importable inside the block; forgotten (with the extension's
    WebUI glue, which imports it) when the block ends."""
    if "modules" in sys.modules and str(STANDIN_ROOT) not in str(
        getattr(sys.modules["modules"], "__file__", "")
    ):
        raise RuntimeError("another 'modules' package is imported; the WebUI stand-in cannot take its place")
    sys.path.insert(0, str(STANDIN_ROOT))
    try:
        yield
    finally:
        for name in _standin_module_names():
            sys.modules.pop(name, None)
        for name in [n for n in sys.modules if n.startswith("lib_magicnaming.webui")]:
            sys.modules.pop(name, None)
        sys.path.remove(str(STANDIN_ROOT))


def _namespace() -> types.SimpleNamespace:
    import toy_sdxl
    from modules import (
        extra_networks,
        infotext_utils,
        processing,
        prompt_parser,
        script_callbacks,
        scripts,
        sd_hijack,
        shared,
    )
    from modules.api import api

    def load_script(path: str | Path):
        """Load a script file as the WebUI does (extension folder = the file's parent's parent)."""
        path = Path(path)
        return scripts.load_script(str(path), str(path.parent.parent))

    def load_xyz_grid():
        return scripts.load_script(str(BUILTIN_SCRIPTS / "xyz_grid.py"), str(STANDIN_ROOT))

    def load_seed_section():
        """The txt2img Seed section (an AlwaysOn built-in whose setup sets p.seed for UI requests)."""
        return scripts.load_script(str(BUILTIN_SCRIPTS / "seed.py"), str(STANDIN_ROOT))

    def make_runner(is_img2img: bool = False) -> scripts.ScriptRunner:
        runner = scripts.ScriptRunner()
        runner.initialize_scripts(is_img2img)
        runner.setup_ui()
        if is_img2img:
            scripts.scripts_img2img = runner
        else:
            scripts.scripts_txt2img = runner
        return runner

    def txt2img(runner, script_args_by_title: dict | None = None, **fields):
        """A StableDiffusionProcessingTxt2Img with the runner's UI defaults and the given script args."""
        args = list(runner.inputs)
        args[0] = 0
        for script in runner.scripts:
            defaults = [
                getattr(control, "value", None)
                for control in runner.inputs[script.args_from : script.args_to]
            ]
            args[script.args_from : script.args_to] = defaults
            given = (script_args_by_title or {}).get(script.title().lower())
            if given is not None:
                args[script.args_from : script.args_from + len(given)] = given
        p = processing.StableDiffusionProcessingTxt2Img(**fields)
        p.scripts = runner
        p.script_args = tuple(args)
        return p

    return types.SimpleNamespace(
        shared=shared,
        processing=processing,
        prompt_parser=prompt_parser,
        scripts=scripts,
        script_callbacks=script_callbacks,
        sd_hijack=sd_hijack,
        extra_networks=extra_networks,
        infotext_utils=infotext_utils,
        api=api,
        toy=toy_sdxl,
        load_script=load_script,
        load_xyz_grid=load_xyz_grid,
        load_seed_section=load_seed_section,
        make_runner=make_runner,
        txt2img=txt2img,
        repo_root=REPO_ROOT,
    )


@pytest.fixture
def webui():
    """The WebUI stand-in for one test (see the module docstring)."""
    with webui_modules():
        yield _namespace()
