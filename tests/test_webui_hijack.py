"""The reversible wrapper around prompt_parser.get_learned_conditioning: installed, removed, never stacked."""

import types

import torch

from lib_magicnaming.webui.hijack import ORIGINAL_ATTRIBUTE, AttributeHijack

pytest_plugins = ["webui_standin", "webui_standin.extension"]


def make_module():
    module = types.ModuleType("fake")
    module.function = lambda x: x + 1
    return module


def adding(amount):
    return lambda original: (lambda x: original(x) + amount)


def test_install_and_remove_restore_the_original():
    module = make_module()
    original = module.function
    hijack = AttributeHijack(module, "function", adding(10)).install()
    assert module.function(1) == 12 and hijack.installed
    hijack.install()
    assert module.function(1) == 12
    hijack.remove()
    assert module.function is original and not hijack.installed


def test_a_leftover_wrapper_is_unwrapped_not_stacked():
    module = make_module()
    original = module.function
    AttributeHijack(module, "function", adding(10)).install()
    AttributeHijack(module, "function", adding(10)).install()
    assert module.function(1) == 12
    assert getattr(module.function, ORIGINAL_ATTRIBUTE) is original


def test_removed_under_a_later_wrapper_becomes_a_pass_through():
    module = make_module()
    hijack = AttributeHijack(module, "function", adding(10)).install()
    ours = module.function
    module.function = lambda x: ours(x) * 2
    hijack.remove()
    assert module.function(1) == 4


def test_loading_the_script_wraps_and_unloading_restores(magicnaming):
    prompt_parser = magicnaming.webui.prompt_parser
    wrapped = prompt_parser.get_learned_conditioning
    original = getattr(wrapped, ORIGINAL_ATTRIBUTE)
    assert original.__module__ == "modules.prompt_parser"
    p, _ = magicnaming.run("<name:alice> sitting")
    assert torch.equal(p.sampler_log[0].cond["crossattn"][0, 1:9], magicnaming.alice)

    magicnaming.webui.script_callbacks.script_unloaded_callback()
    assert prompt_parser.get_learned_conditioning is original

    magicnaming.webui.script_callbacks.remove_current_script_callbacks()
    magicnaming.webui.load_script(magicnaming.webui.repo_root / "scripts" / "magicnaming.py")
    magicnaming.webui.load_script(magicnaming.webui.repo_root / "scripts" / "magicnaming.py")
    assert getattr(prompt_parser.get_learned_conditioning, ORIGINAL_ATTRIBUTE) is original


def test_prompts_without_markers_go_straight_to_the_original(magicnaming):
    p, _ = magicnaming.run("a plain prompt")
    expected = magicnaming.encode("a plain prompt")["crossattn"]
    assert torch.equal(p.sampler_log[0].cond["crossattn"][0], expected)
