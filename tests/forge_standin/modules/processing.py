"""Stand-in for Forge's modules/processing.py (dfdcbab6; Forge Neo 283cb2c4 alike in what is mirrored).

Built on the v1.10.1 stand-in's (tests/webui_standin/modules/processing.py: prompts, caches and their key,
hires prompts and conds, the toy sampler), with what Forge changed:

* ``process_images`` loads the model first (``manage_model_and_prompt_cache`` -> ``forge_model_reload``; its
  ``p.sd_model = ...`` goes to v1.10.1's property setter, which ignores it: ``p.sd_model`` is
  ``shared.sd_model`` in Forge too, modules/processing.py:262-268); ``process_images_inner`` resets
  ``p.sd_model.comments`` and ``.extra_generation_params`` (not ``model_hijack``'s), runs the batches under
  ``torch.inference_mode``, calls ``forge_model_reload`` again before each batch, and after ``setup_conds``
  copies the model's ``extra_generation_params`` into the infotext and its ``comments`` under the image;
* ``get_conds_with_caching`` sets the model's clip skip, and after computing a cond copies
  ``backend.text_processing.classic_engine.last_extra_generation_params`` (the engines' 'TI' entry) into the
  model's ``extra_generation_params`` and into the cache's third slot (replayed on a cache hit), then resets
  it; the caches are ``[params, cond, extra params]``;
* the hires pass runs ``process_before_every_sampling`` twice.

Left out as in the v1.10.1 stand-in: U-Net patching (``forge_objects``), VAE, image saving; and Forge's
``before_hr`` and ``postprocess_batch_list`` hooks (MagicNaming uses neither).
"""

from __future__ import annotations

import torch

from modules import devices, load_v1_10_1, sd_models, shared
from modules.shared import opts

_v1_10_1 = load_v1_10_1("processing")
create_infotext = _v1_10_1.create_infotext
Processed = _v1_10_1.Processed
ToySampler = _v1_10_1.ToySampler
SamplerCall = _v1_10_1.SamplerCall


class StableDiffusionProcessing(_v1_10_1.StableDiffusionProcessing):
    cached_uc = [None, None, None]
    cached_c = [None, None, None]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.cached_uc = StableDiffusionProcessing.cached_uc
        self.cached_c = StableDiffusionProcessing.cached_c

    def get_conds_with_caching(
        self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None
    ):
        cached_params = self.cached_params(
            required_prompts, steps, extra_network_data, hires_steps, shared.opts.use_old_scheduling
        )
        hit = next((cache for cache in caches if cache[0] is not None and cached_params == cache[0]), None)
        if hit is not None and len(hit) > 2:  # the cache hit replays the TI entry its computation recorded
            shared.sd_model.extra_generation_params.update(hit[2])

        def computing(model, *args):  # what Forge does around the computation; v1.10.1's caching otherwise
            import backend.text_processing.classic_engine

            model.set_clip_skip(int(opts.CLIP_stop_at_last_layers))
            result = function(model, *args)
            classic_engine = backend.text_processing.classic_engine
            last_extra_generation_params = classic_engine.last_extra_generation_params.copy()
            model.extra_generation_params.update(last_extra_generation_params)
            if len(caches[0]) > 2:
                caches[0][2] = last_extra_generation_params
            classic_engine.last_extra_generation_params = {}
            return result

        return super().get_conds_with_caching(
            computing, required_prompts, steps, caches, extra_network_data, hires_steps
        )

    def close(self):
        if not opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None, None]
            StableDiffusionProcessing.cached_uc = [None, None, None]


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing, _v1_10_1.StableDiffusionProcessingTxt2Img):
    cached_hr_uc = [None, None, None]
    cached_hr_c = [None, None, None]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.cached_hr_uc = StableDiffusionProcessingTxt2Img.cached_hr_uc
        self.cached_hr_c = StableDiffusionProcessingTxt2Img.cached_hr_c

    def sample_hr_pass(self, samples, seeds, subseeds, subseed_strength, prompts):
        """Forge computes the hires conds here and runs ``process_before_every_sampling`` once more before
        v1.10.1's hires pass (which runs it again)."""
        with devices.autocast():
            self.calculate_hr_conds()

        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=samples, noise=samples, c=self.hr_c, uc=self.hr_uc
            )
        return super().sample_hr_pass(samples, seeds, subseeds, subseed_strength, prompts)


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing, _v1_10_1.StableDiffusionProcessingImg2Img):
    pass


def manage_model_and_prompt_cache(p: StableDiffusionProcessing):
    p.sd_model, just_reloaded = sd_models.forge_model_reload()


def process_images(p: StableDiffusionProcessing):
    if p.scripts is not None:
        p.scripts.before_process(p)

    manage_model_and_prompt_cache(p)

    return process_images_inner(p)


class ForgeProcessing(_v1_10_1.WebUIProcessing):
    """Forge's ``process_images_inner``: comments and infotext entries on the model, batches under
    ``torch.inference_mode``, the model reloaded (when the choice changed) before each batch."""

    def clear_notes(self, p) -> None:
        p.sd_model.comments = []
        p.sd_model.extra_generation_params = {}

    def notes(self, p) -> tuple[dict, list]:
        return p.sd_model.extra_generation_params, p.sd_model.comments

    def batches_context(self):
        return torch.inference_mode()

    def before_batch(self, p) -> None:
        sd_models.forge_model_reload()


def process_images_inner(p: StableDiffusionProcessing):
    return _v1_10_1.process_images_inner(p, ForgeProcessing())
