"""Stand-in for Forge's ``modules`` package (lllyasviel/stable-diffusion-webui-forge, main dfdcbab6).

The files here mirror Forge's own where Forge changed what MagicNaming touches, written from reading the real
code (never copied): ``sd_hijack.py`` (a stub: no embedding database, no comments), ``sd_models.py`` (the
checkpoint loads lazily through ``forge_model_reload``), ``shared.py`` (``sd_model`` read from
``sd_models.model_data``) and ``processing.py`` (model reload, comments and the textual-inversion infotext on
the model, inference mode). Every other module (prompt_parser, scripts, script_callbacks, extra_networks,
infotext_utils, options, ui_components, api, textual_inversion, ...) is the v1.10.1 stand-in's
(tests/webui_standin/modules), found through this package's ``__path__``: Forge kept those as v1.10.1 in what
the extension uses. Read at dfdcbab6: modules/extra_networks.py and modules/script_callbacks.py are
unchanged; modules/prompt_parser.py differs only in Flux's ``distilled_cfg_scale`` (an extra
``SdConditioning`` field MagicNaming copies along with ``copy_from``) and in stacking conds of unequal length
without padding them first.
"""

import importlib.util
import sys
from pathlib import Path

V1_10_1_MODULES = Path(__file__).resolve().parents[2] / "webui_standin" / "modules"
__path__.append(str(V1_10_1_MODULES))


def load_v1_10_1(name: str):
    """The v1.10.1 stand-in's module ``name`` as ``modules.v1_10_1_<name>``: a base for the Forge module of
    the same name, its own imports resolved in this package (Forge's files first)."""
    full_name = f"{__name__}.v1_10_1_{name}"
    if full_name in sys.modules:
        return sys.modules[full_name]
    spec = importlib.util.spec_from_file_location(full_name, V1_10_1_MODULES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[full_name] = module
    spec.loader.exec_module(module)
    return module
