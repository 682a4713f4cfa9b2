"""Stand-in for modules/scripts.py (v1.10.1): ``Script``, ``basedir``, script loading and ``ScriptRunner``.

What the extension relies on is kept: scripts are imported from their file with the module name set to the
file's base name and the extension folder first on ``sys.path`` while loading; ``setup_ui`` calls ``ui()``
inside gradio Blocks, starting the argument list with the selectable-script index at position 0, and gives
each script its ``args_from:args_to`` slice; ``setup_scrips`` runs each AlwaysOn script's ``setup`` (but not
those of ``ScriptBuiltinUI``, the WebUI's own seed and sampler sections, for an API request); every hook runs
inside try/except that reports and carries on.
"""

import importlib.util
import os
import re
import sys
from collections import namedtuple
from dataclasses import dataclass

import gradio as gr
from modules import errors, paths

AlwaysVisible = object()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


@dataclass
class PostSampleArgs:
    samples: object


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def describe(self):
        return ""

    def elem_id(self, item_id):
        """Element id for a control: script_{tab_}{title}_{item_id}."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))

        return f"script_{tabname}{title}_{item_id}"


current_basedir = paths.script_path


class ScriptBuiltinUI(Script):
    """The WebUI's own sections written as scripts (seed, sampler): their ``setup`` runs for the UI only."""

    setup_for_ui_only = True


def basedir():
    """The folder of the extension whose script is being loaded (the WebUI's folder otherwise)."""
    return current_basedir


ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])

scripts_data = []


def load_module(path):
    """Import a script file as a module named by the file's base name (modules/script_loading.py)."""
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_script(path, script_basedir):
    """Load one script file the way load_scripts does and register its Script subclasses."""
    global current_basedir
    syspath = sys.path
    try:
        sys.path = [script_basedir] + sys.path
        current_basedir = script_basedir
        module = load_module(path)
        for script_class in module.__dict__.values():
            if (
                isinstance(script_class, type)
                and issubclass(script_class, Script)
                and script_class is not Script
            ):
                scripts_data.append(ScriptClassData(script_class, path, script_basedir, module))
        return module
    finally:
        sys.path = syspath
        current_basedir = paths.script_path


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.infotext_fields = []
        self.paste_field_names = []
        self.inputs = [None]

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()

        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"

            visibility = script.show(script.is_img2img)

            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)

        controls = script.ui(script.is_img2img)
        if controls is None:
            return

        script.name = script.title().lower()
        self.inputs += controls
        script.args_to = len(self.inputs)

        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names

    def setup_ui(self):
        """Build every script's controls inside gradio Blocks (as the txt2img/img2img tabs do)."""
        self.inputs = [None]
        with gr.Blocks():
            for script in self.scripts:
                self.create_script_ui(script)
        return self.inputs

    def ordered_scripts(self, attr_name):
        return self.alwayson_scripts

    def _run_hook(self, hook, p, *args, **kwargs):
        for script in self.ordered_scripts(hook):
            try:
                script_args = p.script_args[script.args_from : script.args_to]
                getattr(script, hook)(p, *args, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {hook}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._run_hook("before_process", p)

    def process(self, p):
        self._run_hook("process", p)

    def before_process_batch(self, p, **kwargs):
        self._run_hook("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._run_hook("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._run_hook("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._run_hook("process_before_every_sampling", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._run_hook("postprocess_batch", p, images=images, **kwargs)

    def post_sample(self, p, ps):
        self._run_hook("post_sample", p, ps)

    def postprocess(self, p, processed):
        self._run_hook("postprocess", p, processed)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.ordered_scripts("setup"):
            if not is_ui and script.setup_for_ui_only:
                continue

            try:
                script_args = p.script_args[script.args_from : script.args_to]
                script.setup(p, *script_args)
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def run(self, p, *args):
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from : script.args_to])


scripts_txt2img: ScriptRunner = None
scripts_img2img: ScriptRunner = None
