"""Method registry: every ``Method`` subclass in this package, plus any registered by a user.

Modules here are imported on first use; a third-party package can add methods through
the ``faeval_tui.methods`` entry-point group (the entry point's name is the method's
``name``), and a script through ``register_method``.

``method_names`` lists the names without importing a method, nor torch: a config is
validated by it, so a console that follows a trainer process never loads torch.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Method, Probe, output_error

_REGISTRY: dict[str, type[Method]] = {}
_loaded = False
_discovering = threading.RLock()  # an RLock: a method module may ask the registry while it is imported
_NOT_METHODS = ("base", "feedback")  # the modules here that define no method; each other one is named after its method
ENTRY_POINTS = "faeval_tui.methods"


def __getattr__(name: str) -> Any:
    """``Method``, ``Probe`` and ``output_error`` from ``.base`` on first use (it imports torch)."""
    if name in ("Method", "Probe", "output_error"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_method(cls: type[Method]) -> type[Method]:
    """Register a Method subclass under ``cls.name`` (usable as a decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name`")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"method name {name!r} is taken by {existing.__module__}.{existing.__name__}")
    _REGISTRY[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method registered with ``register_method`` (tests and notebooks clean up with it)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Import this package's method modules and the entry points' methods, once. The first
    call may come from several training threads at once (an audit's workers): the others
    wait for it, and ``_loaded`` is set only when the registry is whole."""
    global _loaded
    if _loaded:
        return
    with _discovering:
        if _loaded:
            return
        from .base import Method

        for info in pkgutil.iter_modules(__path__):
            if info.name in _NOT_METHODS:
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ == module.__name__ \
                        and "name" in vars(obj):
                    register_method(obj)
        for ep in entry_points(group=ENTRY_POINTS):
            cls = ep.load()
            if getattr(cls, "name", None) != ep.name:  # method_names lists the entry point's name unloaded
                raise ValueError(f"the {ENTRY_POINTS} entry point {ep.name!r} ({ep.value}) loads a method named "
                                 f"{getattr(cls, 'name', None)!r}: name the entry point after the method")
            register_method(cls)
        _loaded = True


def available_methods() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def method_names() -> list[str]:
    """The names ``available_methods`` gives, without importing a method (nor torch): this
    package's modules, the entry points' names, and the methods registered so far."""
    if _loaded:
        return available_methods()
    builtin = {info.name for info in pkgutil.iter_modules(__path__) if info.name not in _NOT_METHODS}
    return sorted(builtin | {ep.name for ep in entry_points(group=ENTRY_POINTS)} | set(_REGISTRY))


def build_method(name: str, model, n_classes: int, generator, config: Any = None) -> Method:
    """An instance of method ``name`` for ``model``. A method that names a ``config_section``
    gets that section of ``config`` (an ``AuditConfig``) as the keyword ``options``; without a
    config, or for a method without one, it is built as ``cls(model, n_classes, generator)``."""
    cls = get_method(name)
    section = getattr(cls, "config_section", None)
    if section and config is not None:
        return cls(model, n_classes, generator, options=getattr(config, section))  # type: ignore[call-arg]
    return cls(model, n_classes, generator)


def get_method(name: str) -> type[Method]:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


__all__ = ["Method", "Probe", "available_methods", "build_method", "get_method", "method_names", "output_error",
           "register_method", "unregister_method"]
