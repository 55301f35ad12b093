# cython: language_level=3
"""hcemu._core — the one compiled module: thin, typed wrappers over csrc/ (see hcemu.h).

Each subsystem lives in its own ``_*.pxi`` included here, so that the C kernels and their
process-wide ISA choice exist once.
"""
include "_cpu.pxi"
include "_vec.pxi"
include "_events.pxi"
include "_attn.pxi"
include "_cim.pxi"
include "_bench.pxi"
include "_rom.pxi"
include "_lora.pxi"
include "_chip.pxi"
