"""Stand-in for Forge's modules/shared.py: the v1.10.1 stand-in's ``opts``, ``cmd_opts``, ``state``, ... with
``sd_model`` a property of the module, read from (and written to) ``modules.sd_models.model_data`` as
modules/shared_items.py's ``Shared.sd_model`` does. Until a generation loads the checkpoint it is
``sd_models.FakeInitialModel``."""

import sys
import types

from modules import load_v1_10_1

_v1_10_1 = load_v1_10_1("shared")
globals().update({k: v for k, v in vars(_v1_10_1).items() if not k.startswith("__") and k != "sd_model"})


class Shared(types.ModuleType):
    """modules/shared_items.py: ``sd_model`` as a property of the ``modules.shared`` module."""

    @property
    def sd_model(self):
        import modules.sd_models

        return modules.sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        import modules.sd_models

        modules.sd_models.model_data.set_sd_model(value)


sys.modules[__name__].__class__ = Shared
