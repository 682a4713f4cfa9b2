"""The names the prompt autocomplete offers, delivered through the UI's own gradio channel.

The accordion holds a hidden textbox (``script_<tab>_magicnaming_names``) whose value is :func:`payload`'s
JSON, and a hidden button (``script_<tab>_magicnaming_names_refresh``) that refills it; the page's
JavaScript reads the textbox and clicks the button when its copy is old. So the list reaches whoever uses
the UI, under the UI's own login (``--gradio-auth``) and without the REST API: under ``--api-auth`` the
browser has no API credentials, and without ``--api`` no REST route is served at all.

Only identities that a prompt can use are offered (:mod:`.identity_check`); broken files are left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lib_magicnaming.webui.identity_check import CheckedListing
from lib_magicnaming.webui.options import AUTOCOMPLETE_MATCHES

MATCH_PREFIX = AUTOCOMPLETE_MATCHES[0]


def payload(listing: CheckedListing, match: str = MATCH_PREFIX) -> str:
    """The JSON the page reads: ``{"names": [...usable names...], "match": "prefix"|"anywhere"}``."""
    return json.dumps({
        "names": [info.name for info in listing.usable],
        "match": match if match in AUTOCOMPLETE_MATCHES else MATCH_PREFIX,
    })


def webui_payload() -> str:
    """:func:`payload` for the running WebUI's library and setting (an empty list when the library cannot be
    read: the prompt boxes must keep working)."""
    from lib_magicnaming.webui.identity_check import check_library
    from lib_magicnaming.webui.log import log_skipped
    from lib_magicnaming.webui.options import current_settings
    from lib_magicnaming.webui.services import identity_library

    try:
        settings = current_settings()
        return payload(check_library(identity_library(settings)), settings.autocomplete_match)
    except Exception as error:  # a broken library folder or setting must not break the txt2img tab
        log_skipped("cannot list the identities for the prompt autocomplete", error)
        return payload(CheckedListing([], []))


def build_names_channel(gr: Any, elem_id: Callable[[str], str], names: Callable[[], str]) -> tuple[Any, Any]:
    """The hidden textbox holding :func:`payload` and the hidden button that refills it, in the current
    Blocks; returns (textbox, button)."""
    textbox = gr.Textbox(value=names(), visible=False, elem_id=elem_id("names"))
    textbox.do_not_save_to_config = True  # the WebUI's ui-config.json must never restore a stale list
    button = gr.Button(visible=False, elem_id=elem_id("names_refresh"))
    button.click(fn=names, inputs=[], outputs=[textbox])
    return textbox, button
