"""Stand-in for Forge's ``backend`` package (lllyasviel/stable-diffusion-webui-forge dfdcbab6): the SDXL text
path (backend/diffusion_engine/sdxl.py, backend/text_processing/) and what it is built from. The neural
networks are the toys of tests/forge_standin/toy_forge_sdxl.py."""
