"""Stand-in for Forge's backend/text_processing/textual_inversion.py (dfdcbab6; Forge Neo 283cb2c4 alike).

Each text engine owns an ``EmbeddingDatabase`` built with the engine's tokenizer:
``register_embedding_by_name(embedding, name)`` (no model argument, unlike v1.10.1) tokenizes the name and
files it under its first token id, longest first; ``None`` removes the name. ``load_textual_inversion_
embeddings()`` forgets every registration and reads the embeddings folders again (SDXL ``.safetensors``
files with ``clip_l``/``clip_g`` tensors here); ``find_embedding_at_position`` matches whole id sequences.
"""

import os

import safetensors.torch


class Embedding:
    def __init__(self, vec, name, step=None):
        self.vec = vec
        self.name = name
        self.step = step
        self.shape = None
        self.vectors = 0
        self.sd_checkpoint = None
        self.sd_checkpoint_name = None


class DirWithTextualInversionEmbeddings:
    def __init__(self, path):
        self.path = path
        self.mtime = None


class EmbeddingDatabase:
    def __init__(self, tokenizer, expected_shape=-1):
        self.ids_lookup = {}
        self.word_embeddings = {}
        self.embedding_dirs = {}
        self.skipped_embeddings = {}
        self.expected_shape = expected_shape
        self.tokenizer = tokenizer
        self.fixes = []

    def add_embedding_dir(self, path):
        self.embedding_dirs[path] = DirWithTextualInversionEmbeddings(path)

    def register_embedding(self, embedding):
        return self.register_embedding_by_name(embedding, embedding.name)

    def register_embedding_by_name(self, embedding, name):
        ids = self.tokenizer([name], truncation=False, add_special_tokens=False)["input_ids"][0]
        first_id = ids[0]
        if first_id not in self.ids_lookup:
            self.ids_lookup[first_id] = []
        if name in self.word_embeddings:
            lookup = [x for x in self.ids_lookup[first_id] if x[1].name != name]
        else:
            lookup = self.ids_lookup[first_id]
        if embedding is not None:
            lookup += [(ids, embedding)]
        self.ids_lookup[first_id] = sorted(lookup, key=lambda x: len(x[0]), reverse=True)
        if embedding is None:
            if name in self.word_embeddings:
                del self.word_embeddings[name]
            if len(self.ids_lookup[first_id]) == 0:
                del self.ids_lookup[first_id]
            return None
        self.word_embeddings[name] = embedding
        return embedding

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

    def find_embedding_at_position(self, tokens, offset):
        token = tokens[offset]
        possible_matches = self.ids_lookup.get(token, None)

        if possible_matches is None:
            return None, None

        for ids, embedding in possible_matches:
            if tokens[offset : offset + len(ids)] == ids:
                return embedding, len(ids)

        return None, None


def create_embedding_from_data(data, name, filename="unknown embedding file", filepath=None):
    """The SDXL branch of the real function: a dict of ``clip_l`` (n, 768) and ``clip_g`` (n, 1280)."""
    vec = {key: value.detach().to(dtype=value.dtype) for key, value in data.items()}
    embedding = Embedding(vec, name)
    embedding.shape = data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
    embedding.vectors = data["clip_g"].shape[0]
    embedding.filename = filepath
    return embedding
