"""The chip with a LoRA adapter against llama.cpp with the same adapter GGUF (llama-cpp-python's
``lora_path``; optional extra ``peer``): the same KLD bound as against the float reference."""
import numpy as np
import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]
llama_cpp = pytest.importorskip("llama_cpp")


def test_chip_with_adapter_matches_llama_cpp(smollm2_gguf, tmp_path):
    from hcemu.chip import Chip
    from hcemu.chip.evaluate import compare_logits
    from hcemu.model.lora import load_lora, random_lora_pairs, write_lora
    from hcemu.model.texts import licence_text
    from hcemu.model.tokenizer import Tokenizer
    from hcemu.rom.cache import ensure_image
    from hcemu.rom.image import RomImage

    image = RomImage.load(ensure_image(smollm2_gguf, "int4", out=str(tmp_path / "s.hcrom"), progress=False))
    path = str(tmp_path / "r16.gguf")
    write_lora(path, random_lora_pairs(image.spec, 16, seed=1, relative=0.25), alpha=32, dtype="F16")
    ids = np.asarray(Tokenizer.from_gguf(smollm2_gguf).encode(licence_text())[:256], np.int64)
    llm = llama_cpp.Llama(model_path=smollm2_gguf, lora_path=path, n_ctx=512, logits_all=True, verbose=False,
                          n_threads=1)
    llm.eval(ids.tolist())
    peer = np.asarray(llm.scores[: len(ids)], np.float32)[:-1]
    chip = Chip(image, kv_capacity_tokens=300)
    chip.load_adapter(load_lora(path, image.spec))
    got = chip.prefill(ids, all_logits=True, adapter="r16").logits[:-1]
    kld = compare_logits(peer, got, ids[1:]).kld.mean()
    assert kld <= 0.01, kld
