"""Stand-in for what Forge's diffusion engines share (backend/diffusion_engine/base.py holds their base class,
left out here): how sd15.py and sdxl.py build each ``ClassicTextProcessingEngine`` — from the loaded
components, with the embeddings folder and the emphasis ``forge_model_reload`` put in ``dynamic_args``."""

from backend.args import dynamic_args
from backend.text_processing.classic_engine import ClassicTextProcessingEngine


def clip_engine(components, encoder, tokenizer, embedding_key, **settings):
    """``ClassicTextProcessingEngine`` over ``components[encoder]`` and ``components[tokenizer]``."""
    return ClassicTextProcessingEngine(
        text_encoder=components[encoder],
        tokenizer=components[tokenizer],
        embedding_dir=dynamic_args["embedding_dir"],
        embedding_key=embedding_key,
        emphasis_name=dynamic_args["emphasis_name"],
        **settings,
    )
