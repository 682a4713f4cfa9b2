"""A reversible replacement of a module attribute (the "module hijacker" pattern of WebUI extensions).

``AttributeHijack(module, name, make_wrapper).install()`` replaces ``module.name`` with a wrapper around
``make_wrapper(current)``; ``remove()`` puts back what it wrapped. If something else wrapped the attribute
after us, putting that back would drop the other wrapper too, so ``remove`` then turns ours into a
pass-through instead.

The bookkeeping lives in a registry on the hijacked module itself (``module.__magicnaming_hijacks__``, one
plain dict per attribute), never on functions: another extension's wrapper made with ``functools.wraps``
copies a function's ``__dict__``, so a mark on our wrapper would make theirs look like ours. The registry
survives a script reload, which re-runs our script file and may re-import this package, because the
hijacked module (``modules.prompt_parser``) stays the same object. Per attribute it records:

* ``layers``: each wrapper of ours still reachable from the attribute -> what it wraps, so a later install
  unwraps exactly our own wrappers from the top (a reload without the unload callback never stacks them)
  and keeps any foreign wrapper, which then wraps an inactive wrapper of ours;
* ``active``: the one wrapper of ours that does the work; every other one passes calls straight through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

REGISTRY_ATTRIBUTE = "__magicnaming_hijacks__"
"""On the hijacked module: attribute name -> ``{"layers": {wrapper: wrapped}, "active": wrapper | None}``."""


def hijack_record(module: ModuleType, name: str) -> dict[str, Any]:
    """The registry entry of ``module.<name>`` (created empty on first use); plain data, so every load of
    this extension reads the same entry."""
    registry = vars(module).setdefault(REGISTRY_ATTRIBUTE, {})
    return registry.setdefault(name, {"layers": {}, "active": None})


def _is_layer(function: Any, layers: dict) -> bool:
    return any(layer is function for layer in layers)  # by identity: a foreign callable may not hash


class AttributeHijack:
    """One reversible replacement of ``module.<name>``."""

    def __init__(self, module: ModuleType, name: str, make_wrapper: Callable[[Callable], Callable]):
        self.module = module
        self.name = name
        self.make_wrapper = make_wrapper
        self.original: Callable | None = None
        """What our wrapper wraps: the attribute as found, minus wrappers of ours on top of it."""
        self.wrapper: Callable | None = None

    @property
    def installed(self) -> bool:
        """Whether the module attribute is our wrapper right now."""
        return self.wrapper is not None and getattr(self.module, self.name, None) is self.wrapper

    def install(self) -> AttributeHijack:
        """Replace the attribute with the wrapper (idempotent); returns self."""
        if self.installed:
            return self
        record = hijack_record(self.module, self.name)
        layers = record["layers"]
        current = getattr(self.module, self.name)
        while _is_layer(current, layers):  # our own wrappers only, found by identity in the registry
            current = layers.pop(current)
        self.original = current
        wrapped = self.make_wrapper(current)

        @functools.wraps(current)
        def wrapper(*args, **kwargs):
            if record["active"] is wrapper:
                return wrapped(*args, **kwargs)
            return current(*args, **kwargs)

        layers[wrapper] = current
        record["active"] = wrapper
        self.wrapper = wrapper
        setattr(self.module, self.name, wrapper)
        return self

    def remove(self) -> None:
        """Undo :meth:`install`: restore what it wrapped, or become a pass-through under a later wrapper."""
        if self.wrapper is None:
            return
        record = hijack_record(self.module, self.name)
        if record["active"] is self.wrapper:
            record["active"] = None
        if self.installed:
            record["layers"].pop(self.wrapper, None)
            setattr(self.module, self.name, self.original)
