"""MagicNaming's AlwaysOn script: the accordion under the prompt and the per-batch hooks.

Thin on purpose: the work lives in lib_magicnaming.webui (generation, conditioning, markers, infotext, xyz).
"""

from modules import scripts

from lib_magicnaming.webui import autocomplete, generation, infotext, setup
from lib_magicnaming.webui.accordion import build_accordion

setup.on_script_load()


class MagicNamingScript(scripts.Script):
    """``<name:alice>`` in prompts: identities spliced into SDXL's conditioning."""

    services = None
    """A :class:`lib_magicnaming.webui.services.Services`; None means the running WebUI's."""

    def title(self):
        return "MagicNaming"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        controls = build_accordion(
            self.elem_id, setup.saved_identity_names, setup.status_line, autocomplete.webui_payload
        )
        self.infotext_fields = infotext.paste_fields(controls.enabled, controls.mode, controls.strength)
        self.paste_field_names = [infotext.INFOTEXT_KEY]
        return controls.args

    def process(self, p, *args):
        generation.start_generation(p, args)

    def before_process_batch(self, p, *args, batch_number=0, prompts=None, **kwargs):
        generation.rewrite_batch(
            p, args, batch_number, p.prompts if prompts is None else prompts, self.services
        )

    def postprocess_batch(self, p, *args, batch_number=0, **kwargs):
        generation.finish_batch(p, batch_number)
