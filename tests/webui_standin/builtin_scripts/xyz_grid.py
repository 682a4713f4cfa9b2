"""Stand-in for scripts/xyz_grid.py (v1.10.1): ``AxisOption`` and the ``axis_options`` list extensions extend.

The WebUI loads this file as a module named ``xyz_grid.py``; extensions find it through
``modules.scripts.scripts_data`` and append their own AxisOption. Each grid cell is a shallow ``copy(p)`` with
every axis's ``apply(pc, value, values)`` called before ``process_images`` (``cell`` in the real file).
"""

from copy import copy

from modules import processing, scripts


def format_value_add_label(p, opt, x):
    if isinstance(x, float):
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_value(p, opt, x):
    if isinstance(x, float):
        x = round(x, 8)
    return x


def do_nothing(p, x, xs):
    pass


def format_nothing(p, opt, x):
    return ""


def apply_prompt(p, x, xs):
    if xs[0] not in p.prompt and xs[0] not in p.negative_prompt:
        raise RuntimeError(f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")
    p.prompt = p.prompt.replace(xs[0], x)
    p.negative_prompt = p.negative_prompt.replace(xs[0], x)


class AxisOption:
    def __init__(
        self,
        label,
        type,
        apply,
        format_value=format_value_add_label,
        confirm=None,
        cost=0.0,
        choices=None,
        prepare=None,
    ):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value),
]


def process_axis(p, label, values):
    """One Processed per value of the axis called ``label``: the cells of a one-axis grid."""
    axis = next(opt for opt in axis_options if opt.label == label)
    values = [axis.type(v) for v in values]
    if axis.confirm:
        axis.confirm(p, values)
    results = []
    for value in values:
        pc = copy(p)
        pc.styles = pc.styles[:]
        axis.apply(pc, value, values)
        results.append(processing.process_images(pc))
    return results


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"
