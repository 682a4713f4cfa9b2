"""Stand-ins for the parts of the WebUIs that MagicNaming imports, for tests: AUTOMATIC1111 v1.10.1 (this
folder) and Forge (tests/forge_standin: Forge's SDXL engine path over this one; "forge-neo" is the same with
Forge Neo's model unloading).

``webui_modules(kind)`` puts the stand-in's ``modules`` (and Forge's ``backend``) packages on ``sys.path``
(fresh, so every test starts with empty caches, callbacks and settings) and removes them, and every module
imported from them, afterwards. The ``webui`` pytest fixture (``pytest_plugins = ["webui_standin"]`` in a
test module) does that around a test for v1.10.1, :func:`webui_for` for any of :data:`WEBUIS`; both hand over
a namespace of the stand-in's modules, the toys, and helpers to load the extension's script file, choose the
checkpoint and build txt2img runs, the same for every kind.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import pytest

STANDIN_ROOT = Path(__file__).resolve().parent
FORGE_ROOT = STANDIN_ROOT.parent / "forge_standin"
BUILTIN_SCRIPTS = STANDIN_ROOT / "builtin_scripts"
REPO_ROOT = STANDIN_ROOT.parents[1]

V1_10_1 = "v1.10.1"
FORGE = "forge"
FORGE_NEO = "forge-neo"
WEBUIS = (V1_10_1, FORGE, FORGE_NEO)
"""The stand-ins: A1111 v1.10.1; Forge dfdcbab6; Forge with Forge Neo 283cb2c4's model unloading."""


def _roots(kind: str) -> tuple[Path, ...]:
    return (STANDIN_ROOT,) if kind == V1_10_1 else (FORGE_ROOT, STANDIN_ROOT)


def _standin_module_names() -> list[str]:
    names = []
    roots = (str(STANDIN_ROOT), str(FORGE_ROOT))
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("modules", "backend") or name.startswith("toy_") or name.endswith(".py"):
            names.append(name)
        elif getattr(module, "__file__", None) and any(root in str(module.__file__) for root in roots):
            names.append(name)
    return names


@contextlib.contextmanager
def webui_modules(kind: str = V1_10_1):
    """The stand-in's packages importable inside the block; forgotten (with the extension's WebUI glue,
    which imports them) when the block ends."""
    loaded = str(getattr(sys.modules.get("modules"), "__file__", ""))
    if "modules" in sys.modules and str(STANDIN_ROOT) not in loaded and str(FORGE_ROOT) not in loaded:
        raise RuntimeError("another 'modules' package is imported; the WebUI stand-in cannot take its place")
    roots = [str(root) for root in _roots(kind)]
    sys.path[0:0] = roots
    try:
        yield
    finally:
        for name in _standin_module_names():
            sys.modules.pop(name, None)
        for name in [n for n in sys.modules if n.startswith("lib_magicnaming.webui")]:
            sys.modules.pop(name, None)
        for root in roots:
            sys.path.remove(root)


def _checkpoint_helpers(kind: str) -> dict:
    """``use_checkpoint(name)`` ('sdxl', 'refiner', 'sd15' or None), ``model()`` (the checkpoint a generation
    would use, loaded as the WebUI loads it), ``embedding_databases()`` (where placeholders would go) and
    ``toy`` for the stand-in of ``kind``."""
    if kind == V1_10_1:
        import toy_sdxl
        from modules import sd_hijack, shared

        models = {
            "sdxl": toy_sdxl.ToySDXL,
            "refiner": lambda: toy_sdxl.ToySDXL(refiner=True, name="toy-refiner"),
            "sd15": toy_sdxl.ToySD15,
        }

        def use_checkpoint(name):
            shared.sd_model = None if name is None else models[name]()

        return dict(
            toy=toy_sdxl,
            use_checkpoint=use_checkpoint,
            model=lambda: shared.sd_model,
            embedding_databases=lambda: [sd_hijack.model_hijack.embedding_db],
        )

    import toy_forge_sdxl
    from modules import sd_models

    sd_models.UNLOAD_DELETES_ENGINES = kind == FORGE_NEO

    def use_checkpoint(name):
        info = None if name is None else toy_forge_sdxl.CHECKPOINTS[name][0]
        sd_models.model_data.forge_loading_parameters = dict(checkpoint_info=info)

    def embedding_databases():
        model = sd_models.model_data.sd_model
        engines = [value for key, value in sorted(vars(model).items()) if key.startswith("text_processing")]
        return [engine.embeddings for engine in engines]

    return dict(
        toy=toy_forge_sdxl,
        use_checkpoint=use_checkpoint,
        model=lambda: sd_models.forge_model_reload()[0],
        embedding_databases=embedding_databases,
        sd_models=sd_models,
    )


def _namespace(kind: str = V1_10_1) -> types.SimpleNamespace:
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
        kind=kind,
        **_checkpoint_helpers(kind),
        shared=shared,
        processing=processing,
        prompt_parser=prompt_parser,
        scripts=scripts,
        script_callbacks=script_callbacks,
        sd_hijack=sd_hijack,
        extra_networks=extra_networks,
        infotext_utils=infotext_utils,
        api=api,
        load_script=load_script,
        load_xyz_grid=load_xyz_grid,
        load_seed_section=load_seed_section,
        make_runner=make_runner,
        txt2img=txt2img,
        repo_root=REPO_ROOT,
    )


@contextlib.contextmanager
def webui_for(kind: str):
    """The stand-in of ``kind`` (one of :data:`WEBUIS`) for the block (see the module docstring)."""
    with webui_modules(kind):
        yield _namespace(kind)


@pytest.fixture
def webui():
    """The v1.10.1 WebUI stand-in for one test (see the module docstring)."""
    with webui_for(V1_10_1) as namespace:
        yield namespace
