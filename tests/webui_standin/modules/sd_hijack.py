"""Stand-in for modules/sd_hijack.py: ``model_hijack`` (embedding database, fixes, comments) and
``EmbeddingsWithFixes``, which writes textual-inversion vectors over the placeholder tokens' input
embeddings (the fix at ``offset`` fills positions offset+1 .. offset+len: position 0 is the start token).
"""

import torch
from modules import devices
from modules.textual_inversion import textual_inversion


class StableDiffusionModelHijack:
    fixes = None
    layers = None
    circular_enabled = False

    def __init__(self):
        self.embedding_db = textual_inversion.EmbeddingDatabase()
        self.comments = []
        self.extra_generation_params = {}

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}

    def apply_circular(self, enable):
        self.circular_enabled = enable


class EmbeddingsWithFixes(torch.nn.Module):
    def __init__(self, wrapped, embeddings, textual_inversion_key="clip_l"):
        super().__init__()
        self.wrapped = wrapped
        self.embeddings = embeddings
        self.textual_inversion_key = textual_inversion_key

    def forward(self, input_ids):
        batch_fixes = self.embeddings.fixes
        self.embeddings.fixes = None

        inputs_embeds = self.wrapped(input_ids)

        if batch_fixes is None or len(batch_fixes) == 0 or max([len(x) for x in batch_fixes]) == 0:
            return inputs_embeds

        vecs = []
        for fixes, tensor in zip(batch_fixes, inputs_embeds, strict=False):
            for offset, embedding in fixes:
                vec = (
                    embedding.vec[self.textual_inversion_key]
                    if isinstance(embedding.vec, dict)
                    else embedding.vec
                )
                emb = devices.cond_cast_unet(vec)
                emb_len = min(tensor.shape[0] - offset - 1, emb.shape[0])
                tensor = torch.cat(
                    [tensor[0 : offset + 1], emb[0:emb_len], tensor[offset + 1 + emb_len :]]
                ).to(dtype=inputs_embeds.dtype)

            vecs.append(tensor)

        return torch.stack(vecs)


model_hijack = StableDiffusionModelHijack()
