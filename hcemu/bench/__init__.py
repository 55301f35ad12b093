"""Measurement harnesses: how fast the emulator itself runs on this host, beside peers run in the same
process (a plain read of the same bytes, numpy, onnxruntime, the float reference).

- :mod:`~hcemu.bench.kernels` — CIM kernels on layer shapes, the read peer, onnxruntime peers;
- :mod:`~hcemu.bench.chip` — the functional chip's decode/prefill and its profile;
- :mod:`~hcemu.bench.host` — the host decode estimate shown beside the modeled silicon.

This layer sits above the chip and the performance models and below the report and the CLI.
"""
