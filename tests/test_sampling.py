"""Token selection shared by the chip and the float reference."""
import numpy as np
import pytest

from hcemu.sampling import Sampler


def test_greedy_and_seeded_sampling():
    logits = np.array([0.0, 3.0, 1.0, 2.9], np.float32)
    assert Sampler().pick(logits, np.random.default_rng(0)) == 1
    s = Sampler(temperature=0.7, top_k=2, seed=5)
    a = [s.pick(logits, r) for r in [s.make_rng()] for _ in range(20)]
    b = [s.pick(logits, r) for r in [s.make_rng()] for _ in range(20)]
    assert a == b and set(a) <= {1, 3}


def test_top_k_larger_than_vocab_and_top_p():
    logits = np.array([5.0, 0.0, -5.0])
    rng = np.random.default_rng(1)
    assert {Sampler(1.0, top_k=10).pick(logits, rng) for _ in range(50)} <= {0, 1, 2}
    assert {Sampler(1.0, top_p=0.5).pick(logits, rng) for _ in range(50)} == {0}


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        Sampler(**kw)
