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


def _frequencies(sampler, logits, n=4000, seed=1):
    rng = np.random.default_rng(seed)
    picks = np.array([sampler.pick(logits, rng) for _ in range(n)])
    return np.bincount(picks, minlength=logits.size) / n


def test_sampling_follows_the_softmax_and_top_k_beyond_the_vocab_changes_nothing():
    logits = np.array([1.0, 0.5, 0.0])
    p = np.exp(logits) / np.exp(logits).sum()          # 0.506, 0.307, 0.186
    freq = _frequencies(Sampler(1.0), logits)
    assert np.abs(freq - p).max() < 0.03               # 4000 draws: 3 sigma is about 0.024
    # top_k >= vocab keeps every token: the same draws as no top_k from the same generator
    assert np.array_equal(_frequencies(Sampler(1.0, top_k=10), logits), freq)


def test_top_p_keeps_the_smallest_head_reaching_p():
    logits = np.array([1.0, 0.5, 0.0])
    p = np.exp(logits) / np.exp(logits).sum()
    assert _frequencies(Sampler(1.0, top_p=0.5), logits, n=200)[0] == 1.0   # 0.506 >= 0.5: token 0 alone
    freq = _frequencies(Sampler(1.0, top_p=0.6), logits)                    # tokens 0 and 1, renormalized
    assert freq[2] == 0.0 and abs(freq[0] - p[0] / (p[0] + p[1])) < 0.03
    freq_k = _frequencies(Sampler(1.0, top_k=2), logits)                    # the same two by top-k
    assert freq_k[2] == 0.0 and abs(freq_k[0] - p[0] / (p[0] + p[1])) < 0.03


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        Sampler(**kw)
