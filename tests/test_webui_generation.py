"""txt2img through each WebUI stand-in's real hook order with MagicNaming loaded: what reaches the sampler.

Every test runs in the v1.10.1 stand-in and in the Forge stand-in (Forge's SDXL text engines, lazy model
loading, inference mode, comments and TI infotext on the model); tests/test_webui_forge.py has what only
Forge and Forge Neo do.
"""

import pytest
import torch
from webui_standin import FORGE, V1_10_1, webui_for
from webui_standin.extension import build_extension, save_identity

from lib_magicnaming.errors import MagicNamingError


@pytest.fixture(params=[V1_10_1, FORGE])
def magicnaming(request, tmp_path):
    """MagicNaming loaded into the stand-in of each WebUI in turn."""
    with webui_for(request.param) as webui:
        yield build_extension(webui, tmp_path / "identities")


def first_cond(p, pass_name="first", step=0, item=0):
    call = next(c for c in p.sampler_log if c.pass_name == pass_name and c.step == step)
    index = call.conds_list[item][0][0]
    return {key: value[index] for key, value in call.cond.items()}, call


def assert_prepended(cond, base, f_id):
    """Row 0 is the prompt's, rows 1..8 the identity, rows 9..76 the prompt's rows 1..68; vector untouched."""
    crossattn = cond["crossattn"]
    assert torch.equal(crossattn[0], base["crossattn"][0])
    assert torch.equal(crossattn[1:9], f_id)
    assert torch.equal(crossattn[9:77], base["crossattn"][1:69])
    assert torch.equal(cond["vector"], base["vector"])


def test_prepend_puts_the_identity_after_the_start_row_and_leaves_the_negative_prompt(magicnaming):
    p, processed = magicnaming.run("a photo of <name:alice> hiking", "blurry")
    cond, call = first_cond(p)
    assert_prepended(cond, magicnaming.encode("a photo of hiking"), magicnaming.alice)
    assert torch.equal(call.uncond["crossattn"][0], magicnaming.encode("blurry", negative=True)["crossattn"])
    assert processed.infotexts[0].startswith("a photo of <name:alice> hiking\nNegative prompt: blurry\n")
    short_hash = magicnaming.library.get_info("alice").short_hash
    assert f'MagicNaming: "alice:{short_hash}, mode: prepend, strength: 1.0"' in processed.infotexts[0]


def test_a_tag_in_the_negative_prompt_goes_into_the_negative_conditioning(magicnaming):
    p, _ = magicnaming.run("a cat", "<name:bob>, blurry")
    cond, call = first_cond(p)
    assert torch.equal(cond["crossattn"], magicnaming.encode("a cat")["crossattn"])
    uncond = {key: value[0] for key, value in call.uncond.items()}
    assert_prepended(uncond, magicnaming.encode(", blurry", negative=True), magicnaming.bob)


def test_strength_from_the_tag_then_the_accordion(magicnaming):
    p, processed = magicnaming.run("<name:alice:0.5> smiling", args=(True, "prepend", 1.5))
    cond, _ = first_cond(p)
    crossattn = cond["crossattn"]
    assert not torch.allclose(crossattn[1:9], magicnaming.alice)
    assert torch.allclose(
        crossattn[1:9, :768] / magicnaming.alice[:, :768],
        (crossattn[1, 0] / magicnaming.alice[0, 0]).expand(8, 768),
        atol=1e-4,
    )
    p2, _ = magicnaming.run("<name:alice> smiling", args=(True, "prepend", 0.5))
    assert torch.allclose(first_cond(p2)[0]["crossattn"], crossattn)
    assert "strength: 1.5" in processed.infotexts[0]


def test_in_place_rows_are_where_the_webui_tokenizer_put_the_placeholder(magicnaming):
    p, processed = magicnaming.run("a photo of <name:alice> hiking", args=(True, "in place"))
    crossattn = first_cond(p)[0]["crossattn"]
    assert torch.equal(crossattn[4:12], magicnaming.alice)
    assert torch.equal(crossattn[0:4], magicnaming.encode("a photo of")["crossattn"][0:4])
    assert not torch.equal(crossattn[12], magicnaming.alice[-1])
    assert "mode: in place" in processed.infotexts[0]


def test_in_place_placeholders_leave_the_embedding_databases_as_they_were(magicnaming):
    # Left behind, they would reach the Textual Inversion extra-networks page, which needs a file name
    # (modules/ui_extra_networks_textual_inversion.py: os.path.splitext(embedding.filename)).
    magicnaming.webui.model()
    databases = magicnaming.webui.embedding_databases()
    assert len(databases) == (1 if magicnaming.webui.kind == "v1.10.1" else 2)

    def contents():
        return [
            (dict(db.word_embeddings), {k: list(v) for k, v in db.ids_lookup.items()}) for db in databases
        ]

    before = contents()
    p, _ = magicnaming.run("a photo of <name:alice> and <name:bob> hiking", args=(True, "in place"))
    cond, _ = first_cond(p)
    assert torch.equal(cond["crossattn"][4:12], magicnaming.alice)
    assert contents() == before


def test_in_place_rows_across_long_prompts_break_and_emphasis(magicnaming):
    filler = " ".join(["word"] * 80)
    prompt = f"{filler} <name:alice> end BREAK x (<name:bob:0.9>:1.3) y"
    p, _ = magicnaming.run(prompt, args=(True, "in place"))
    crossattn = first_cond(p)[0]["crossattn"]
    assert crossattn.shape[0] == 3 * 77
    # chunk 1 holds words 76..80 then alice (offset 5); BREAK starts chunk 2: "x" then bob (offset 1)
    assert torch.equal(crossattn[77 + 6 : 77 + 14], magicnaming.alice)
    bob_rows = crossattn[154 + 2 : 154 + 10]
    assert not torch.equal(bob_rows, magicnaming.bob)
    ratio = bob_rows[:, 768:] / magicnaming.bob[:, 768:]
    assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio), atol=1e-4)


def test_in_place_follows_a_placeholder_moved_by_comma_back_tracking(magicnaming):
    # 66 words and a comma fill 67 slots, the placeholder the last 8; the next word makes v1.10.1 move the
    # text after the comma (the placeholder) into chunk 1 while its fix stays behind in chunk 0
    prompt = " ".join(["word"] * 66) + ", <name:alice> end"
    p, _ = magicnaming.run(prompt, args=(True, "in place"))
    crossattn = first_cond(p)[0]["crossattn"]
    assert torch.equal(crossattn[78:86], magicnaming.alice)
    assert not torch.equal(crossattn[68:76], magicnaming.alice)


def test_prepend_warns_when_it_pushes_prompt_tokens_out_of_chunk_0(magicnaming):
    p, _ = magicnaming.run("<name:alice> " + " ".join(["word"] * 74))
    assert any("last 6 of its 74 prompt tokens" in comment for comment in p.comments)
    p, _ = magicnaming.run("<name:alice> " + " ".join(["word"] * 60))
    assert not p.comments


def test_cache_follows_the_identity_alice_bob_none_alice(magicnaming):
    prompt = "portrait of {} in the rain"
    runs = {}
    for name, tag in [
        ("alice", "<name:alice>"),
        ("bob", "<name:bob>"),
        ("none", ""),
        ("alice2", "<name:alice>"),
    ]:
        p, _ = magicnaming.run(prompt.format(tag))
        runs[name] = first_cond(p)[0]["crossattn"].clone()
    base = magicnaming.encode("portrait of  in the rain")["crossattn"]
    assert torch.equal(runs["alice"][1:9], magicnaming.alice)
    assert torch.equal(runs["bob"][1:9], magicnaming.bob)
    assert torch.equal(runs["none"], base)
    assert torch.equal(runs["alice2"], runs["alice"])


def test_a_cache_hit_is_reused_untouched_and_an_edited_identity_is_a_new_key(magicnaming):
    model = magicnaming.webui.model()
    model.encoded_texts = []
    p1, _ = magicnaming.run("<name:alice> reading")
    before = first_cond(p1)[0]["crossattn"].clone()
    encoded = len(model.encoded_texts)
    p2, _ = magicnaming.run("<name:alice> reading")
    assert len(model.encoded_texts) == encoded
    assert p2.c is p1.c
    assert torch.equal(first_cond(p2)[0]["crossattn"], before)
    edited = save_identity(magicnaming.library, "alice", 99, overwrite=True)
    p3, processed = magicnaming.run("<name:alice> reading")
    assert len(model.encoded_texts) > encoded
    assert torch.equal(first_cond(p3)[0]["crossattn"][1:9], edited)
    assert magicnaming.library.get_info("alice").short_hash in processed.infotexts[0]


def test_hires_prompts_get_their_own_identities_and_infotext_shows_the_users_text(magicnaming):
    p, processed = magicnaming.run("<name:alice> on a hill", enable_hr=True, hr_prompt="<name:bob> in a city")
    assert torch.equal(first_cond(p, "first")[0]["crossattn"][1:9], magicnaming.alice)
    hires = first_cond(p, "hires")[0]
    assert_prepended(hires, magicnaming.encode("in a city", size=128), magicnaming.bob)
    text = processed.infotexts[0]
    assert 'Hires prompt: "<name:bob> in a city"' in text
    assert "alice:" in text and "bob:" in text
    assert p.all_hr_prompts == ["<name:bob> in a city"]


def test_each_prompt_of_a_batch_gets_its_own_identity(magicnaming):
    p, processed = magicnaming.run(
        ["<name:alice> dancing", "<name:bob> dancing", "nobody dancing"], batch_size=3
    )
    assert torch.equal(first_cond(p, item=0)[0]["crossattn"][1:9], magicnaming.alice)
    assert torch.equal(first_cond(p, item=1)[0]["crossattn"][1:9], magicnaming.bob)
    assert torch.equal(
        first_cond(p, item=2)[0]["crossattn"], magicnaming.encode("nobody dancing")["crossattn"]
    )
    assert "alice:" in processed.infotexts[0] and "bob:" not in processed.infotexts[0]
    assert "bob:" in processed.infotexts[1] and "alice:" not in processed.infotexts[1]
    assert "MagicNaming" not in processed.infotexts[2]
    assert processed.infotexts[1].startswith("<name:bob> dancing")


def test_batches_of_an_n_iter_job_are_rewritten_each_on_its_own(magicnaming):
    p, processed = magicnaming.run(["<name:alice> a", "<name:bob> b"], batch_size=1, n_iter=2)
    calls = [c for c in p.sampler_log if c.step == 0]
    assert torch.equal(calls[0].cond["crossattn"][0, 1:9], magicnaming.alice)
    assert torch.equal(calls[1].cond["crossattn"][0, 1:9], magicnaming.bob)
    assert "alice:" in processed.infotexts[0] and "bob:" in processed.infotexts[1]


def test_prompt_editing_and_and_switch_identities_at_the_right_steps(magicnaming):
    p, _ = magicnaming.run("[<name:alice>:<name:bob>:2] walking AND a tree <name:bob>", steps=4)
    for step, expected in [(0, magicnaming.alice), (2, magicnaming.alice), (3, magicnaming.bob)]:
        call = next(c for c in p.sampler_log if c.step == step)
        (first, weight_a), (second, _weight_b) = call.conds_list[0]
        assert torch.equal(call.cond["crossattn"][first, 1:9], expected), step
        assert torch.equal(call.cond["crossattn"][second, 1:9], magicnaming.bob)


def test_unknown_identity_stops_the_generation_with_its_name_and_the_next_one_works(magicnaming):
    with pytest.raises(MagicNamingError, match="no saved identity called 'carol'"):
        magicnaming.run("<name:alice> and <name:carol>")
    p, _ = magicnaming.run("<name:alice> alone")
    assert torch.equal(first_cond(p)[0]["crossattn"][1:9], magicnaming.alice)


def test_malformed_tag_and_bad_args_stop_the_generation(magicnaming):
    with pytest.raises(MagicNamingError, match="not closed"):
        magicnaming.run("<name:alice smiling")
    with pytest.raises(MagicNamingError, match="insertion mode"):
        magicnaming.run("<name:alice>", args=(True, "sideways"))


def test_a_face_upload_is_the_identity_face_without_saving(magicnaming):
    from PIL import Image

    face = Image.new("RGB", (32, 32), (200, 150, 120))
    p, processed = magicnaming.run("<name:face> at the beach", args=(True, "prepend", 1.0, face))
    assert magicnaming.encoder.assume_cropped == [False]  # detection runs unless the user says "a crop"
    magicnaming.run("<name:face> at the beach", args=(True, "prepend", 1.0, face, True))
    assert magicnaming.encoder.assume_cropped == [False, True]
    expected = magicnaming.encoder.encode_photos([face]).embedding
    assert torch.equal(first_cond(p)[0]["crossattn"][1:9], expected)
    assert not magicnaming.library.exists("face")
    assert "face:" in processed.infotexts[0]
    with pytest.raises(MagicNamingError, match="Upload a face"):
        magicnaming.run("<name:face> at the beach")


def test_non_sdxl_model_gives_a_clear_message_and_untagged_prompts_still_work(magicnaming):
    magicnaming.webui.use_checkpoint("sd15")
    with pytest.raises(MagicNamingError, match="SDXL checkpoints only.*toy-sd15"):
        magicnaming.run("<name:alice> at work")
    p, _ = magicnaming.run("nobody at work")
    assert p.sampler_log


def test_refiner_width_takes_the_bigg_half(magicnaming):
    magicnaming.webui.use_checkpoint("refiner")
    p, _ = magicnaming.run("<name:alice> on a boat")
    crossattn = first_cond(p)[0]["crossattn"]
    assert crossattn.shape[-1] == 1280
    assert torch.equal(crossattn[1:9], magicnaming.alice[:, 768:])


@pytest.mark.parametrize("args", [(False,), (), (0, "sideways"), (None, "sideways")])
def test_switched_off_leaves_prompts_alone_and_says_so(magicnaming, args):
    p, processed = magicnaming.run("<name:alice> walking", args=args)
    assert torch.equal(first_cond(p)[0]["crossattn"], magicnaming.encode(" walking")["crossattn"])
    assert any("MagicNaming is off" in comment for comment in p.comments)
    assert "MagicNaming:" not in processed.infotexts[0]


def test_an_enabled_that_is_not_a_boolean_stops_the_generation(magicnaming):
    """Not clearly off: the tags must not be dropped silently."""
    with pytest.raises(MagicNamingError, match="'enabled' must be true or false"):
        magicnaming.run("<name:alice> walking", args=("not a bool", "sideways"))


def test_xyz_axes_replace_identity_and_strength_per_cell(magicnaming):
    from lib_magicnaming.webui import xyz

    xyz_module = xyz.find_xyz_module()
    labels = [option.label for option in xyz_module.axis_options]
    assert labels.count(xyz.IDENTITY_AXIS) == 1 and labels.count(xyz.STRENGTH_AXIS) == 1
    p = magicnaming.webui.txt2img(
        magicnaming.runner, {"magicnaming": [True]}, prompt="<name:alice> waving", steps=2
    )
    cells = xyz_module.process_axis(p, xyz.IDENTITY_AXIS, ["bob", "alice"])
    assert "bob:" in cells[0].infotexts[0] and "alice:" in cells[1].infotexts[0]
    p.sampler_log.clear()  # each cell is a shallow copy of p: they append to this same list
    cells = xyz_module.process_axis(p, xyz.STRENGTH_AXIS, ["0.5", "1.0"])
    assert all("alice:" in cell.infotexts[0] for cell in cells)
    assert "strength: 0.5" in cells[0].infotexts[0] and "strength: 1.0" in cells[1].infotexts[0]
    half, full = [call.cond["crossattn"][0, 1:9] for call in p.sampler_log if call.step == 0]
    assert torch.equal(full, magicnaming.alice) and not torch.allclose(half, magicnaming.alice)
    with pytest.raises(MagicNamingError):
        xyz_module.process_axis(p, xyz.STRENGTH_AXIS, ["3"])


def test_without_injected_services_identities_come_from_the_configured_folder(magicnaming, tmp_path):
    from PIL import Image

    from lib_magicnaming.identity_library import IdentityLibrary

    magicnaming.webui.shared.cmd_opts.magicnaming_dir = str(tmp_path / "mn")
    library = IdentityLibrary(tmp_path / "mn" / "identities")
    carol = save_identity(library, "carol", 7)
    magicnaming.script.services = None
    p, _ = magicnaming.run("<name:carol> cooking")
    assert torch.equal(first_cond(p)[0]["crossattn"][1:9], carol)
    face = Image.new("RGB", (32, 32))
    with pytest.raises(MagicNamingError, match="could not use the uploaded face.*encoder checkpoint"):
        magicnaming.run("<name:face> cooking", args=(True, "prepend", 1.0, face))


def test_interleaved_generations_keep_their_own_identities(magicnaming):
    """Two requests whose hooks interleave (as concurrent API calls may): state travels with each p."""
    webui = magicnaming.webui
    webui.model()  # what process_images does first in Forge

    def prepared(prompt):
        p = webui.txt2img(magicnaming.runner, {"magicnaming": [True]}, prompt=prompt, steps=2)
        p.setup_prompts()
        p.all_seeds = p.all_subseeds = [1]
        p.scripts.process(p)
        p.prompts, p.negative_prompts = p.all_prompts[:1], p.all_negative_prompts[:1]
        p.scripts.before_process_batch(p, batch_number=0, prompts=p.prompts, seeds=[1], subseeds=[1])
        return p

    first, second = prepared("<name:alice> left"), prepared("<name:bob> right")
    for p, expected in [(second, magicnaming.bob), (first, magicnaming.alice)]:
        p.parse_extra_network_prompts()
        p.setup_conds()
        cond = p.c.batch[0][0].schedules[0].cond
        assert torch.equal(cond["crossattn"][1:9], expected)
    assert first.magicnaming is not second.magicnaming


def test_img2img_tab_gets_identities_too(magicnaming):
    from PIL import Image

    webui = magicnaming.webui
    runner = webui.make_runner(is_img2img=True)
    script = next(s for s in runner.alwayson_scripts if s.title() == "MagicNaming")
    script.services = magicnaming.script.services
    assert runner.inputs[script.args_from].elem_id == "script_img2img_magicnaming_enabled-checkbox"
    p = webui.processing.StableDiffusionProcessingImg2Img(
        prompt="<name:bob> repainted", init_images=[Image.new("RGB", (64, 64))], steps=4)
    p.scripts = runner
    p.script_args = (0, True, "in place", 1.0, None)
    processed = webui.processing.process_images(p)
    assert torch.equal(first_cond(p, "img2img")[0]["crossattn"][1:9], magicnaming.bob)
    assert "mode: in place" in processed.infotexts[0]
