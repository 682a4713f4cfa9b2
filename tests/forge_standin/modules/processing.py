"""Stand-in for Forge's modules/processing.py (dfdcbab6; Forge Neo 283cb2c4 alike in what is mirrored).

Built on the v1.10.1 stand-in's (tests/webui_standin/modules/processing.py: prompts, caches and their key,
hires prompts and conds, the toy sampler), with what Forge changed:

* ``process_images`` loads the model first (``manage_model_and_prompt_cache`` -> ``forge_model_reload``, which
  sets ``p.sd_model``); ``process_images_inner`` resets ``p.sd_model.comments`` and
  ``.extra_generation_params`` (not ``model_hijack``'s), runs the batches under ``torch.inference_mode``,
  calls ``forge_model_reload`` again before each batch, and after ``setup_conds`` copies the model's
  ``extra_generation_params`` into the infotext and its ``comments`` under the image;
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

from modules import devices, extra_networks, load_v1_10_1, scripts, sd_models, shared
from modules.shared import opts, state

_v1_10_1 = load_v1_10_1("processing")
create_infotext = _v1_10_1.create_infotext
Processed = _v1_10_1.Processed
ToySampler = _v1_10_1.ToySampler
SamplerCall = _v1_10_1.SamplerCall


class StableDiffusionProcessing(_v1_10_1.StableDiffusionProcessing):
    cached_uc = [None, None, None]
    cached_c = [None, None, None]
    sd_model = None
    """Set by ``manage_model_and_prompt_cache`` (an attribute in Forge, not v1.10.1's property)."""

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

        for cache in caches:
            if cache[0] is not None and cached_params == cache[0]:
                if len(cache) > 2:
                    shared.sd_model.extra_generation_params.update(cache[2])
                return cache[1]

        cache = caches[0]

        with devices.autocast():
            shared.sd_model.set_clip_skip(int(opts.CLIP_stop_at_last_layers))

            cache[1] = function(
                shared.sd_model, required_prompts, steps, hires_steps, shared.opts.use_old_scheduling
            )

            import backend.text_processing.classic_engine

            classic_engine = backend.text_processing.classic_engine
            last_extra_generation_params = classic_engine.last_extra_generation_params.copy()

            shared.sd_model.extra_generation_params.update(last_extra_generation_params)

            if len(cache) > 2:
                cache[2] = last_extra_generation_params

            backend.text_processing.classic_engine.last_extra_generation_params = {}

        cache[0] = cached_params
        return cache[1]

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
        self.is_hr_pass = True
        self.sampler = ToySampler()

        with devices.autocast():
            self.calculate_hr_conds()

        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=samples, noise=samples, c=self.hr_c, uc=self.hr_uc
            )
            self.scripts.process_before_every_sampling(
                self, x=samples, noise=samples, c=self.hr_c, uc=self.hr_uc
            )

        samples = self.sampler.sample(
            self, samples, self.hr_c, self.hr_uc, self.hr_second_pass_steps or self.steps, "hires"
        )
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing, _v1_10_1.StableDiffusionProcessingImg2Img):
    pass


def manage_model_and_prompt_cache(p: StableDiffusionProcessing):
    p.sd_model, just_reloaded = sd_models.forge_model_reload()


def process_images(p: StableDiffusionProcessing):
    if p.scripts is not None:
        p.scripts.before_process(p)

    manage_model_and_prompt_cache(p)

    return process_images_inner(p)


def process_images_inner(p: StableDiffusionProcessing):
    seed = p.seed if p.seed != -1 else 1234

    p.sd_model.comments = []
    p.sd_model.extra_generation_params = {}

    p.setup_prompts()

    p.all_seeds = [int(seed) + x for x in range(len(p.all_prompts))]
    p.all_subseeds = list(p.all_seeds)

    if p.scripts is not None:
        p.scripts.process(p)

    infotexts = []
    output_images = []
    with torch.inference_mode():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)

        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n

            if state.interrupted or state.stopping_generation:
                break

            sd_models.forge_model_reload()

            p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size : (n + 1) * p.batch_size]

            if p.scripts is not None:
                p.scripts.before_process_batch(
                    p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds
                )

            if len(p.prompts) == 0:
                break

            p.parse_extra_network_prompts()

            if not p.disable_extra_networks:
                extra_networks.activate(p, p.extra_network_data)

            if p.scripts is not None:
                p.scripts.process_batch(
                    p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds
                )

            p.setup_conds()

            p.extra_generation_params.update(p.sd_model.extra_generation_params)

            for comment in p.sd_model.comments:
                p.comment(comment)

            samples_ddim = p.sample(
                conditioning=p.c,
                unconditional_conditioning=p.uc,
                seeds=p.seeds,
                subseeds=p.subseeds,
                subseed_strength=p.subseed_strength,
                prompts=p.prompts,
            )

            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples

            x_samples_ddim = [torch.zeros((3, p.height, p.width)) for _ in range(samples_ddim.shape[0])]

            state.nextjob()

            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples_ddim, batch_number=n)

                p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
                p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]

            for i, _x_sample in enumerate(x_samples_ddim):
                p.batch_index = i
                text = create_infotext(
                    p, p.prompts, p.seeds, p.subseeds, index=i, all_negative_prompts=p.negative_prompts
                )
                infotexts.append(text)
                image = _v1_10_1.Image.new("RGB", (p.width, p.height))
                if opts.enable_pnginfo:
                    image.info["parameters"] = text
                output_images.append(image)

    if not infotexts:
        infotexts.append(create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, use_main_prompt=True))

    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)

    res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0], infotexts=infotexts)

    if p.scripts is not None:
        p.scripts.postprocess(p, res)

    return res
