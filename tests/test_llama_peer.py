"""The chip against llama.cpp on the same k-quant / MXFP4 GGUF (needs the optional 'peer' extra)."""
from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

# Measured (docs/formats.md, "Against llama.cpp on the same file": fp16 KV, 255 positions of the licence
# text, llama-cpp-python 0.3.36 on an AVX-512 host). These are validations, not pins: nothing in the chip
# is tuned to llama.cpp.
#  * The chip's own error against the float reference of the file is below llama.cpp's (measured
#    0.0035-0.0047 against 0.0070-0.0089 KLD): llama.cpp rounds k-quant products' inputs per 256.
#  * The chip disagrees with llama.cpp about as much as llama.cpp's two attention kernels (flash
#    attention on / off, same file) disagree with each other: KLD ratio measured 0.96-1.26, top-1
#    within -2.7 / +2.8 points of llama.cpp's self-agreement.
#  * Absolute: KLD mean <= 0.01 holds for Q6_K, Q4_K_M, Q3_K_M (0.0088, 0.0088, 0.0096) and is missed by
#    Q5_K_M (0.0110); asserted with room for another host's llama.cpp kernels, whose float arithmetic
#    moves llama.cpp by as much as its own attention kernels do (0.007-0.0095). Q2_K is reported in the
#    docs, not run here (each case takes ~25 s of the default suite).
KLD_MAX = {"Q6_K": 0.0125, "Q5_K_M": 0.014, "Q4_K_M": 0.0125, "Q3_K_M": 0.0125}
KLD_OVER_SELF_MAX = 1.5
TOP1_BELOW_SELF_MAX = 0.04
TOP1_MIN = 0.90


@pytest.mark.slow
@pytest.mark.parametrize("ftype", sorted(KLD_MAX))
def test_chip_matches_llama_cpp_on_the_same_file(smollm2_gguf, tmp_path, ftype):
    from hcemu.bench.llama_peer import compare_with_llama, llama_quantize
    from hcemu.model.texts import licence_text
    from hcemu.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(smollm2_gguf)
    path = tmp_path / f"smollm2-{ftype}.gguf"
    llama_quantize(smollm2_gguf, path, ftype)
    ids = tokenizer.encode(licence_text())[:256]
    res = compare_with_llama(path, ids, tmp_path / "m.hcrom", split=True)
    print(ftype, res)
    assert res["chip_vs_reference"]["kld_mean"] < res["llama_vs_reference"]["kld_mean"], res
    assert res["kld_mean"] <= KLD_MAX[ftype], res
    assert res["kld_mean"] <= KLD_OVER_SELF_MAX * res["llama_vs_itself"]["kld_mean"], res
    assert res["same_top1"] >= TOP1_MIN, res
    assert res["same_top1"] >= res["llama_vs_itself"]["same_top1"] - TOP1_BELOW_SELF_MAX, res


def test_decode_runner_needs_a_context(smollm2_gguf):
    from hcemu.bench.llama_peer import llama_decode_runner

    with pytest.raises(ValueError, match="at least 2 tokens"):
        llama_decode_runner(smollm2_gguf, [1])
