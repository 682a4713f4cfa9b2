"""MagicNaming's app-level callbacks: REST routes, the MagicNaming tab and the Settings section.

Thin on purpose: everything lives in ``lib_magicnaming.webui``. The AlwaysOn script (the accordion under the
prompt) is ``scripts/magicnaming.py``. Nothing imported here needs open_clip or insightface, so a failed
install step still leaves a working tab that explains what is missing.
"""

from modules import script_callbacks

from lib_magicnaming.webui import api, log, options, tab

log.install_console_handler()
script_callbacks.on_app_started(api.on_app_started)
script_callbacks.on_ui_tabs(tab.on_ui_tabs)
script_callbacks.on_ui_settings(options.on_ui_settings)
