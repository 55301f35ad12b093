"""Benchmarks of the functional chip on SmolLM2-135M, with their peers in the same run.

Read GB/s off ``extra_info['rom_bytes_per_step']`` / mean time; `benchmarks/chip_ratios.py` prints
the target ratios. In the normal test run (--benchmark-disable) each runs once as a smoke test.
"""
import pytest

from hcemu.bench import kernels as kb

pytestmark = pytest.mark.model
CONTEXT = 256


@pytest.fixture(scope="module")
def images(smollm2_gguf):
    from hcemu.rom.cache import ensure_image

    return {plan: ensure_image("smollm2", plan, progress=False) for plan in ("int8", "int4")}


@pytest.fixture(scope="module")
def setups(images):
    from hcemu.bench.chip import decode_setup

    return {plan: decode_setup(path, CONTEXT) for plan, path in images.items()}


def _info(benchmark, **kw):
    benchmark.extra_info.update(model="smollm2-135m", context=CONTEXT, threads=1, **kw)


@pytest.mark.parametrize("plan", ["int8", "int4"])
def test_decode_step(benchmark, setups, plan):
    from hcemu.bench.chip import decode_runner

    benchmark.group = "chip decode, smollm2, context 256"
    s = setups[plan]
    _info(benchmark, peer="hcemu", plan=plan, rom_bytes_per_step=s.rom_bytes_per_step)
    benchmark(decode_runner(s).fn)


def test_decode_step_interpreted(benchmark, images):
    """The same step through the interpreted layer loop (one Python call per kernel)."""
    from hcemu.bench.chip import decode_runner, decode_setup

    benchmark.group = "chip decode, smollm2, context 256"
    s = decode_setup(images["int8"], CONTEXT, compiled=False)
    _info(benchmark, peer="hcemu_interpreted", plan="int8", rom_bytes_per_step=s.rom_bytes_per_step)
    benchmark(decode_runner(s).fn)


@pytest.mark.parametrize("plan", ["int8", "int4"])
def test_plain_read_of_step_bytes(benchmark, setups, plan):
    benchmark.group = "chip decode, smollm2, context 256"
    s = setups[plan]
    _info(benchmark, peer="read", plan=plan, rom_bytes_per_step=s.rom_bytes_per_step)
    benchmark(kb.read_runner(s.rom_bytes_per_step, 1).fn)


def test_reference_decode_step(benchmark, setups, smollm2_gguf):
    from hcemu.bench.chip import reference_decode_runner

    benchmark.group = "chip decode, smollm2, context 256"
    kb.set_blas_threads(1)
    _info(benchmark, peer="numpy_f32_reference")
    benchmark.pedantic(reference_decode_runner(smollm2_gguf, setups["int8"].tokens).fn, rounds=3, iterations=1)


@pytest.mark.parametrize("plan", ["int8", "int4"])
def test_prefill(benchmark, images, setups, plan):
    from hcemu.bench.chip import prefill_runner

    benchmark.group = "chip prefill, smollm2, 256 tokens"
    _info(benchmark, peer="hcemu", plan=plan, tokens=CONTEXT)
    benchmark.pedantic(prefill_runner(images[plan], setups[plan].tokens).fn, rounds=3, iterations=1)
