"""Build hcemu: one extension, ``hcemu._core`` (``hcemu/_core.pyx`` and the ``hcemu/_*.pxi`` it includes),
linked with the C kernels in ``csrc/``.

Environment switches
--------------------
HCEMU_DEBUG=1        turn Cython's boundscheck/wraparound back on and build C with -O0 -g.
HCEMU_MARCH_NATIVE=1 opt in to ``-march=native`` (never the default: wheels must run anywhere;
                     ISA-specific kernels are compiled with function target attributes and chosen at
                     run time).
HCEMU_OPENMP=0       build without OpenMP (threads then come from the portable pthread pool).
HCEMU_SANITIZE=address,undefined
                     build the C core (and the Cython module) with AddressSanitizer and/or
                     UndefinedBehaviorSanitizer (-O1 -g). Python itself is not instrumented, so the ASan
                     runtime must be loaded first: run with
                     ``LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``
                     (docs/reliability.md; ``.ci/sanitize`` does it all).

Each set of flags compiles into its own folder under ``build/`` (``build_ext`` below), so switching a
switch rebuilds every object instead of linking stale ones.
"""
import hashlib
import os
import sys
from glob import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("HCEMU_DEBUG", "0") == "1"
NATIVE = os.environ.get("HCEMU_MARCH_NATIVE", "0") == "1"

CSRC = sorted(glob(os.path.join("csrc", "*.c")))

cflags = ["-std=gnu11", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wno-unused-function",
          "-Wno-unknown-pragmas"]
cflags += ["-O0", "-g"] if DEBUG else ["-O3"]
if NATIVE:
    cflags.append("-march=native")
ldflags = ["-lpthread"]
if os.environ.get("HCEMU_OPENMP", "1") != "0" and sys.platform.startswith("linux"):
    cflags.append("-fopenmp")
    ldflags.append("-fopenmp")
SANITIZERS = ("address", "undefined")
SANITIZE = [k.strip() for k in os.environ.get("HCEMU_SANITIZE", "").split(",") if k.strip()]
if set(SANITIZE) - set(SANITIZERS):
    sys.exit(f"HCEMU_SANITIZE: unknown sanitizer(s) {sorted(set(SANITIZE) - set(SANITIZERS))}; "
             f"known: {', '.join(SANITIZERS)}")
if SANITIZE:
    flag = "-fsanitize=" + ",".join(SANITIZE)
    cflags = [f for f in cflags if not f.startswith("-O")] + ["-O1", "-g", "-fno-omit-frame-pointer", flag]
    ldflags.append(flag)

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
}


def extensions():
    # One extension, hcemu._core: it includes every hcemu/_*.pxi, so the C kernels (and their run-time
    # ISA choice, a process-wide setting) exist once per process.
    exts = []
    for pyx in ["hcemu/_core.pyx"]:
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        exts.append(Extension(
            name,
            [pyx] + CSRC,
            include_dirs=[np.get_include(), "csrc"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        ))
    return cythonize(exts, compiler_directives=directives, nthreads=0, quiet=True)


LIBRARY = "libhcemu.so"
"""The C library of the whole chip (csrc/hcemu_chip.h), beside the extension in the package."""


class build_ext_per_flags(build_ext):
    """Object files of each flag set in their own folder (``build/temp.../<hash of the flags>``); then
    the C library ``hcemu/libhcemu.so`` linked from the extension's objects of ``csrc/`` (no Python in
    it: ``hcemu.get_library()``, docs/embedding.md)."""

    def finalize_options(self):
        super().finalize_options()
        tag = hashlib.sha256(" ".join(cflags + ldflags).encode()).hexdigest()[:10]
        self.build_temp = os.path.join(self.build_temp, tag)

    def run(self):
        super().run()
        objects = self.compiler.object_filenames(CSRC, output_dir=self.build_temp)
        missing = [o for o in objects if not os.path.exists(o)]
        if missing:
            sys.exit(f"libhcemu: the C core's objects {missing} were not built")
        out = os.path.join(os.path.dirname(self.get_ext_fullpath("hcemu._core")), LIBRARY)
        self.compiler.link_shared_object(objects, out, extra_postargs=ldflags + ["-lm", "-Wl,-soname," + LIBRARY])


class build_py_with_headers(build_py):
    """Ship the C core inside the package: headers in ``hcemu/include``, sources in ``hcemu/src``
    (``hcemu.get_include()`` / ``hcemu.get_sources()``, for simulators that compile it in)."""

    def run(self):
        super().run()
        for pattern, sub in (("*.h", "include"), ("*.c", "src")):
            dest = os.path.join(self.build_lib, "hcemu", sub)
            os.makedirs(dest, exist_ok=True)
            for path in glob(os.path.join("csrc", pattern)):
                self.copy_file(path, os.path.join(dest, os.path.basename(path)))


setup(
    ext_modules=extensions(),
    cmdclass={"build_py": build_py_with_headers, "build_ext": build_ext_per_flags},
    package_data={"hcemu": ["*.pxd", "**/*.pxd"]},
)
