"""What the script file does once at load: install the conditioning wrapper, the X/Y/Z axes and the console
handler of our logger, say in the console what this WebUI lacks (:func:`.compat.report_layout`, again for each
loaded model), and register the removal/late registration with the WebUI's callbacks; and the accordion's
two readers of the library and the encoder, which must never break the txt2img tab."""

from __future__ import annotations

import html

from lib_magicnaming.webui import compat
from lib_magicnaming.webui.conditioning import make_wrapper
from lib_magicnaming.webui.hijack import AttributeHijack
from lib_magicnaming.webui.log import install_console_handler, log_skipped


def install_conditioning_hijack() -> AttributeHijack | None:
    """Wrap ``modules.prompt_parser.get_learned_conditioning``; the handle's ``remove`` undoes it. None when
    the WebUI has no such function (:func:`.compat.report_layout` says so)."""
    module = compat.conditioning_hook_module()
    if module is None:
        return None
    return AttributeHijack(module, compat.CONDITIONING_HOOK[1], make_wrapper).install()


def saved_identity_names() -> list[str]:
    """Names of the saved identities a prompt can use (broken files left out; empty when the library cannot be
    read: the UI must still build)."""
    try:
        from lib_magicnaming.webui import services
        from lib_magicnaming.webui.identity_check import check_library

        return [info.name for info in check_library(services.identity_library()).usable]
    except Exception as error:  # a broken library folder must not break the txt2img tab
        log_skipped("cannot list the saved identities (the accordion and X/Y/Z plot show none)", error)
        return []


def short_status(status) -> str:
    """A few words on the photo encoder for the accordion (its full status goes in the hover text)."""
    if not status.missing:
        state = "loaded" if status.loaded else "ready"
        return f"Photo encoder: {status.checkpoint} [{status.checkpoint_hash}], {state}"
    if status.checkpoint is None:
        return "Photo encoder: none installed (names, mixes and samples work without one)"
    return "Photo encoder: a package is missing (hover for details)"


def status_line() -> str:
    """One short line of HTML on the photo encoder; the full status (what is missing, the face detector)
    is its hover text. Neither names a server path."""
    from lib_magicnaming.webui.redact import client_message

    try:
        from lib_magicnaming.webui.encoder_cache import encoder_status

        status = encoder_status()
        text, details = short_status(status), status.summary()
    except Exception as error:  # the status line reports problems, it must never raise
        log_skipped("cannot read the encoder status", error)
        text, details = "MagicNaming encoder status unavailable (hover for details)", str(error)
    text, details = client_message(text), client_message(details)
    return (f"<span class='magicnaming-status' title='{html.escape(details, quote=True)}'>"
            f"{html.escape(text)}</span>")


def on_script_load() -> None:
    """Install the wrapper, undo it on script unload, and add the X/Y/Z axes before the UI is built."""
    from modules import script_callbacks

    from lib_magicnaming.webui import xyz

    install_console_handler()
    hijack = install_conditioning_hijack()
    if hijack is not None:
        script_callbacks.on_script_unloaded(hijack.remove)
    model = compat.peek_model()
    compat.report_layout(model if compat.is_loaded_model(model) else None)
    script_callbacks.on_model_loaded(compat.report_model_layout)
    script_callbacks.on_before_ui(lambda: xyz.register_axes(saved_identity_names))
