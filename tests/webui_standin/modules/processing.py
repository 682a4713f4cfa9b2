"""Stand-in for modules/processing.py (v1.10.1): the txt2img path a script's hooks and the conditioning see.

Kept as in the real file: the ``scripts``/``script_args`` setters that run the scripts' ``setup`` once both
are set (skipping UI-only ones when ``p.is_api``); seeds from ``get_fixed_seed``, a list taken as given;
``process_images_inner``'s hook order (before_process, setup_prompts, process, then
per batch: slice prompts, before_process_batch(prompts=p.prompts), parse_extra_network_prompts (strips every
``<word:...>`` tag), process_batch, setup_conds, sample (process_before_every_sampling), postprocess_batch,
prompts re-sliced from all_prompts, infotexts, postprocess); the persistent conditioning caches
(class-level ``[params, result]`` lists) with the real ``cached_params`` key; ``get_conds_with_caching``
calling ``prompt_parser.get_learned_conditioning`` / ``get_multicond_learned_conditioning`` looked up on
the module at call time; hires prompts sliced in ``parse_extra_network_prompts`` and their conds computed
with ``[cached_hr_c, cached_c]``. Sampling and decoding are replaced: the toy sampler records, per step,
the conditioning the real samplers would reconstruct (``p.sampler_log``), and images are blank.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch
from modules import devices, extra_networks, infotext_utils, prompt_parser, scripts, shared
from modules.sd_hijack import model_hijack
from modules.shared import opts, state
from PIL import Image

opt_C = 4
opt_f = 8


@dataclass
class SamplerCall:
    """What a sampler saw at one step: the pass, the step, AND structure, cond batch and uncond batch."""

    pass_name: str
    step: int
    conds_list: list
    cond: dict
    uncond: dict


class ToySampler:
    """Reconstructs the cond/uncond batch at every step exactly as the k-diffusion CFG denoiser does."""

    def sample(self, p, x, conditioning, unconditional_conditioning, steps, pass_name):
        for step in range(steps):
            conds_list, tensor = prompt_parser.reconstruct_multicond_batch(conditioning, step)
            uncond = prompt_parser.reconstruct_cond_batch(unconditional_conditioning, step)
            p.sampler_log.append(SamplerCall(pass_name, step, conds_list, tensor, uncond))
        return x


def get_fixed_seed(seed):
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except Exception:
            seed = -1

    if seed == -1:
        return int(random.randrange(4294967294))

    return seed


class StableDiffusionProcessing:
    cached_uc = [None, None]
    cached_c = [None, None]
    scripts_value = None
    script_args_value = None
    scripts_setup_complete = False
    is_api = False
    scheduler = None
    """v1.10.1's dataclass field ``scheduler: str = None`` (a field with a default is a class attribute)."""

    def __init__(
        self,
        prompt="",
        negative_prompt="",
        styles=None,
        seed=-1,
        subseed=-1,
        subseed_strength=0.0,
        batch_size=1,
        n_iter=1,
        steps=4,
        cfg_scale=7.0,
        width=64,
        height=64,
        sampler_name="Euler",
        override_settings=None,
        do_not_save_samples=True,
        **kwargs,
    ):
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.styles = styles or []
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = subseed_strength
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.width = width
        self.height = height
        self.sampler_name = sampler_name
        self.override_settings = override_settings or {}
        self.do_not_save_samples = do_not_save_samples
        for key, value in kwargs.items():
            setattr(self, key, value)

        self.scripts = None
        self.script_args = ()
        self.extra_generation_params = {}
        self.comments = {}
        self.disable_extra_networks = False
        self.extra_network_data = {}
        self.iteration = 0
        self.is_hr_pass = False
        self.sampler_log: list[SamplerCall] = []

        self.cached_uc = StableDiffusionProcessing.cached_uc
        self.cached_c = StableDiffusionProcessing.cached_c

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value

        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value

        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True

        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]

        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)

        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError(
                f"Received a different number of prompts ({len(self.all_prompts)}) and negative "
                f"prompts ({len(self.all_negative_prompts)})"
            )

        self.all_prompts = [
            shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_prompts
        ]
        self.all_negative_prompts = [
            shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles)
            for x in self.all_negative_prompts
        ]

        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def cached_params(
        self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False
    ):
        """Everything that invalidates the cond cache when changed."""
        return (
            required_prompts,
            steps,
            hires_steps,
            use_old_scheduling,
            opts.CLIP_stop_at_last_layers,
            shared.sd_model.sd_checkpoint_info,
            extra_network_data,
            opts.sdxl_crop_left,
            opts.sdxl_crop_top,
            self.width,
            self.height,
            opts.fp8_storage,
            opts.cache_fp16_weight,
            opts.emphasis,
        )

    def get_conds_with_caching(
        self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None
    ):
        """function(shared.sd_model, required_prompts, steps, ...) unless a cache holds the same params."""
        cached_params = self.cached_params(
            required_prompts, steps, extra_network_data, hires_steps, shared.opts.use_old_scheduling
        )

        for cache in caches:
            if cache[0] is not None and cached_params == cache[0]:
                return cache[1]

        cache = caches[0]

        with devices.autocast():
            cache[1] = function(
                shared.sd_model, required_prompts, steps, hires_steps, shared.opts.use_old_scheduling
            )

        cache[0] = cached_params
        return cache[1]

    def setup_conds(self):
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative_prompts = prompt_parser.SdConditioning(
            self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True
        )

        total_steps = self.steps
        self.step_multiplier = 1
        self.firstpass_steps = total_steps

        self.uc = self.get_conds_with_caching(
            prompt_parser.get_learned_conditioning,
            negative_prompts,
            total_steps,
            [self.cached_uc],
            self.extra_network_data,
        )
        self.c = self.get_conds_with_caching(
            prompt_parser.get_multicond_learned_conditioning,
            prompts,
            total_steps,
            [self.cached_c],
            self.extra_network_data,
        )

    def get_conds(self):
        return self.c, self.uc

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def close(self):
        if not opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]

    def __init__(
        self,
        enable_hr=False,
        hr_scale=2.0,
        hr_second_pass_steps=0,
        hr_prompt="",
        hr_negative_prompt="",
        hr_checkpoint_name=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.enable_hr = enable_hr
        self.hr_scale = hr_scale
        self.hr_second_pass_steps = hr_second_pass_steps
        self.hr_prompt = hr_prompt
        self.hr_negative_prompt = hr_negative_prompt
        self.hr_checkpoint_name = hr_checkpoint_name
        self.hr_checkpoint_info = None
        self.hr_c = None
        self.hr_uc = None
        self.all_hr_prompts = None
        self.all_hr_negative_prompts = None
        self.hr_extra_network_data = None
        self.cached_hr_uc = StableDiffusionProcessingTxt2Img.cached_hr_uc
        self.cached_hr_c = StableDiffusionProcessingTxt2Img.cached_hr_c

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.enable_hr:
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)

            if self.hr_prompt and self.hr_prompt != self.prompt:
                self.extra_generation_params["Hires prompt"] = get_hr_prompt
            if self.hr_negative_prompt and self.hr_negative_prompt != self.negative_prompt:
                self.extra_generation_params["Hires negative prompt"] = get_hr_negative_prompt

    def setup_prompts(self):
        super().setup_prompts()

        if not self.enable_hr:
            return

        if self.hr_prompt == "":
            self.hr_prompt = self.prompt

        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt

        if isinstance(self.hr_prompt, list):
            self.all_hr_prompts = self.hr_prompt
        else:
            self.all_hr_prompts = self.batch_size * self.n_iter * [self.hr_prompt]

        if isinstance(self.hr_negative_prompt, list):
            self.all_hr_negative_prompts = self.hr_negative_prompt
        else:
            self.all_hr_negative_prompts = self.batch_size * self.n_iter * [self.hr_negative_prompt]

        self.all_hr_prompts = [
            shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_hr_prompts
        ]
        self.all_hr_negative_prompts = [
            shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles)
            for x in self.all_hr_negative_prompts
        ]

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return

        hr_prompts = prompt_parser.SdConditioning(
            self.hr_prompts, width=self.hr_upscale_to_x, height=self.hr_upscale_to_y
        )
        hr_negative_prompts = prompt_parser.SdConditioning(
            self.hr_negative_prompts,
            width=self.hr_upscale_to_x,
            height=self.hr_upscale_to_y,
            is_negative_prompt=True,
        )

        steps = self.hr_second_pass_steps or self.steps
        total_steps = steps

        self.hr_uc = self.get_conds_with_caching(
            prompt_parser.get_learned_conditioning,
            hr_negative_prompts,
            self.firstpass_steps,
            [self.cached_hr_uc, self.cached_uc],
            self.hr_extra_network_data,
            total_steps,
        )
        self.hr_c = self.get_conds_with_caching(
            prompt_parser.get_multicond_learned_conditioning,
            hr_prompts,
            self.firstpass_steps,
            [self.cached_hr_c, self.cached_c],
            self.hr_extra_network_data,
            total_steps,
        )

    def setup_conds(self):
        if self.is_hr_pass:
            self.hr_c = None
            self.calculate_hr_conds()
            return

        super().setup_conds()

        self.hr_uc = None
        self.hr_c = None

        if self.enable_hr and self.hr_checkpoint_info is None:
            if shared.opts.hires_fix_use_firstpass_conds:
                self.calculate_hr_conds()
            else:
                with devices.autocast():
                    extra_networks.activate(self, self.hr_extra_network_data)

                self.calculate_hr_conds()

                with devices.autocast():
                    extra_networks.activate(self, self.extra_network_data)

    def get_conds(self):
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc

        return super().get_conds()

    def parse_extra_network_prompts(self):
        res = super().parse_extra_network_prompts()

        if self.enable_hr:
            self.hr_prompts = self.all_hr_prompts[
                self.iteration * self.batch_size : (self.iteration + 1) * self.batch_size
            ]
            self.hr_negative_prompts = self.all_hr_negative_prompts[
                self.iteration * self.batch_size : (self.iteration + 1) * self.batch_size
            ]

            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.hr_prompts)

        return res

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = ToySampler()
        x = torch.zeros((len(seeds), opt_C, self.height // opt_f, self.width // opt_f))

        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )

        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning, self.steps, "first")

        if not self.enable_hr:
            return samples

        return self.sample_hr_pass(samples, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, seeds, subseeds, subseed_strength, prompts):
        self.is_hr_pass = True
        self.sampler = ToySampler()

        if self.hr_c is None:
            self.calculate_hr_conds()

        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                self, x=samples, noise=samples, c=self.hr_c, uc=self.hr_uc
            )

        samples = self.sampler.sample(
            self, samples, self.hr_c, self.hr_uc, self.hr_second_pass_steps or self.steps, "hires"
        )
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img: the same prompts, hooks and conds as txt2img; sampling starts from the init images."""

    def __init__(self, init_images=None, denoising_strength=0.75, **kwargs):
        super().__init__(**kwargs)
        self.init_images = init_images or []
        self.denoising_strength = denoising_strength

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = ToySampler()
        x = torch.zeros((len(seeds), opt_C, self.height // opt_f, self.width // opt_f))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        steps = max(1, int(self.steps * self.denoising_strength))
        return self.sampler.sample(self, x, conditioning, unconditional_conditioning, steps, "img2img")


def get_hr_prompt(p, index, prompt_text, **kwargs):
    hr_prompt = p.all_hr_prompts[index]
    return hr_prompt if hr_prompt != prompt_text else None


def get_hr_negative_prompt(p, index, negative_prompt, **kwargs):
    hr_negative_prompt = p.all_hr_negative_prompts[index]
    return hr_negative_prompt if hr_negative_prompt != negative_prompt else None


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", all_prompts=None, infotexts=None):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width = p.width
        self.height = p.height
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.extra_generation_params = p.extra_generation_params
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = p.all_negative_prompts
        self.all_seeds = p.all_seeds
        self.infotexts = infotexts or [info] * len(images_list)

    def js(self):
        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0],
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "extra_generation_params": self.extra_generation_params,
            "infotexts": self.infotexts,
        }

        return json.dumps(obj, default=lambda o: None)


def create_infotext(
    p,
    all_prompts,
    all_seeds,
    all_subseeds,
    comments=None,
    iteration=0,
    position_in_batch=0,
    use_main_prompt=False,
    index=None,
    all_negative_prompts=None,
):
    """The parameters text of one image; extra_generation_params values may be str, list or callable."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size

    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts

    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]

    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model": shared.sd_model.sd_checkpoint_info.name_for_extra if opts.add_model_name_to_info else None,
        **p.extra_generation_params,
    }

    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            generation_params[key] = None

    generation_params_text = ", ".join(
        [
            k if k == v else f"{k}: {infotext_utils.quote(v)}"
            for k, v in generation_params.items()
            if v is not None
        ]
    )

    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""

    return f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)

    try:
        res = process_images_inner(p)
    finally:
        p.close()

    return res


class WebUIProcessing:
    """Where ``process_images_inner`` differs between the WebUIs: v1.10.1 here; the Forge stand-in
    (tests/forge_standin/modules/processing.py) runs the same function with its own."""

    def clear_notes(self, p) -> None:
        """Empty the comments and infotext entries the conditioning leaves for the image."""
        model_hijack.clear_comments()

    def notes(self, p) -> tuple[dict, list]:
        """(infotext entries, comments) the conditioning left."""
        return model_hijack.extra_generation_params, model_hijack.comments

    def batches_context(self):
        return torch.no_grad()

    def before_batch(self, p) -> None:
        pass


V1_10_1 = WebUIProcessing()


def process_images_inner(p: StableDiffusionProcessing, webui: WebUIProcessing = V1_10_1) -> Processed:
    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)

    webui.clear_notes(p)

    p.setup_prompts()

    if isinstance(seed, list):
        p.all_seeds = seed
    else:
        p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]

    if isinstance(subseed, list):
        p.all_subseeds = subseed
    else:
        p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]

    if p.scripts is not None:
        p.scripts.process(p)

    infotexts = []
    output_images = []
    with webui.batches_context():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)

        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n

            if state.interrupted or state.stopping_generation:
                break

            webui.before_batch(p)

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

            extra_generation_params, comments = webui.notes(p)
            p.extra_generation_params.update(extra_generation_params)

            for comment in comments:
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

            def infotext(index=0, use_main_prompt=False):
                return create_infotext(
                    p,
                    p.prompts,
                    p.seeds,
                    p.subseeds,
                    use_main_prompt=use_main_prompt,
                    index=index,
                    all_negative_prompts=p.negative_prompts,
                )

            for i, _x_sample in enumerate(x_samples_ddim):
                p.batch_index = i
                image = Image.new("RGB", (p.width, p.height))
                text = infotext(i)
                infotexts.append(text)
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
