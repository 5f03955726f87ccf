"""Old spellings of parameters, kept working for one release with a DeprecationWarning.

    >>> def train(out, *, val_size=2000, **old):
    ...     val_size = renamed(old, {"n_val": "val_size"}, "train", val_size=val_size)["val_size"]
"""

from __future__ import annotations

import warnings

__all__ = ["renamed"]


def renamed(old: dict, renames: dict[str, str], function: str, **current) -> dict:
    """`current` (new name -> value) updated from `old` (the caller's leftover keywords),
    where each old name in `renames` warns once and sets its new name. A keyword that is
    neither is a TypeError, as Python raises for any unknown keyword."""
    unknown = sorted(set(old) - set(renames))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument '{unknown[0]}'")
    for name, value in old.items():
        new = renames[name]
        warnings.warn(f"{function}({name}=...) is now {new}=...; {name}= will be removed in "
                      "the next release", DeprecationWarning, stacklevel=3)
        current[new] = value
    return current
