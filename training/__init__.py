"""MagicNaming training pipeline: from image-name pairs to an encoder checkpoint, on one GPU or many.

Runs without the WebUI: ``python -m training <stage> --help``. It reuses lib_magicnaming's model, checkpoint
format, face capture and name-space rule, so what it trains is exactly what the extension loads.
"""
