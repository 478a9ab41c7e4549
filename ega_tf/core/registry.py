"""One small registry per kind of thing (students, datasets, losses, ...).

A registry maps a name to a value (a factory or a spec). Looking up an
unknown name raises a ``UserError`` whose message lists every valid name;
registering a name twice is a programming error and raises ``ValueError``, so
two modules can never silently shadow each other.
"""

from __future__ import annotations

from typing import Dict, Generic, Iterable, List, TypeVar

from ega_tf.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of values of one kind (e.g. ``"student"``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str, value: T | None = None):
        """Registers ``value`` under ``name``; usable as a decorator."""

        def add(v: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice.")
            self._entries[name] = v
            return v

        return add(value) if value is not None else add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(f"Unknown {self.kind} {name!r}. Valid names: "
                            f"{', '.join(self.names())}.")
        return self._entries[name]

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __call__(self, name: str) -> T:
        return self.get(name)


def check_choice(kind: str, value, choices: Iterable) -> None:
    """Raises ``UserError`` naming ``kind`` and listing ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise UserError(f"Unknown {kind} {value!r}. Valid values: "
                        f"{', '.join(map(str, choices))}.")
