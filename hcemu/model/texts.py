"""Texts available on every machine, for perplexity measurements: the Python licence."""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path


def licence_path() -> Path:
    """Path of the CPython licence (``LICENSE.txt`` in the standard-library directory).

    Looks in the stdlib directory of this interpreter and of its base installation (a virtual
    environment's ``sys.base_prefix``). Raises ``FileNotFoundError`` listing where it looked.
    """
    dirs = []
    for getter in (lambda: sysconfig.get_paths()["stdlib"], lambda: os.path.dirname(os.__file__)):
        try:
            dirs.append(Path(getter()))
        except Exception:  # pragma: no cover - exotic installations
            pass
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for prefix in (sys.base_prefix, sys.prefix, sys.exec_prefix):
        dirs += [Path(prefix) / "lib" / ver, Path(prefix) / "Lib", Path(prefix)]
    tried = []
    for d in dirs:
        for name in ("LICENSE.txt", "LICENSE"):
            p = d / name
            if p in tried:
                continue
            tried.append(p)
            if p.is_file() and p.stat().st_size > 1000:
                return p
    raise FileNotFoundError("the Python licence text was not found; looked at: " + ", ".join(map(str, tried)))


def licence_text() -> str:
    """The CPython licence (about 13 kB of English prose; about 3,000 SmolLM2 tokens)."""
    return licence_path().read_text(encoding="utf-8")
