"""Small record classes: what ``@dataclass`` gave them (an ``__init__`` by field order with
defaults, ``repr``, ``==``; frozen and hashable for :class:`Value`), without importing
:mod:`dataclasses` (and with it :mod:`inspect`, :mod:`ast` …) and generating code for each
class at start-up: a script hook imports a dozen of them on every ring, answer and hang-up.

A class lists its fields in ``__slots__``, in order; ``_defaults`` maps a field to its
default, ``_factories`` to a callable making a fresh one (a dict); ``_hidden`` fields are
left out of ``repr`` (secrets), ``_uncompared`` ones out of ``==``.
"""

from __future__ import annotations


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a :class:`Value` (``dataclasses.FrozenInstanceError``'s
    counterpart)."""


class Record:
    """A mutable record (``@dataclass``): not hashable, as a dataclass with ``eq``."""

    __slots__ = ()
    _fields: tuple = ()
    _field_set: frozenset = frozenset()
    _defaults: dict = {}
    _factories: dict = {}
    _hidden: frozenset = frozenset()
    _uncompared: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fields = []
        for klass in reversed(cls.__mro__):
            fields.extend(n for n in klass.__dict__.get("__slots__", ()) if n not in fields and not n.startswith("__"))
        cls._fields = tuple(fields)
        cls._field_set = frozenset(fields)

    def __init__(self, *args, **kwargs):
        cls = type(self)
        fields = cls._fields
        if not kwargs and len(args) == len(fields):  # every field given in order: the common case
            put = object.__setattr__
            for field, value in zip(fields, args):
                put(self, field, value)
            return
        name = cls.__qualname__
        if len(args) > len(fields):
            raise TypeError(f"{name}() takes {len(fields)} arguments but {len(args)} were given")
        for key in kwargs:
            if key not in cls._field_set:
                raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
        put = object.__setattr__
        for i, field in enumerate(fields):
            if i < len(args):
                if field in kwargs:
                    raise TypeError(f"{name}() got multiple values for argument {field!r}")
                value = args[i]
            elif field in kwargs:
                value = kwargs[field]
            elif field in cls._defaults:
                value = cls._defaults[field]
            elif field in cls._factories:
                value = cls._factories[field]()
            else:
                raise TypeError(f"{name}() missing required argument: {field!r}")
            put(self, field, value)

    def _compared(self) -> tuple:
        return tuple(getattr(self, f) for f in self._fields if f not in self._uncompared)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return self._compared() == other._compared()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields if f not in self._hidden)
        return f"{type(self).__qualname__}({shown})"

    def __reduce__(self):
        return type(self), tuple(getattr(self, f) for f in self._fields)

    def replace(self, **changes):
        """A copy with ``changes`` (``dataclasses.replace``)."""
        values = {f: getattr(self, f) for f in self._fields}
        values.update(changes)
        return type(self)(**values)


class Value(Record):
    """An immutable record (``@dataclass(frozen=True)``): fields cannot be assigned; equal
    values hash alike."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __hash__(self):
        return hash(self._compared())
