"""Stand-in for Forge's backend/text_processing/classic_engine.py (dfdcbab6; Forge Neo 283cb2c4 is the same
in what is mirrored here): ``ClassicTextProcessingEngine``, one per CLIP text encoder of a loaded model.

Kept as in the real file: the engine owns its ``EmbeddingDatabase`` (textual_inversion.py), read from the
embeddings folder when the engine is built; it wraps its encoder's token embedding in
``CLIPEmbeddingForTextualInversion``, which writes ``embedding.vec[<embedding_key>]`` (or ``vec`` itself) over
the placeholder slots of each fix; ``__call__`` appends the names of the embeddings it used to the
module-level ``last_extra_generation_params['TI']`` (which modules/processing.py copies into the infotext and
then resets) and returns ``(B, 77k, C)`` plus chunk 0's pooled output when ``return_pooled``;
``encode_with_transformers`` takes hidden layer ``-max(clip_skip, minimal_clip_skip)``.

The rest is v1.10.1's code in Forge too, so this stand-in runs the v1.10.1 stand-in's
(tests/webui_standin/modules/sd_hijack_clip.py): ``tokenize_line`` (emphasis parsing — Forge's
backend/text_processing/parsing.py is prompt_parser's function —, BREAK, 75-token chunks, comma back-tracking
that moves the tokens but leaves their fixes behind, a fix at ``len(chunk.tokens)`` followed by
``int(embedding.vectors)`` zero tokens), ``process_texts``, the chunk loop of ``__call__`` and
``process_tokens`` (padding after the first end token with ``id_pad``, then the emphasis: Forge's emphasis.py
"Original" and "None" are v1.10.1's arithmetic); and v1.10.1's sd_hijack.py ``EmbeddingsWithFixes`` is the
token-embedding wrapper. Where v1.10.1 reaches ``model_hijack``, the engine reaches its own database
(:class:`_OwnDatabase`). The comma back-tracking reads v1.10.1's option, whose default is Forge's fixed 20.
"""

import torch
from modules import load_v1_10_1, sd_hijack_clip

from backend.text_processing.textual_inversion import EmbeddingDatabase

PromptChunk = sd_hijack_clip.PromptChunk
PromptChunkFix = sd_hijack_clip.PromptChunkFix
last_extra_generation_params = {}
_v1_10_1_model = sd_hijack_clip.TextConditionalModel


class CLIPEmbeddingForTextualInversion(load_v1_10_1("sd_hijack").EmbeddingsWithFixes):
    """v1.10.1's ``EmbeddingsWithFixes`` (Forge casts a vector with ``.to(inputs_embeds)`` where v1.10.1 casts
    it to the U-Net's dtype: float32 both, here), with the wrapped layer's ``weight`` shown."""

    def __init__(self, wrapped, embeddings, textual_inversion_key="clip_l"):
        super().__init__(wrapped, embeddings, textual_inversion_key)
        self.weight = self.wrapped.weight


class _OwnDatabase:
    """What v1.10.1's chunking reaches through ``self.hijack``: here the engine's own database, which also
    carries each chunk's fixes to the engine's token-embedding wrapper."""

    def __init__(self, database):
        self.embedding_db = database

    @property
    def fixes(self):
        return self.embedding_db.fixes

    @fixes.setter
    def fixes(self, value):
        self.embedding_db.fixes = value


class ClassicTextProcessingEngine:
    empty_chunk = _v1_10_1_model.empty_chunk
    get_target_prompt_token_count = _v1_10_1_model.get_target_prompt_token_count
    tokenize_line = _v1_10_1_model.tokenize_line
    process_texts = _v1_10_1_model.process_texts
    encode_chunks = _v1_10_1_model.encode_chunks
    process_tokens = _v1_10_1_model.process_tokens

    def __init__(
        self,
        text_encoder,
        tokenizer,
        chunk_length=75,
        embedding_dir=None,
        embedding_key="clip_l",
        embedding_expected_shape=768,
        emphasis_name="Original",
        text_projection=False,
        minimal_clip_skip=1,
        clip_skip=1,
        return_pooled=False,
        final_layer_norm=True,
    ):
        self.embeddings = EmbeddingDatabase(tokenizer, embedding_expected_shape)

        if isinstance(embedding_dir, str):
            self.embeddings.add_embedding_dir(embedding_dir)
            self.embeddings.load_textual_inversion_embeddings()

        self.hijack = _OwnDatabase(self.embeddings)
        self.embedding_key = embedding_key

        self.text_encoder = text_encoder
        self.tokenizer = tokenizer

        self.text_projection = text_projection
        self.minimal_clip_skip = minimal_clip_skip
        self.clip_skip = clip_skip
        self.return_pooled = return_pooled
        self.final_layer_norm = final_layer_norm

        self.chunk_length = chunk_length

        self.id_start = self.tokenizer.bos_token_id
        self.id_end = self.tokenizer.eos_token_id
        self.id_pad = self.tokenizer.pad_token_id

        model_embeddings = text_encoder.transformer.text_model.embeddings
        model_embeddings.token_embedding = CLIPEmbeddingForTextualInversion(
            model_embeddings.token_embedding, self.embeddings, textual_inversion_key=embedding_key
        )

        vocab = self.tokenizer.get_vocab()
        self.comma_token = vocab.get(",</w>", None)

    def tokenize(self, texts):
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_with_transformers(self, tokens):
        outputs = self.text_encoder.transformer(tokens, output_hidden_states=True)

        layer_id = -max(self.clip_skip, self.minimal_clip_skip)
        z = outputs.hidden_states[layer_id]

        if self.final_layer_norm:
            z = self.text_encoder.transformer.text_model.final_layer_norm(z)

        if self.return_pooled:
            pooled_output = outputs.pooler_output

            if self.text_projection and self.embedding_key != "clip_l":
                pooled_output = self.text_encoder.transformer.text_projection(pooled_output)

            z.pooled = pooled_output
        return z

    def __call__(self, texts):
        batch_chunks, token_count = self.process_texts(texts)
        zs, used_embeddings = self.encode_chunks(batch_chunks)

        global last_extra_generation_params

        if used_embeddings:
            names = []

            for name in used_embeddings:
                names.append(name.replace(":", "").replace(",", ""))

            if "TI" in last_extra_generation_params:
                last_extra_generation_params["TI"] += ", " + ", ".join(names)
            else:
                last_extra_generation_params["TI"] = ", ".join(names)

        if self.return_pooled:
            return torch.hstack(zs), zs[0].pooled
        else:
            return torch.hstack(zs)
