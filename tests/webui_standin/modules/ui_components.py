"""Stand-in for modules/ui_components.py (gradio 3.41.2): InputAccordion, FormRow, ToolButton.

It also runs on gradio 4.40 by doing what Forge's modules/gradio_extensions.py does for these classes there:
``_js=`` reaches the event listener as ``js=`` (EventWrapper), and gradio 4 writes no ``.pyi`` file beside a
class marked ``webui_do_not_create_gradio_pyi_thank_you`` (gradio_component_meta_create_or_modify_pyi).
"""

import gradio as gr

GRADIO_3 = gr.__version__.startswith("3.")
EVENT_JS_KEYWORD = "_js" if GRADIO_3 else "js"


def _skip_pyi_for_webui_classes():
    import gradio.component_meta

    original = gradio.component_meta.create_or_modify_pyi
    if getattr(original, "skips_webui_classes", False):  # this module is imported afresh for every test
        return

    def create_or_modify_pyi(component_class, class_name, events):
        if not hasattr(component_class, "webui_do_not_create_gradio_pyi_thank_you"):
            original(component_class, class_name, events)

    create_or_modify_pyi.skips_webui_classes = True
    gradio.component_meta.create_or_modify_pyi = create_or_modify_pyi


if not GRADIO_3:
    _skip_pyi_for_webui_classes()


class FormComponent:
    webui_do_not_create_gradio_pyi_thank_you = True

    def get_expected_parent(self):
        return gr.components.Form


class ToolButton(FormComponent, gr.Button):
    """Small button with a single emoji as text."""

    def __init__(self, *args, **kwargs):
        classes = kwargs.pop("elem_classes", [])
        super().__init__(*args, elem_classes=["tool", *classes], **kwargs)

    def get_block_name(self):
        return "button"


class FormRow(FormComponent, gr.Row):
    def get_block_name(self):
        return "row"


class FormGroup(FormComponent, gr.Group):
    def get_block_name(self):
        return "group"


class InputAccordion(gr.Checkbox):
    """A gr.Accordion that can be used as an input: its value is the hidden checkbox's (open = True).

    Use it as a context manager for the accordion's contents and pass it as an input/script arg.
    """

    webui_do_not_create_gradio_pyi_thank_you = True
    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1

        kwargs_checkbox = {**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False}
        super().__init__(value, **kwargs_checkbox)

        on_change = 'function(checked){ inputAccordionChecked("' + self.accordion_id + '", checked); }'
        self.change(fn=None, inputs=[self], **{EVENT_JS_KEYWORD: on_change})

        kwargs_accordion = {
            **kwargs,
            "elem_id": self.accordion_id,
            "label": kwargs.get("label", "Accordion"),
            "elem_classes": ["input-accordion"],
            "open": value,
        }
        self.accordion = gr.Accordion(**kwargs_accordion)

    def extra(self):
        """A column in the accordion's title bar for extra controls."""
        return gr.Column(
            elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0
        )

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"
