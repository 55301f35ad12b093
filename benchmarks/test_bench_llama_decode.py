"""Decode speed of the chip against llama.cpp on the same k-quant GGUF (the optional ``peer`` extra).

SmolLM2-135M re-quantized by llama.cpp to Q4_K_M, Q6_K and Q3_K_M, compiled with plan ``gguf`` (every
tensor in the file's own format), decoding at context 256 on one thread, chip and llama.cpp
(``n_threads=1``) interleaved in the same process (:func:`hcemu.bench.llama_peer.decode_vs_llama`).
The target (docs/formats.md "Speed"): the chip decodes faster than llama.cpp on each file, asserted
as a same-run ratio when the benchmark runs (``--benchmark-enable``). The smoke run (the normal test
run) takes Q4_K_M only (re-quantizing and compiling a file takes ~10-15 s here) and asserts only that
both decoded.
"""
import pytest

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.model, pytest.mark.slow]

FTYPES = ("Q4_K_M", "Q6_K", "Q3_K_M")


@pytest.mark.parametrize("ftype", FTYPES)
def test_decode_faster_than_llama_cpp(benchmark, smollm2_gguf, tmp_path_factory, ftype):
    from hcemu.bench.llama_peer import decode_vs_llama

    full = not benchmark.disabled
    if not full and ftype != FTYPES[0]:
        pytest.skip(f"smoke run: {FTYPES[0]} only")
    work = tmp_path_factory.mktemp(f"peer-{ftype}")
    res = {}

    def run():
        res.update(decode_vs_llama(work, (ftype,), rounds=5 if full else 1, min_time_s=0.2 if full else 0.0))

    benchmark.group = "chip vs llama.cpp decode, smollm2, context 256, 1 thread"
    benchmark.pedantic(run, rounds=1, iterations=1)
    r = res["files"][ftype]
    benchmark.extra_info.update(ftype=ftype, **r)
    assert r["chip_tok_s"] > 0 and r["llama_tok_s"] > 0
    if full:
        assert r["chip_over_llama"] > 1.0, r
