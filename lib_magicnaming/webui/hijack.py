"""A reversible replacement of a module attribute (the "module hijacker" pattern of WebUI extensions).

``AttributeHijack(module, name, make_wrapper).install()`` replaces ``module.name`` with
``make_wrapper(original)``; ``remove()`` puts the original back. If something else wrapped the attribute after
us, putting the original back would drop that wrapper too, so ``remove`` then turns ours into a pass-through
instead. A wrapper left behind by an earlier load of this extension (scripts reloaded without the unload
callback) is unwrapped before installing, so wrappers never stack.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType

ORIGINAL_ATTRIBUTE = "__magicnaming_original__"


class AttributeHijack:
    """One reversible replacement of ``module.<name>``."""

    def __init__(self, module: ModuleType, name: str, make_wrapper: Callable[[Callable], Callable]):
        self.module = module
        self.name = name
        self.make_wrapper = make_wrapper
        self.original: Callable | None = None
        self.wrapper: Callable | None = None
        self.active = False

    @property
    def installed(self) -> bool:
        """Whether the module attribute is our wrapper right now."""
        return self.wrapper is not None and getattr(self.module, self.name, None) is self.wrapper

    def install(self) -> AttributeHijack:
        """Replace the attribute with the wrapper (idempotent); returns self."""
        if self.installed:
            return self
        current = getattr(self.module, self.name)
        while hasattr(current, ORIGINAL_ATTRIBUTE):
            current = getattr(current, ORIGINAL_ATTRIBUTE)
        self.original = current
        wrapped = self.make_wrapper(current)

        @functools.wraps(current)
        def wrapper(*args, **kwargs):
            if self.active:
                return wrapped(*args, **kwargs)
            return current(*args, **kwargs)

        setattr(wrapper, ORIGINAL_ATTRIBUTE, current)
        self.wrapper = wrapper
        self.active = True
        setattr(self.module, self.name, wrapper)
        return self

    def remove(self) -> None:
        """Undo :meth:`install`: restore the original, or become a pass-through under a later wrapper."""
        self.active = False
        if self.installed:
            setattr(self.module, self.name, self.original)
