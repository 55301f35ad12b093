"""Field checks shared by the frozen description dataclasses (ModelSpec, formats, plans, geometry).

A description built in code and one read from a file (a ROM image's directory, a GGUF's metadata) go
through the same constructor, so they get the same checks: :func:`check_field_types` in
``__post_init__`` and :func:`from_dict` for JSON objects. Errors are ``TypeError`` (wrong kind of
value) or ``ValueError`` (a value out of range), naming the class and the field.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import operator


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def check_field_types(obj) -> None:
    """Check, and normalize in place, the fields of a frozen dataclass against their annotations.

    ``int``: an integer (numpy integers become ``int``; bool is refused); ``float``: a finite real number
    (becomes ``float``); ``bool``: ``True``/``False`` (numpy bools become ``bool``); ``str``: a string.
    A field annotated with a class name (or ``X | None``) must hold an instance of that class (or None).
    Other annotations are not checked. Raises TypeError or ValueError naming ``Class.field``.
    """
    cls = type(obj)
    for f in dataclasses.fields(obj):
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        v = getattr(obj, f.name)
        where = f"{cls.__name__}.{f.name}"
        if ann == "int":
            if not _is_int(v):
                raise TypeError(f"{where} must be an integer, got {type(v).__name__} {v!r}")
            v = operator.index(v)
        elif ann == "float":
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or type(v).__name__ == "bool_":
                raise TypeError(f"{where} must be a real number, got {type(v).__name__} {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"{where} must be finite, got {v!r}")
        elif ann == "bool":
            if not isinstance(v, bool) and type(v).__name__ != "bool_":
                raise TypeError(f"{where} must be true or false, got {type(v).__name__} {v!r}")
            v = bool(v)
        elif ann == "str":
            if not isinstance(v, str):
                raise TypeError(f"{where} must be a string, got {type(v).__name__} {v!r}")
        else:
            optional = ann.endswith(" | None")
            name = ann[: -len(" | None")] if optional else ann
            if name.isidentifier() and name[:1].isupper():
                if v is None and optional:
                    continue
                if name not in {c.__name__ for c in type(v).__mro__}:
                    raise TypeError(f"{where} must be a {name}{' or None' if optional else ''}, "
                                    f"got {type(v).__name__} {v!r}")
            continue
        object.__setattr__(obj, f.name, v)


def from_dict(cls, d, what: str | None = None):
    """``cls(**d)`` for a JSON object ``d``, naming what is wrong: ``d`` not an object, unknown or missing
    fields (TypeError), and whatever the constructor's own checks raise."""
    what = what or cls.__name__
    if not isinstance(d, dict):
        raise TypeError(f"{what} must be an object (a JSON dict), got {type(d).__name__}")
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(str(k) for k in d if k not in names)
    if unknown:
        raise TypeError(f"{what}: unknown field(s) {', '.join(unknown)}")
    missing = [f.name for f in fields if f.name not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TypeError(f"{what}: missing field(s) {', '.join(missing)}")
    return cls(**d)
