"""M = 1 throughput of the block-format CIM kernels (k-quants, Q5_0/Q5_1, MXFP4, NVFP4) against the plain
streaming read of the same bytes, on the Llama 3.1 8B layer shapes, one thread.

Run: ``python -m pytest benchmarks/test_bench_blocks.py --benchmark-enable`` (default runs are smoke
tests: each case once, warm). ``extra_info`` as benchmarks/test_bench_cim.py (peer hcemu | read);
GB/s = weight_bytes / time, weight_bytes the bytes one product streams (codes in their host slots
and every scale array). The target: each format's kernel at >= 90% of the read of its own bytes
(the ``read`` case of the same format and shape), measured cold (copies rotated past the L3).
"""
from __future__ import annotations

import gc

import pytest

import hcemu
from hcemu.bench import kernels as kb
from hcemu.formats import BLOCK_KINDS, WeightFormat

SHAPES = kb.LLAMA31_8B_SHAPES[:3]  # attn_q/output, ffn_gate/up, ffn_down (the 128256-row head: int formats)


def _cases():
    return [pytest.param((n, k), peer, kind, id=f"llama3.1-8b-{n}x{k}-{peer}-{kind}-m1-t1")
            for n, k in SHAPES for kind in BLOCK_KINDS for peer in ("hcemu", "read")]


@pytest.mark.parametrize("shape,peer,kind", _cases())
def test_block_kernel_throughput(benchmark, shape, peer, kind):
    n, k = shape
    fmt = WeightFormat.of_kind(kind)
    cold = not benchmark.disabled
    if peer == "hcemu":
        runner = kb.cim_runner(fmt, n, k, 1, 1, cold)
    else:
        runner = kb.read_runner(kb.synthetic_weights(fmt, 16, k).nbytes * -(-n // 16), 1, cold)
    benchmark.group = f"llama3.1-8b {n}x{k} {kind} m=1"
    benchmark.extra_info.update(weight_bytes=runner.weight_bytes, macs=runner.macs, format=kind, m=1, threads=1,
                                peer=peer, copies=runner.copies, isa=hcemu.capabilities()["active"], n=n, k=k)
    if benchmark.disabled:
        benchmark(runner.fn)
    else:
        benchmark.pedantic(runner.fn, rounds=5, iterations=3, warmup_rounds=1)
    assert runner.weight_bytes > 0
    del runner
    gc.collect()
