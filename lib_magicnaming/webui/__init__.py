"""MagicNaming's glue to the Stable Diffusion WebUI (AUTOMATIC1111 v1.10.1).

The only part of the package that imports the WebUI's ``modules``, and then only inside functions, so every
module here imports (and most are testable) without a WebUI. The generation path:

* :mod:`.script_args` reads the AlwaysOn script's arguments (positional, or one dict from the API);
* :mod:`.generation` rewrites ``<name:...>`` tags in each prompt of a batch into marker text
  (:mod:`.markers`) in ``before_process_batch``, so the WebUI's conditioning cache is keyed by identity;
* :mod:`.conditioning`, installed by :mod:`.hijack` around ``modules.prompt_parser.get_learned_conditioning``,
  finds the markers and splices the identities into the conditioning the WebUI computed (in-place mode
  locates rows through a textual-inversion placeholder, :mod:`.embeddings`);
* :mod:`.infotext` and :mod:`.xyz` write and read the infotext and add X/Y/Z plot axes.

Making and managing identities: :mod:`.use_cases` holds every identity use case; the MagicNaming tab
(:mod:`.tab` lays it out, :mod:`.tab_actions` maps its events) and the REST API (:mod:`.api` maps requests
and errors to HTTP) both call it.

Hardening: :mod:`.limits` is the one table of limits on input that costs work, checked before any work and
before the queue lock; :mod:`.request_body` limits REST bodies by the bytes read; :mod:`.redact` takes server
paths out of every message a client gets; :mod:`.notes` puts what the UI shows under an image into the
API's ``info`` too; :mod:`.autocomplete` hands the prompt autocomplete its names through the UI's gradio
channel, leaving out broken identities (:mod:`.identity_check`).

Everything the adapter needs from the WebUI (identity library, photo encoder from :mod:`.encoder_cache`, the
loaded checkpoint's text encoders and tokenizer, the queue lock) comes in one bag,
:class:`.services.Services`. Settings and flags are read in :mod:`.options` only. Everything the adapter
logs goes to its one logger, ``logging.getLogger("magicnaming")``, printed the WebUI's way (:mod:`.log`).
"""
