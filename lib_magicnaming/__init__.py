"""MagicNaming: identities as points in SDXL's name space.

The core modules (everything except ``lib_magicnaming.webui``) never import the WebUI, so they run in tests,
in the training pipeline and in any other program.
"""
