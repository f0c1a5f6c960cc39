"""A tiny name -> class registry shared by every kind of method (divergences, masks, reweightings, curricula,
schedules). A method registers itself with a decorator in the file that defines it; listers and config
validation read the registry, so error messages always name the valid choices."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind, e.g. ``Registry("divergence")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        #: the methods' base class: :meth:`resolve` passes its instances through (set by the package defining it)
        self.base: type | None = None
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REGISTRY.register("name")`` on a class or factory function."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = factory
            return factory

        return decorator

    def register_class(self, name: str) -> Callable[[type], type]:
        """Class decorator: registers the class under ``name`` and sets its ``name`` attribute."""

        def decorator(cls: type) -> type:
            cls.name = name
            self.register(name)(cls)
            return cls

        return decorator

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def factory(self, name: str) -> Callable[..., T]:
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}")
        return self._entries[name]

    def accepted_kwargs(self, name: str) -> list[str]:
        """Keyword arguments the factory of ``name`` accepts (for error messages)."""
        params = inspect.signature(self.factory(name)).parameters
        return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]

    def required_kwargs(self, name: str) -> list[str]:
        """Keyword arguments of ``name`` without a default (hyper-parameters with no published default)."""
        params = inspect.signature(self.factory(name)).parameters
        return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and v.default is v.empty]

    def resolve(self, name_or_instance: str | T, **kwargs: Any) -> T:
        """:meth:`build` for a name; an instance of :attr:`base` is passed through (then ``kwargs`` must be empty)."""
        if self.base is None or not isinstance(name_or_instance, self.base):
            return self.build(name_or_instance, **kwargs)
        if kwargs:
            raise ValueError(f"kwargs given together with an already built {self.kind} instance: {sorted(kwargs)}")
        return name_or_instance

    def build(self, name: str, **kwargs: Any) -> T:
        """Instantiate ``name`` with ``kwargs``; an unknown or missing kwarg raises ``ValueError`` naming the accepted
        (or required) ones."""
        factory = self.factory(name)
        accepted = self.accepted_kwargs(name)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} got unknown argument(s) {unknown}; accepted: {accepted or 'none'}")
        missing = [k for k in self.required_kwargs(name) if k not in kwargs]
        if missing:
            doc = " ".join((inspect.getdoc(factory) or "").split("\n\n")[0].split())
            raise ValueError(f"{self.kind} {name!r} requires argument(s) {missing} (no default); {doc}")
        return factory(**kwargs)


#: the divergence registry: filled by :mod:`trl_divergences.divergences`, read there and by :mod:`trl_divergences.ops`
#: (which resolves divergence names without importing the divergences layer, which imports it)
DIVERGENCES: Registry[Any] = Registry("divergence")


class Method:
    """Base of the catalog's method objects (token masks, reweightings, curricula, schedules): the registered
    ``name`` and checkpoint state, empty unless a subclass keeps some (then it overrides both methods)."""

    name: str = ""
    #: the kind of method, for messages
    method_kind: str = "method"

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.method_kind} {self.name!r} is stateless, got state {state!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
