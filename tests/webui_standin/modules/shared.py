"""Stand-in for modules/shared.py: ``opts``, ``cmd_opts``, ``state``, ``sd_model``, ``progress_print_out`` and
friends.

Option defaults are those of modules/shared_options.py in v1.10.1 for the options the processing path reads.
Tests set ``shared.sd_model`` to a toy model (tests/webui_standin/toy_sdxl.py).
"""

import argparse
import os
import sys

from modules import options, paths

OptionInfo = options.OptionInfo

cmd_opts = argparse.Namespace(
    api_auth=None,
    api=False,
    nowebui=False,
    lowvram=False,
    medvram=False,
    medvram_sdxl=False,
    no_prompt_history=True,
    embeddings_dir=os.path.join(paths.data_path, "embeddings"),
    data_dir=paths.data_path,
    models_dir=None,
    disable_console_progressbars=False,
)

_defaults = {
    "emphasis": "Original",
    "comma_padding_backtrack": 20,
    "CLIP_stop_at_last_layers": 1,
    "persistent_cond_cache": True,
    "use_old_scheduling": False,
    "sdxl_crop_left": 0,
    "sdxl_crop_top": 0,
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0,
    "fp8_storage": "Disable",
    "cache_fp16_weight": False,
    "textual_inversion_add_hashes_to_infotext": True,
    "hires_fix_use_firstpass_conds": False,
    "enable_pnginfo": True,
    "add_model_hash_to_info": True,
    "add_model_name_to_info": True,
}

opts = options.Options({key: OptionInfo(value) for key, value in _defaults.items()})


class State:
    """Progress and stop flags of the current job (modules/shared_state.py); ``GET /sdapi/v1/progress``
    answers with ``job``, ``job_count``, ``job_no`` and ``textinfo``."""

    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.textinfo = None

    def interrupt(self):
        self.interrupted = True

    def nextjob(self):
        self.job_no += 1

    def begin(self, job="(unknown)"):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job
        self.job_count = -1
        self.job_no = 0

    def end(self):
        self.job = ""
        self.job_count = 0


state = State()

progress_print_out = sys.stdout
"""Where the console progress bars go (tqdm's ``file``)."""

sd_model = None
"""The loaded checkpoint; tests assign a toy model here."""


class PromptStyles:
    """No styles defined: prompts pass through unchanged (modules/styles.py with an empty styles.csv)."""

    def apply_styles_to_prompt(self, prompt, styles):
        return prompt

    def apply_negative_styles_to_prompt(self, prompt, styles):
        return prompt


prompt_styles = PromptStyles()
