"""Low-rank compensation of the ROM quantization error (hcemu.rom.compensate) on a tiny model."""
import numpy as np
import pytest

from model_helpers import TINY_SPEC, write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom import compile_model
    from hcemu.rom.image import RomImage

    root = tmp_path_factory.mktemp("comp")
    gguf_path = root / "tiny.gguf"
    write_tiny_gguf(gguf_path)
    src = GGUFSource(gguf_path)
    out = {}
    for plan in ("int4-sym", "int8"):
        compile_model(src, plan, str(root / f"tiny-{plan}.hcrom"), progress=False)
        out[plan] = RomImage.load(str(root / f"tiny-{plan}.hcrom"))
    return src, out, root, gguf_path


def _err(src, image, name):
    from hcemu.layout import dequantize

    return src.float32(name).astype(np.float64) - dequantize(image.matrix(name)).astype(np.float64)


def test_truncated_svd_shrinks_the_error_and_is_exact_at_full_rank(tiny):
    from hcemu.rom.compensate import ErrorFactors

    src, images, _, _ = tiny
    f = ErrorFactors(src, images["int4-sym"], 64)
    name, key = "blk.1.ffn_up.weight", (1, "ffn_up")
    e = _err(src, images["int4-sym"], name)
    norms = []
    for r in (1, 8, 32, 64):
        a, b = f.pairs(r)[key]
        norms.append(np.linalg.norm(e - b.astype(np.float64) @ a))
    assert norms == sorted(norms, reverse=True) and norms[-1] < 1e-4 * np.linalg.norm(e)  # 64 = min(96, 64)
    sv = f.singular[key]
    a, b = f.pairs(8)[key]
    assert np.linalg.norm(e - b.astype(np.float64) @ a) == pytest.approx(np.sqrt((sv[8:] ** 2).sum()), rel=1e-3)
    with pytest.raises(ValueError, match="outside"):
        f.pairs(65)
    with pytest.raises(ValueError, match=">= 1"):
        ErrorFactors(src, images["int4-sym"], 0)


def test_lossless_imports_get_no_adapter(tiny):
    from hcemu.rom.compensate import ErrorFactors

    src, images, _, _ = tiny
    f = ErrorFactors(src, images["int8"], 8)
    # the tiny GGUF stores attn_k and ffn_up as Q8_0: int8 G32 imports them without loss
    assert all(kind not in ("attn_k", "ffn_up") for _, kind in f.factors)
    assert any(kind == "attn_q" for _, kind in f.factors)


def test_weighting_by_activations_minimizes_the_weighted_error(tiny):
    from hcemu.rom.compensate import ErrorFactors, calibration_rms

    src, images, _, _ = tiny
    rms = calibration_rms(src, np.arange(1, 60) % TINY_SPEC.vocab_size)
    assert rms[(0, "attn_output")].shape == (64,) and rms[(1, "ffn_down")].shape == (96,)
    plain, weighted = ErrorFactors(src, images["int4-sym"], 8), ErrorFactors(src, images["int4-sym"], 8, rms)
    key = (1, "ffn_down")
    e, d = _err(src, images["int4-sym"], "blk.1.ffn_down.weight"), rms[key].astype(np.float64)
    res = {}
    for what, f in (("plain", plain), ("weighted", weighted)):
        a, b = f.pairs(8)[key]
        r = e - b.astype(np.float64) @ a
        res[what] = (np.linalg.norm(r), np.linalg.norm(r * d[None, :]))
    assert res["weighted"][1] < res["plain"][1]  # the output-weighted error is what it minimizes
    assert res["plain"][0] <= res["weighted"][0] * (1 + 1e-6)  # and plain SVD the unweighted one


def test_compile_writes_the_adapter_beside_the_image(tiny, capsys):
    from hcemu.cli import main
    from hcemu.commands.compile import compensation_path
    from hcemu.model.lora import load_lora

    src, _, root, gguf_path = tiny
    out = str(root / "c.hcrom")
    assert main(["compile", str(gguf_path), "--plan", "int4-sym", "--out", out, "--compensate-rank", "8",
                 "--no-progress"]) == 0
    path = compensation_path(out)
    assert path == str(root / "c.lora.gguf")
    ad = load_lora(path, TINY_SPEC)
    assert ad.ranks == {8} and ad.alpha == 0 and all(p.scale == 1.0 for p in ad.pairs.values())
    assert len(ad.pairs) == TINY_SPEC.n_layers * 7
    assert main(["compile", str(gguf_path), "--plan", "int4-sym", "--out", out, "--compensate-rank", "8",
                 "--compensate-weighted", "--no-progress"]) == 1  # the tiny model has no tokenizer
    assert "tokenizer" in capsys.readouterr().err
