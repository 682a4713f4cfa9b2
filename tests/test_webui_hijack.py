"""The reversible wrapper around prompt_parser.get_learned_conditioning: installed, removed, never stacked."""

import functools
import importlib.util
import types

import torch

from lib_magicnaming.webui import hijack as hijack_module
from lib_magicnaming.webui.hijack import AttributeHijack, hijack_record

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


def wrapped_by_ours(module, name):
    """What our wrapper at ``module.<name>`` wraps, read from the registry on the module."""
    return hijack_record(module, name)["layers"][getattr(module, name)]


def test_a_leftover_wrapper_is_unwrapped_not_stacked():
    module = make_module()
    original = module.function
    AttributeHijack(module, "function", adding(10)).install()
    second = AttributeHijack(module, "function", adding(10)).install()
    assert module.function(1) == 12
    assert second.original is original and wrapped_by_ours(module, "function") is original
    assert len(hijack_record(module, "function")["layers"]) == 1


def foreign_wrapper(below, calls):
    """Another extension's wrapper, made with functools.wraps (which copies ``below.__dict__``)."""

    @functools.wraps(below)
    def foreign(x):
        calls.append(x)
        return below(x) * 2

    return foreign


def test_a_foreign_wraps_made_wrapper_survives_remove_and_reinstall():
    module = make_module()
    hijack = AttributeHijack(module, "function", adding(10)).install()
    calls = []
    module.function = foreign = foreign_wrapper(module.function, calls)
    hijack.remove()  # script unloaded: ours under theirs becomes a pass-through
    assert module.function is foreign and module.function(1) == 4 and calls == [1]
    AttributeHijack(module, "function", adding(10)).install()  # script loaded again
    assert module.function(1) == 14 and calls == [1, 1]  # theirs still runs, ours on top of it, once
    assert wrapped_by_ours(module, "function") is foreign


def test_a_foreign_wrapper_survives_a_reload_without_the_unload_callback():
    module = make_module()
    AttributeHijack(module, "function", adding(10)).install()
    calls = []
    module.function = foreign = foreign_wrapper(module.function, calls)
    AttributeHijack(module, "function", adding(10)).install()  # no remove() first
    assert module.function(1) == 14 and calls == [1]  # the old wrapper of ours passes through
    assert wrapped_by_ours(module, "function") is foreign


def test_the_registry_outlives_a_reimport_of_the_hijack_module():
    spec = importlib.util.spec_from_file_location("magicnaming_hijack_reimported", hijack_module.__file__)
    reimported = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reimported)
    assert reimported.AttributeHijack is not AttributeHijack
    module = make_module()
    original = module.function
    AttributeHijack(module, "function", adding(10)).install()
    calls = []
    module.function = foreign_wrapper(module.function, calls)
    reimported.AttributeHijack(module, "function", adding(10)).install()
    assert module.function(1) == 14 and calls == [1]
    second = reimported.AttributeHijack(module, "function", adding(100)).install()  # replaces, never stacks
    assert module.function(1) == 104 and second.original is not original
    second.remove()
    assert module.function(1) == 4  # theirs, over a pass-through of ours, over the original


def test_removed_under_a_later_wrapper_becomes_a_pass_through():
    module = make_module()
    hijack = AttributeHijack(module, "function", adding(10)).install()
    ours = module.function
    module.function = lambda x: ours(x) * 2
    hijack.remove()
    assert module.function(1) == 4


def test_loading_the_script_wraps_and_unloading_restores(magicnaming):
    prompt_parser = magicnaming.webui.prompt_parser
    original = wrapped_by_ours(prompt_parser, "get_learned_conditioning")
    assert original.__module__ == "modules.prompt_parser"
    p, _ = magicnaming.run("<name:alice> sitting")
    assert torch.equal(p.sampler_log[0].cond["crossattn"][0, 1:9], magicnaming.alice)

    magicnaming.webui.script_callbacks.script_unloaded_callback()
    assert prompt_parser.get_learned_conditioning is original

    magicnaming.webui.script_callbacks.remove_current_script_callbacks()
    magicnaming.webui.load_script(magicnaming.webui.repo_root / "scripts" / "magicnaming.py")
    magicnaming.webui.load_script(magicnaming.webui.repo_root / "scripts" / "magicnaming.py")
    assert wrapped_by_ours(prompt_parser, "get_learned_conditioning") is original
    assert len(hijack_record(prompt_parser, "get_learned_conditioning")["layers"]) == 1


def test_prompts_without_markers_go_straight_to_the_original(magicnaming):
    p, _ = magicnaming.run("a plain prompt")
    expected = magicnaming.encode("a plain prompt")["crossattn"]
    assert torch.equal(p.sampler_log[0].cond["crossattn"][0], expected)
