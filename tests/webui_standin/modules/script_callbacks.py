"""Stand-in for modules/script_callbacks.py: the callback registry and the callers the WebUI uses.

As in the real file, callbacks are grouped by kind; ``remove_current_script_callbacks`` and the
``script_unloaded_callback`` caller let tests play the WebUI's "reload scripts".
"""

import inspect
from collections import namedtuple

from modules import errors

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])

callback_map = {
    "callbacks_app_started": [],
    "callbacks_model_loaded": [],
    "callbacks_ui_tabs": [],
    "callbacks_ui_settings": [],
    "callbacks_before_ui": [],
    "callbacks_infotext_pasted": [],
    "callbacks_script_unloaded": [],
}


def _calling_script() -> str:
    for frame in inspect.stack()[2:]:
        if frame.filename != __file__:
            return frame.filename
    return "unknown"


def add_callback(callbacks, fun, *, name=None, category="unknown"):
    callbacks.append(ScriptCallback(_calling_script(), fun, name or category))


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def remove_current_script_callbacks():
    """Forget every callback registered from the calling script file (used on script reload)."""
    filename = _calling_script()
    for callback_list in callback_map.values():
        for callback_to_remove in [cb for cb in callback_list if cb.script == filename]:
            callback_list.remove(callback_to_remove)


def _run(kind, *args):
    results = []
    for c in callback_map[kind]:
        try:
            results.append(c.callback(*args))
        except Exception:
            errors.report(f"Error executing callback {kind} for {c.script}", exc_info=True)
    return results


def app_started_callback(demo, app):
    _run("callbacks_app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("callbacks_model_loaded", sd_model)


def ui_tabs_callback():
    res = []
    for tabs in _run("callbacks_ui_tabs"):
        res += tabs or []
    return res


def ui_settings_callback():
    _run("callbacks_ui_settings")


def before_ui_callback():
    _run("callbacks_before_ui")


def infotext_pasted_callback(infotext: str, params: dict):
    _run("callbacks_infotext_pasted", infotext, params)


def script_unloaded_callback():
    _run("callbacks_script_unloaded")


def on_app_started(callback, *, name=None):
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_before_ui(callback, *, name=None):
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")


def on_infotext_pasted(callback, *, name=None):
    add_callback(callback_map["callbacks_infotext_pasted"], callback, name=name, category="infotext_pasted")


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")
