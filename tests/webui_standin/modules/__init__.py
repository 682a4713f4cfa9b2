"""Stand-in for the WebUI's ``modules`` package (AUTOMATIC1111 stable-diffusion-webui v1.10.1).

Each file mirrors the real file of the same name, reduced to what MagicNaming touches, written from reading
the real code (never copied). Behaviour that matters to the extension is kept: hook order, the conditioning
cache and its key, prompt scheduling, AND, BREAK, emphasis, textual-inversion fixes, API argument copying.
"""
