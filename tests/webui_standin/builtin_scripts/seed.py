"""Stand-in for modules/processing_scripts/seed.py (v1.10.1): the txt2img Seed section is an AlwaysOn
``ScriptBuiltinUI`` whose ``setup`` sets ``p.seed`` (and variation seed) from its controls, for the UI only:
an API request keeps the seed it sent (``p.is_api`` skips it)."""

import gradio as gr
from modules import scripts


class ScriptSeed(scripts.ScriptBuiltinUI):
    section = "seed"
    create_group = False

    def title(self):
        return "Seed"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        seed = gr.Number(label="Seed", value=-1, precision=0)
        seed_checkbox = gr.Checkbox(label="Extra", value=False)
        subseed = gr.Number(label="Variation seed", value=-1, precision=0)
        subseed_strength = gr.Slider(label="Variation strength", value=0.0, minimum=0, maximum=1, step=0.01)
        seed_resize_from_w = gr.Slider(minimum=0, maximum=2048, step=8, label="Resize seed from width",
                                       value=0)
        seed_resize_from_h = gr.Slider(minimum=0, maximum=2048, step=8, label="Resize seed from height",
                                       value=0)
        return seed, seed_checkbox, subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h

    def setup(self, p, seed, seed_checkbox, subseed, subseed_strength, seed_resize_from_w,
              seed_resize_from_h):
        p.seed = seed

        if seed_checkbox and subseed_strength > 0:
            p.subseed = subseed
            p.subseed_strength = subseed_strength

        if seed_checkbox and seed_resize_from_w > 0 and seed_resize_from_h > 0:
            p.seed_resize_from_w = seed_resize_from_w
            p.seed_resize_from_h = seed_resize_from_h
