"""The chip against llama.cpp on the same k-quant / MXFP4 GGUF (needs the optional 'peer' extra)."""
from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

# Bounds with margin over what was measured (docs/formats.md: fp16 KV, 255 positions): Q6_K 0.0088 / 95.3%,
# Q4_K_M 0.0088 / 92.2%, Q3_K_M 0.0096 / 94.9%. The targets KLD <= 0.01 and top-1 >= 95% are reported
# there, not asserted (Q4_K_M misses the top-1 one).
BOUNDS = {"Q6_K": (0.015, 0.92), "Q4_K_M": (0.015, 0.90), "Q3_K_M": (0.02, 0.90)}


@pytest.mark.slow
@pytest.mark.parametrize("ftype", sorted(BOUNDS))
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
    kld_max, top1_min = BOUNDS[ftype]
    assert res["kld_mean"] <= kld_max and res["same_top1"] >= top1_min, res


def test_decode_runner_needs_a_context(smollm2_gguf):
    from hcemu.bench.llama_peer import llama_decode_runner

    with pytest.raises(ValueError, match="at least 2 tokens"):
        llama_decode_runner(smollm2_gguf, [1])
