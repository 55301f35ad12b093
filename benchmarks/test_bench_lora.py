"""LoRA adapters on the functional chip (SmolLM2-135M, int4): decode with a rank-16 adapter on all
seven layer matrices against decode without (target >= 0.8x the speed, same run), and switching the
side paths between two resident adapters against one decode step. `benchmarks/lora_ratios.py` prints
the ratios; in the normal test run (--benchmark-disable) each runs once as a smoke test."""
import pytest

pytestmark = pytest.mark.model
CONTEXT = 256


@pytest.fixture(scope="module")
def setups(smollm2_gguf):
    from hcemu.bench.chip import decode_setup
    from hcemu.rom.cache import ensure_image

    path = ensure_image("smollm2", "int4", progress=False)
    return {"plain": decode_setup(path, CONTEXT), "lora": decode_setup(path, CONTEXT, lora_rank=16, lora_adapters=2)}


@pytest.mark.parametrize("which", ["plain", "lora"])
def test_decode_step(benchmark, setups, which):
    from hcemu.bench.chip import decode_runner

    benchmark.group = "chip decode with LoRA, smollm2 int4, context 256"
    s = setups[which]
    benchmark.extra_info.update(model="smollm2-135m", plan="int4", context=CONTEXT, peer=which,
                                lora_rank=16 if which == "lora" else 0,
                                adapter_sram_bytes=s.chip.adapter_sram_bytes)
    benchmark(decode_runner(s).fn)


def test_adapter_switch(benchmark, setups):
    from hcemu.bench.chip import adapter_switch_runner

    benchmark.group = "chip decode with LoRA, smollm2 int4, context 256"
    benchmark.extra_info.update(model="smollm2-135m", plan="int4", peer="switch", lora_rank=16)
    runner = adapter_switch_runner(setups["lora"])
    benchmark(runner.fn)
    assert setups["lora"].chip._selection in (("lora0",), ("lora1",))
