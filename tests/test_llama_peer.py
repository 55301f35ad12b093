"""The chip against llama.cpp on the same k-quant / MXFP4 GGUF (needs the optional 'peer' extra)."""
from __future__ import annotations

import numpy as np
import pytest

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
    pytest.importorskip("llama_cpp")
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
    pytest.importorskip("llama_cpp")
    from hcemu.bench.llama_peer import llama_decode_runner

    with pytest.raises(ValueError, match="at least 2 tokens"):
        llama_decode_runner(smollm2_gguf, [1])


def test_ggml_rounding_q8_0_is_the_chip_code_times_an_fp16_scale():
    from hcemu.bench.llama_peer import ggml_rounded_input
    from hcemu.kernels.cim import quantize_activations

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 96)) * np.array([1e-3, 1.0, 300.0])[:, None]).astype(np.float32)
    x[0, :32] = 0.0                                              # an all-zero block stays zero
    q, sc = quantize_activations(x, 32)
    want = q.astype(np.float32).reshape(3, 3, 32) * sc.astype(np.float16).astype(np.float32)[..., None]
    got = ggml_rounded_input(x, "Q5_0")
    np.testing.assert_array_equal(got, want.reshape(3, 96))
    assert not got[0, :32].any()
    # without the fp16 scale: exactly the chip's rounding
    chip = (q.astype(np.float32).reshape(3, 3, 32) * sc[..., None]).reshape(3, 96)
    np.testing.assert_array_equal(ggml_rounded_input(x, "Q8_0", scale_fp16=False), chip)


def test_ggml_rounding_q8_k_is_one_signed_scale_per_256():
    from hcemu.bench.llama_peer import ggml_rounded_input

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    x[0, 7] = 9.0                       # positive extreme: iscale < 0, the extreme maps to code -127
    x[1, 300] = -9.0                    # negative extreme in the second super-block of row 1
    x[1, 0:256] *= 1e-2
    x[1, 5] = 0.04                      # a block with a small positive extreme
    got = ggml_rounded_input(x, "Q6_K")
    for r, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
        blk = x[r, 256 * b: 256 * (b + 1)]
        mx = blk[np.abs(blk).argmax()]
        iscale = np.float32(-127) / mx
        d = np.float32(1) / iscale
        codes = np.minimum(np.rint(blk * iscale), 127)
        np.testing.assert_array_equal(got[r, 256 * b: 256 * (b + 1)], (codes * d).astype(np.float32))
        assert np.abs(codes).max() == 127
        assert np.abs(got[r, 256 * b: 256 * (b + 1)] - blk).max() <= abs(d) * 0.5 * (1 + 1e-5)
    # one scale for 256 inputs: a large value in the super-block coarsens the small ones, unlike Q8_0 per 32
    assert np.abs(got[0, 32:64] - x[0, 32:64]).max() > np.abs(ggml_rounded_input(x, "Q8_0")[0, 32:64] - x[0, 32:64]).max()
    assert not ggml_rounded_input(np.zeros((1, 256), np.float32), "Q4_K").any()
    with pytest.raises(ValueError, match="multiple of 256"):
        ggml_rounded_input(x[:, :288], "Q4_K")
