"""The targets' text encoding agrees with an independent, step-by-step re-implementation of WebUI v1.10.1.

The reference below follows modules/sd_hijack_clip.py (tokenize_line with PromptChunk/next_chunk and comma
back-tracking, process_tokens' id_pad rewrite, emphasis "Original" with its mean restoration),
modules/sd_hijack_open_clip.py (id_pad = 0 for bigG), and sgm's encoders (FrozenCLIPEmbedder layer="hidden",
layer_idx = blocks - 1 (11 of 12 for SDXL), read from hidden_states without final_layer_norm;
FrozenOpenCLIPEmbedder2 layer="penultimate": the input of the last block, no ln_final), on tiny random towers.
"""

from __future__ import annotations

import pytest
import torch
from open_clip.tokenizer import _tokenizer
from training_fixtures import hf_clip_text_state

from training.text_encoders import (
    SDXL_CLIP_G,
    SDXL_CLIP_L,
    SDXLTextEncoder,
    hidden_before_last_block,
    load_text_tower,
    tiny_spec,
    tokenize_line,
)


class _Chunk:
    def __init__(self):
        self.tokens, self.multipliers = [], []


def webui_tokenize_line(line: str, id_start: int, id_end: int, comma_token: int, backtrack: int = 20):
    """sd_hijack_clip.TextConditionalModel.tokenize_line for text without emphasis or embeddings."""
    chunk_length = 75
    parsed = [[line, 1.0]]  # prompt_parser.parse_prompt_attention of text without ( [ : BREAK
    tokenized = [_tokenizer.encode(text) for text, _ in parsed]
    chunks, chunk, last_comma = [], _Chunk(), -1

    def next_chunk():
        nonlocal chunk, last_comma
        to_add = chunk_length - len(chunk.tokens)
        if to_add > 0:
            chunk.tokens += [id_end] * to_add
            chunk.multipliers += [1.0] * to_add
        chunk.tokens = [id_start] + chunk.tokens + [id_end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
        last_comma = -1
        chunks.append(chunk)
        chunk = _Chunk()

    for tokens, (_text, weight) in zip(tokenized, parsed, strict=False):
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma_token:
                last_comma = len(chunk.tokens)
            elif (
                backtrack != 0
                and len(chunk.tokens) == chunk_length
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= backtrack
            ):
                break_location = last_comma + 1
                reloc_tokens = chunk.tokens[break_location:]
                reloc_mults = chunk.multipliers[break_location:]
                chunk.tokens = chunk.tokens[:break_location]
                chunk.multipliers = chunk.multipliers[:break_location]
                next_chunk()
                chunk.tokens, chunk.multipliers = reloc_tokens, reloc_mults
            if len(chunk.tokens) == chunk_length:
                next_chunk()
            chunk.tokens.append(token)
            chunk.multipliers.append(weight)
            position += 1
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks


def _layout(tower):
    """sgm permutes to (L, N, D) for open_clip 2.x's blocks; open_clip 3.x's blocks are batch-first."""
    if getattr(tower.transformer, "batch_first", False):
        return lambda x: x
    return lambda x: x.permute(1, 0, 2)


def hf_style_hidden_states(tower, tokens):
    """CLIPTextModel(output_hidden_states=True).hidden_states: embeddings, then every block's output."""
    swap = _layout(tower)
    x = tower.token_embedding(tokens) + tower.positional_embedding
    x = swap(x)
    states = [swap(x)]
    for block in tower.transformer.resblocks:
        x = block(x, attn_mask=tower.attn_mask)
        states.append(swap(x))
    return states


def sgm_text_transformer_forward(tower, tokens):
    """FrozenOpenCLIPEmbedder2.encode_with_transformer (legacy=False): {'penultimate', 'last'}."""
    swap = _layout(tower)
    x = tower.token_embedding(tokens) + tower.positional_embedding
    x = swap(x)  # NLD -> LND on open_clip 2.x
    outputs = {}
    blocks = tower.transformer.resblocks
    for i, r in enumerate(blocks):
        if i == len(blocks) - 1:
            outputs["penultimate"] = swap(x)
        x = r(x, attn_mask=tower.attn_mask)
    outputs["last"] = swap(x)
    return outputs


def emphasis_original(z, multipliers):
    """sd_emphasis.EmphasisOriginal.after_transformers."""
    original_mean = z.mean()
    z = z * multipliers.reshape(multipliers.shape + (1,))
    new_mean = z.mean()
    return z * (original_mean / new_mean)


def webui_process_tokens(batch_tokens, batch_multipliers, encode, id_end, id_pad):
    """TextConditionalModel.process_tokens."""
    tokens = torch.asarray(batch_tokens)
    if id_end != id_pad:
        for batch_pos in range(len(batch_tokens)):
            index = batch_tokens[batch_pos].index(id_end)
            tokens[batch_pos, index + 1 : tokens.shape[1]] = id_pad
    z = encode(tokens)
    return emphasis_original(z, torch.asarray(batch_multipliers))


def webui_encode(texts, clip_l, clip_g):
    """GeneralConditioner: each embedder's TextConditionalModel.forward, concatenated on the width axis."""
    start, end = _tokenizer.encoder["<start_of_text>"], _tokenizer.encoder["<end_of_text>"]
    comma = _tokenizer.encoder[",</w>"]
    layer_idx = len(clip_l.transformer.resblocks) - 1  # SDXL: layer_idx=11 with 12 blocks

    def encode_l(tokens):
        return hf_style_hidden_states(clip_l, tokens)[layer_idx]

    def encode_g(tokens):
        return sgm_text_transformer_forward(clip_g, tokens)["penultimate"]

    results = []
    for encode, id_pad in ((encode_l, end), (encode_g, 0)):
        batch_chunks = [webui_tokenize_line(t, start, end, comma) for t in texts]
        chunk_count = max(len(x) for x in batch_chunks)
        zs = []
        for i in range(chunk_count):
            empty = _Chunk()
            empty.tokens, empty.multipliers = [start] + [end] * 76, [1.0] * 77
            batch_chunk = [c[i] if i < len(c) else empty for c in batch_chunks]
            zs.append(
                webui_process_tokens(
                    [x.tokens for x in batch_chunk], [x.multipliers for x in batch_chunk], encode, end, id_pad
                )
            )
        results.append(torch.hstack(zs))
    return torch.cat(results, dim=2)


@pytest.fixture(scope="module")
def tiny_towers():
    clip_l = load_text_tower(tiny_spec(SDXL_CLIP_L, width=32, layers=3), random_seed=1)
    clip_g = load_text_tower(tiny_spec(SDXL_CLIP_G, width=48, layers=3), random_seed=2)
    return clip_l, clip_g


LONG = ("portrait of a person, " * 14) + "with a hat, standing near the sea at sunset, dramatic light"
TEXTS = ["Tom Hanks", "Beyoncé Knowles", LONG]


def test_encoding_matches_the_webui_reference(tiny_towers):
    clip_l, clip_g = tiny_towers
    ours = SDXLTextEncoder(
        [
            (tiny_spec(SDXL_CLIP_L, width=32, layers=3), clip_l),
            (tiny_spec(SDXL_CLIP_G, width=48, layers=3), clip_g),
        ]
    ).encode(TEXTS)
    with torch.no_grad():
        reference = webui_encode(TEXTS, clip_l, clip_g)
    assert ours.shape == reference.shape == (3, 77 * 2, 32 + 48)
    torch.testing.assert_close(ours, reference.float(), rtol=1e-5, atol=1e-5)


def test_long_prompts_chunk_with_comma_backtracking():
    start, end, comma = (_tokenizer.encoder[k] for k in ("<start_of_text>", "<end_of_text>", ",</w>"))
    ours = tokenize_line(LONG)
    reference = [c.tokens for c in webui_tokenize_line(LONG, start, end, comma)]
    assert ours == reference
    assert ours[0][-2] == end, "the first chunk was cut at a comma and padded"


def test_padding_and_layer_choice_matter(tiny_towers):
    """The reference would catch a wrong pad id or a wrong layer: both change the output."""
    clip_l, clip_g = tiny_towers
    tokens = torch.tensor([tokenize_line("Tom Hanks")[0]])
    with torch.no_grad():
        zero_padded = hidden_before_last_block(clip_g, tokens, pad_with_end_token=False)
        end_padded = hidden_before_last_block(clip_g, tokens, pad_with_end_token=True)
        final = sgm_text_transformer_forward(clip_g, tokens)["last"]
    assert not torch.allclose(zero_padded[:, 4:], end_padded[:, 4:])
    torch.testing.assert_close(
        zero_padded[:, :4], end_padded[:, :4]
    )  # causal: rows up to the end token agree
    assert not torch.allclose(zero_padded, final)


def test_missing_weights_name_the_file(tmp_path):
    from training.common import TrainingError

    with pytest.raises(TrainingError, match="clip_g text-encoder weights not found: .*nope.safetensors"):
        load_text_tower(tiny_spec(SDXL_CLIP_G, width=16), weights=tmp_path / "nope.safetensors")
    with pytest.raises(TrainingError, match="no weights for the clip_l text encoder"):
        load_text_tower(SDXL_CLIP_L)


def test_weights_load_from_an_open_clip_safetensors_file(tmp_path, tiny_towers):
    from safetensors.torch import save_file

    clip_l, _ = tiny_towers
    state = {f"text.{k}": v.contiguous() for k, v in clip_l.state_dict().items()}
    state["visual.proj"] = torch.zeros(2)
    save_file(state, str(tmp_path / "clip_l.safetensors"))
    loaded = load_text_tower(
        tiny_spec(SDXL_CLIP_L, width=32, layers=3), weights=tmp_path / "clip_l.safetensors"
    )
    tokens = torch.tensor([tokenize_line("Ada Lovelace")[0]])
    with torch.no_grad():
        torch.testing.assert_close(
            hidden_before_last_block(loaded, tokens, True), hidden_before_last_block(clip_l, tokens, True)
        )


def test_targets_are_rows_1_to_8_of_the_webui_encoding_and_skip_prompt_syntax(tmp_path, tiny_towers):
    from training.common import SkipReport
    from training.targets import build_targets, load_targets, save_targets

    clip_l, clip_g = tiny_towers
    encoder = SDXLTextEncoder(
        [
            (tiny_spec(SDXL_CLIP_L, width=32, layers=3), clip_l),
            (tiny_spec(SDXL_CLIP_G, width=48, layers=3), clip_g),
        ]
    )
    report = SkipReport("targets")
    targets = build_targets(
        encoder, ["Ada Lovelace", "Prince (musician)", "Alan Turing"], report, batch_size=1
    )
    assert report.skipped == [{"item": "Prince (musician)", "reason": "holds WebUI prompt syntax '('"}]
    save_targets(tmp_path / "t.safetensors", targets)
    loaded = load_targets(tmp_path / "t.safetensors")
    assert loaded.names == ["Ada Lovelace", "Alan Turing"] and loaded.f_id.shape == (2, 8, 80)
    with torch.no_grad():
        reference = webui_encode(["Ada Lovelace", "Alan Turing"], clip_l, clip_g)
    torch.testing.assert_close(loaded.f_id, reference[:, 1:9], rtol=1e-5, atol=1e-5)
    assert loaded.towers[0]["name"] == "clip_l" and loaded.towers[1]["pad_with_end_token"] is False


def test_targets_stage_needs_weights(tmp_path, capsys):
    from training.cli import main

    (tmp_path / "names.csv").write_text("name,count\nAda Lovelace,1\n")
    code = main(
        [
            "targets",
            "--names",
            str(tmp_path / "names.csv"),
            "--clip-l-weights",
            str(tmp_path / "l.st"),
            "--out",
            str(tmp_path / "t.safetensors"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and "clip_l text-encoder weights not found" in capsys.readouterr().err


def test_text_encoders_load_from_an_sdxl_checkpoint(tmp_path, tiny_towers):
    from safetensors.torch import save_file

    from training.targets import load_sdxl_text_encoder
    from training.text_encoders import SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX

    clip_l, clip_g = tiny_towers
    tensors = {SDXL_CLIP_L_PREFIX + k: v.contiguous() for k, v in hf_clip_text_state(clip_l).items()}
    tensors.update({SDXL_CLIP_G_PREFIX + k: v.contiguous() for k, v in clip_g.state_dict().items()})
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "sdxl.safetensors"))
    specs = [tiny_spec(SDXL_CLIP_L, width=32, layers=3), tiny_spec(SDXL_CLIP_G, width=48, layers=3)]
    loaded = load_sdxl_text_encoder(specs, [None, None], sdxl_checkpoint=str(tmp_path / "sdxl.safetensors"))
    expected = SDXLTextEncoder(list(zip(specs, tiny_towers, strict=True))).encode(TEXTS)
    torch.testing.assert_close(loaded.encode(TEXTS), expected)
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(tmp_path / "unet-only.safetensors"))
    from training.common import TrainingError

    with pytest.raises(TrainingError, match="holds no SDXL text encoders"):
        load_sdxl_text_encoder(specs, [None, None], sdxl_checkpoint=str(tmp_path / "unet-only.safetensors"))
