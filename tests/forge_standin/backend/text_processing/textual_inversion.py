"""Stand-in for Forge's backend/text_processing/textual_inversion.py (dfdcbab6; Forge Neo 283cb2c4 alike).

Each text engine owns an ``EmbeddingDatabase`` built with the engine's tokenizer:
``register_embedding_by_name(embedding, name)`` (no model argument, unlike v1.10.1) tokenizes the name and
files it under its first token id, longest first; ``None`` removes the name. ``load_textual_inversion_
embeddings()`` forgets every registration and reads the embeddings folders again (SDXL ``.safetensors``
files with ``clip_l``/``clip_g`` tensors here); ``find_embedding_at_position`` matches whole id sequences.
Filing and matching are v1.10.1's code in Forge too: this database is the v1.10.1 stand-in's with Forge's
constructor, tokenizer and folder reading.
"""

import os

import safetensors.torch
from modules.textual_inversion import textual_inversion as v1_10_1

Embedding = v1_10_1.Embedding
"""Forge's has the first seven of v1.10.1's fields (vec, name, step, shape, vectors, sd_checkpoint,
sd_checkpoint_name); v1.10.1's class is a superset."""


class DirWithTextualInversionEmbeddings:
    def __init__(self, path):
        self.path = path
        self.mtime = None


class EmbeddingDatabase(v1_10_1.EmbeddingDatabase):
    def __init__(self, tokenizer, expected_shape=-1):
        super().__init__()
        self.expected_shape = expected_shape
        self.tokenizer = tokenizer
        self.fixes = []

    def add_embedding_dir(self, path):
        self.embedding_dirs[path] = DirWithTextualInversionEmbeddings(path)

    def register_embedding(self, embedding):
        return self.register_embedding_by_name(embedding, embedding.name)

    def register_embedding_by_name(self, embedding, name):
        ids = self.tokenizer([name], truncation=False, add_special_tokens=False)["input_ids"][0]
        return self.register_ids(embedding, name, ids)

    def load_from_file(self, path, filename):
        name, ext = os.path.splitext(filename)
        if ext.upper() != ".SAFETENSORS":
            return
        data = safetensors.torch.load_file(path, device="cpu")
        embedding = create_embedding_from_data(data, name, filename=filename, filepath=path)
        if self.expected_shape == -1 or self.expected_shape == embedding.shape:
            self.register_embedding(embedding)
        else:
            self.skipped_embeddings[name] = embedding

    def load_from_dir(self, embdir):
        if not os.path.isdir(embdir.path):
            return
        for root, _, fns in os.walk(embdir.path, followlinks=True):
            for fn in fns:
                self.load_from_file(os.path.join(root, fn), fn)

    def load_textual_inversion_embeddings(self):
        self.ids_lookup.clear()
        self.word_embeddings.clear()
        self.skipped_embeddings.clear()

        for embdir in self.embedding_dirs.values():
            self.load_from_dir(embdir)


def create_embedding_from_data(data, name, filename="unknown embedding file", filepath=None):
    """The SDXL branch of the real function: a dict of ``clip_l`` (n, 768) and ``clip_g`` (n, 1280)."""
    vec = {key: value.detach().to(dtype=value.dtype) for key, value in data.items()}
    embedding = Embedding(vec, name)
    embedding.shape = data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
    embedding.vectors = data["clip_g"].shape[0]
    embedding.filename = filepath
    return embedding
