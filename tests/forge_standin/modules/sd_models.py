"""Stand-in for Forge's modules/sd_models.py (dfdcbab6): the checkpoint is loaded lazily.

``model_data.sd_model`` is a ``FakeInitialModel`` (no ``get_learned_conditioning``) until
``forge_model_reload()`` loads the checkpoint chosen in ``model_data.forge_loading_parameters``: it returns
``(model, just_reloaded)``, does nothing while the choice is unchanged, otherwise drops the old model, builds
a new one (new text engines, whose embedding databases are read anew from the embeddings folder), sets its
``comments``/``extra_generation_params``/``sd_checkpoint_info`` and calls
``script_callbacks.model_loaded_callback``. Processing calls it before every generation and every batch.

``UNLOAD_DELETES_ENGINES`` is Forge Neo's variant (ivanuser/stable-diffusion-webui-Nukem, branch neo,
283cb2c4, modules/sd_models.py): before loading it deletes the old model's ``forge_objects``, text engines
(``text_processing_engine``, ``_l``, ``_g``, ``_t5``) and ``model`` attributes and resets ``forge_hash``.
"""

import math

from backend.args import dynamic_args
from backend.loader import forge_loader

from modules import script_callbacks, shared

UNLOAD_DELETES_ENGINES = False
"""True: Forge Neo's unloading (module docstring)."""

NEO_JUNK = (
    "model_config",
    "forge_objects",
    "forge_objects_original",
    "forge_objects_after_applying_lora",
    "text_processing_engine",
    "text_processing_engine_l",
    "text_processing_engine_g",
    "text_processing_engine_t5",
    "model",
)


class FakeInitialModel:
    def __init__(self):
        self.cond_stage_model = None
        self.chunk_length = 75

    def get_prompt_lengths_on_ui(self, prompt):
        r = len(prompt.strip("!,. ").replace(" ", ",").replace(".", ",").replace("!", ",").split(","))
        return r, math.ceil(max(r, 1) / self.chunk_length) * self.chunk_length


class SdModelData:
    def __init__(self):
        self.sd_model = FakeInitialModel()
        self.forge_loading_parameters = {}
        self.forge_hash = ""

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v):
        self.sd_model = v


model_data = SdModelData()


def forge_model_reload():
    current_hash = str(model_data.forge_loading_parameters)

    if model_data.forge_hash == current_hash:
        return model_data.sd_model, False

    if model_data.sd_model is not None:
        if UNLOAD_DELETES_ENGINES:
            for junk in NEO_JUNK:
                try:
                    delattr(model_data.sd_model, junk)
                except AttributeError:
                    pass
            model_data.forge_hash = ""
        model_data.sd_model = None

    checkpoint_info = model_data.forge_loading_parameters["checkpoint_info"]

    if checkpoint_info is None:
        raise ValueError(
            "You do not have any model! Please download at least one model in [models/Stable-diffusion]."
        )

    dynamic_args["embedding_dir"] = shared.cmd_opts.embeddings_dir
    dynamic_args["emphasis_name"] = shared.opts.emphasis
    sd_model = forge_loader(checkpoint_info.filename)

    sd_model.extra_generation_params = {}
    sd_model.comments = []
    sd_model.sd_checkpoint_info = checkpoint_info
    sd_model.filename = checkpoint_info.filename
    sd_model.sd_model_hash = checkpoint_info.calculate_shorthash()

    model_data.set_sd_model(sd_model)

    script_callbacks.model_loaded_callback(sd_model)

    model_data.forge_hash = current_hash

    return sd_model, True
