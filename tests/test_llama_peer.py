"""The chip against llama.cpp on the same k-quant / MXFP4 GGUF (needs the optional 'peer' extra)."""
from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

# issue targets: 4-bit and wider formats within KLD 0.01 and 95% same top-1 of llama.cpp; Q3_K, Q2_K measured
WIDE = {"Q4_K_M": (0.01, 0.95), "Q5_K_M": (0.01, 0.95), "Q6_K": (0.01, 0.95)}


@pytest.mark.slow
@pytest.mark.parametrize("ftype", sorted(WIDE) + ["Q3_K_M", "Q2_K"])
def test_chip_matches_llama_cpp_on_the_same_file(smollm2_gguf, tmp_path, ftype):
    from hcemu.bench.llama_peer import compare_with_llama, llama_quantize
    from hcemu.model.texts import licence_text
    from hcemu.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(smollm2_gguf)
    path = tmp_path / f"smollm2-{ftype}.gguf"
    llama_quantize(smollm2_gguf, path, ftype)
    ids = tokenizer.encode(licence_text())[:256]
    res = compare_with_llama(path, ids, tmp_path / "m.hcrom")
    print(ftype, res)
    if ftype in WIDE:
        kld_max, top1_min = WIDE[ftype]
        assert res["kld_mean"] <= kld_max and res["same_top1"] >= top1_min, res
    else:
        assert res["kld_mean"] < 1.0, res
