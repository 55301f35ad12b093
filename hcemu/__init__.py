"""hcemu — emulate hard-coded (mask-ROM, compute-in-memory) LLM inference chips.

One execution yields the values the silicon would compute *and* the events it would spend; the
silicon, GPU and cost models in :mod:`hcemu.perf` price those events.
"""
from __future__ import annotations

import os

__version__ = "0.1.0"

ISA_ENV = "HCEMU_ISA"
"""Environment variable forcing a kernel path: ``scalar``, ``avx2``, ``avxvnni`` or ``avx512vnni``."""


def get_include() -> str:
    """Directory of the public C header ``hcemu.h`` (to compile other simulators against it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "include")
    if os.path.exists(os.path.join(installed, "hcemu.h")):
        return installed
    source_tree = os.path.join(os.path.dirname(here), "csrc")  # editable / in-place builds
    if os.path.exists(os.path.join(source_tree, "hcemu.h")):
        return source_tree
    raise FileNotFoundError("hcemu.h not found: the package was installed without its headers")


C_FLAGS = ("-std=gnu11", "-ffp-contract=off", "-fno-fast-math", "-O3")
"""Compiler flags the C core needs for its numerics (no fused multiply-add, no fast-math), as
setup.py builds it; add ``-fopenmp`` for threads. Never ``-march=native``: paths are chosen at run
time."""


def get_library() -> str:
    """Path of the C library of the whole chip, ``libhcemu.so`` (header ``hcemu_chip.h`` in
    :func:`get_include`; docs/embedding.md "The C library"). FileNotFoundError if this install has none
    (a source tree not built: ``python setup.py build_ext --inplace``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "libhcemu.so")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: hcemu's C library is not built (pip install . or python setup.py "
                                f"build_ext --inplace builds it)")
    return path


def get_sources() -> list[str]:
    """Paths of the C core's sources (``hc_*.c``), to compile into another program beside
    ``get_include()``'s header with :data:`C_FLAGS`; no Python is needed at run time."""
    from glob import glob

    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "src"), os.path.join(os.path.dirname(here), "csrc")):
        found = sorted(glob(os.path.join(folder, "hc_*.c")))
        if found:
            return found
    raise FileNotFoundError("the C sources were not found: the package was installed without them")


def capabilities() -> dict:
    """Which instruction-set paths this machine supports and which one the kernels use now.

    Returns ``{"supported": [...], "active": name, "forced_by_env": name | None, "openmp": bool}``.
    """
    from hcemu import _core

    return {
        "supported": _core.isa_supported(),
        "active": _core.isa_active(),
        "forced_by_env": os.environ.get(ISA_ENV) or None,
        "openmp": bool(getattr(_core, "OPENMP", False)),
    }


def set_isa(name: str) -> None:
    """Force the kernel path for this process (``scalar``, ``avx2``, ``avxvnni``, ``avx512vnni``)."""
    from hcemu import _core

    _core.isa_set(name)


def _default_openmp_waits() -> None:
    """Let idle OpenMP workers sleep instead of spinning (unless the user chose otherwise).

    Must run before the compiled core (and so libgomp) is loaded. On a machine whose cores are
    shared with other work, spinning workers lose their scheduler priority and each parallel call
    then waits a whole time slice for them (measured: 2-thread calls 5x slower than 1-thread ones);
    passive workers are woken promptly.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_default_openmp_waits()


def _apply_env_isa() -> None:
    forced = os.environ.get(ISA_ENV)
    if forced:
        set_isa(forced)


try:  # the compiled core is optional at import time so that pure-python tools (perf models) work
    _apply_env_isa()
except ImportError:  # pragma: no cover - only in a source tree that was never built
    pass
