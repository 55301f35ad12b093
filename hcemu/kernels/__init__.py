"""The chip's compute units as Python calls: thin wrappers over the compiled C core (``hcemu._core``,
built from ``csrc/``) and, beside each, the numpy oracle the tests hold it to bit for bit.

- :mod:`~hcemu.kernels.cim` — compute-in-memory products over ROM-resident weights; oracle
  :mod:`~hcemu.kernels.cim_ref`.
- :mod:`~hcemu.kernels.attention` — the SRAM KV cache and streaming attention; oracle
  :mod:`~hcemu.kernels.attention_ref`.
- :mod:`~hcemu.kernels.lora` — LoRA adapters in SRAM, the side path beside a ROM product; oracle
  :mod:`~hcemu.kernels.lora_ref`.
- :mod:`~hcemu.kernels.vector` — the vector unit (norms, RoPE, SiLU, residual add); oracle
  :mod:`~hcemu.kernels.vector_ref`.

The oracles need no compiled code; the wrappers import ``hcemu._core`` when they are imported.
"""
