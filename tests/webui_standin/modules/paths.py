"""Stand-in for modules/paths.py (and paths_internal.py): the WebUI's folders, under a temporary root."""

import os
import tempfile

script_path = os.path.join(tempfile.gettempdir(), "magicnaming-webui-standin")
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
