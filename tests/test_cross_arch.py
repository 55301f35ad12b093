"""The C core as another program and another architecture see it.

``tests/cross/harness.c`` runs the quantizer, every CIM format, the vector unit, the KV stores and
int8/fp16 attention on fixed pseudo-random inputs through one ISA path and writes every output's
bytes. It is built from what the package hands a simulator that embeds the kernels
(``hcemu.get_sources()``, the header in ``hcemu.get_include()``, ``hcemu.C_FLAGS``). Every path of
this machine must write the same bytes; so must the harness cross-built for aarch64 (the portable
path, which the compiler vectorizes for NEON) and run under qemu-user, and a build by clang (the
compiler of macOS users). The aarch64 check needs ``aarch64-linux-gnu-gcc`` and ``qemu-aarch64``
(Debian: gcc-aarch64-linux-gnu, qemu-user), the clang check ``clang``; each is skipped without them.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import hcemu

HARNESS = Path(__file__).resolve().parent / "cross" / "harness.c"
# what an embedding program gets from the package: the numerics flags, the header, the sources
CFLAGS = [*hcemu.C_FLAGS, "-fopenmp"]


def build(cc: str, out: Path, extra=(), flags=CFLAGS) -> Path:
    cmd = [cc, *flags, *extra, "-I", hcemu.get_include(), str(HARNESS), *hcemu.get_sources(), "-lm", "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def run(cmd) -> bytes:
    res = subprocess.run(cmd, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    assert len(res.stdout) > 50_000  # every output was written
    return res.stdout


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    exe = build(cc, tmp_path_factory.mktemp("native") / "harness")
    return {isa: run([str(exe), isa]) for isa in hcemu.capabilities()["supported"]}


def test_every_path_writes_the_same_bytes(native):
    ref = native["scalar"]
    for isa, out in native.items():
        assert out == ref, f"{isa} differs from scalar"


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
                    reason="needs aarch64-linux-gnu-gcc and qemu-aarch64")
def test_aarch64_writes_the_same_bytes(native, tmp_path):
    exe = build("aarch64-linux-gnu-gcc", tmp_path / "harness-aarch64", extra=["-static"])
    assert run(["qemu-aarch64", str(exe), "scalar"]) == native["scalar"]


@pytest.mark.skipif(not shutil.which("clang"), reason="needs clang")
def test_clang_writes_the_same_bytes(native, tmp_path):
    # without OpenMP: clang's needs libomp, which is often absent (the harness runs one thread)
    flags = [f for f in CFLAGS if f != "-fopenmp"] + ["-Wno-unknown-pragmas"]
    exe = build("clang", tmp_path / "harness-clang", flags=flags)
    for isa in native:
        assert run([str(exe), isa]) == native["scalar"], f"clang build, {isa}"


def test_c_flags_are_the_builds():
    """hcemu.C_FLAGS (what embedders are told) are flags setup.py builds the extension with."""
    setup_py = Path(__file__).resolve().parents[1] / "setup.py"
    if not setup_py.exists():
        pytest.skip("needs the source tree")
    text = setup_py.read_text()
    for flag in hcemu.C_FLAGS:
        assert f'"{flag}"' in text, flag
