"""The timed step API: values equal the chip's, timelines sum to the silicon model's prices."""
import json
from dataclasses import replace

import numpy as np
import pytest
from model_helpers import TINY_SPEC

from hcemu.chip import Chip
from hcemu.events import Events
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.specs import get_chip
from hcemu.step import STEP_API_VERSION, ChipStepper, region_names

ROWS = [TINY_SPEC.n_layers + 1] + list(range(TINY_SPEC.n_layers)) + [TINY_SPEC.n_layers]  # pipeline order


@pytest.fixture
def image(tiny_image):
    return tiny_image


def _prompt(n, seed):
    return np.random.default_rng(seed).integers(0, TINY_SPEC.vocab_size, n)


def test_values_and_events_equal_the_chip(image):
    st = ChipStepper(image, kv_capacity_tokens=64)
    u = st.open_user()
    chip = Chip(image, kv_capacity_tokens=64)
    prompt = _prompt(9, 0)
    a, b = st.step([(u, prompt)]).items[0], chip.prefill(prompt)
    assert a.kind == "prefill" and a.position == 0 and a.n_tokens == 9
    assert a.logits.tobytes() == b.logits[-1:].tobytes() and a.events == b.events
    np.testing.assert_array_equal(a.bank_rows, b.bank_rows)
    tok = int(np.argmax(a.logits[-1]))
    for _ in range(3):
        a, b = st.step([(u, [tok])]).items[0], chip.decode(tok)
        assert a.kind == "decode" and a.logits.tobytes() == b.logits.tobytes() and a.events == b.events
        tok = int(np.argmax(a.logits[-1]))
    assert st.position(u) == chip.position == 12


def test_summed_timeline_equals_silicon_model(image):
    """Three users prefill, then decode together; per region the steps' busy cycles and energy sum to
    SiliconModel.timing / energy_j of the same events, and one user's decode items to price()'s latency."""
    st = ChipStepper(image, kv_capacity_tokens=64)
    sm = SiliconModel("hc1")
    hz = sm.chip.clock_ghz * 1e9
    users = [st.open_user() for _ in range(3)]
    prompts = {u: _prompt(5 + 3 * u, u) for u in users}
    total = Events(TINY_SPEC.n_layers)
    busy = np.zeros(TINY_SPEC.n_layers + 2)
    energy = 0.0
    prefill_ev = {}
    decode_ev = {u: Events(TINY_SPEC.n_layers) for u in users}
    decode_cycles = {u: 0.0 for u in users}
    res = st.step([(u, prompts[u]) for u in users])
    nxt = {}
    steps = [res]
    for it in res.items:
        prefill_ev[it.user] = it.events
        nxt[it.user] = int(np.argmax(it.logits[-1]))
    for _ in range(4):
        res = st.step([(u, [nxt[u]]) for u in users])
        steps.append(res)
        for it in res.items:
            decode_ev[it.user] += it.events
            decode_cycles[it.user] += sum(s.busy_cycles for s in it.timeline)
            nxt[it.user] = int(np.argmax(it.logits[-1]))
    for res in steps:
        assert [s.region for s in res.regions] == region_names(TINY_SPEC.n_layers)
        total += res.events
        busy += [s.busy_cycles for s in res.regions]
        energy += res.energy_j
    np.testing.assert_allclose(busy, sm.timing(total).total_cycles[ROWS], rtol=1e-12)
    assert energy == pytest.approx(sm.energy_j(total), rel=1e-12)
    for u in users:
        n_prompt = len(prompts[u])
        priced = sm.price(TINY_SPEC, image.plan, n_prompt, 5, prefill_ev[u], decode_ev[u])
        assert decode_cycles[u] / hz / 4 == pytest.approx(priced.latency_s_per_token, rel=1e-12)
        assert decode_ev[u].total()["tokens"] == 4 * (TINY_SPEC.n_layers + 2)


def test_pipelining_and_single_items(image):
    sm = SiliconModel("hc1")
    st = ChipStepper(image, kv_capacity_tokens=64)
    u, v = st.open_user(), st.open_user()
    prompt = _prompt(7, 1)
    it = st.step([(u, prompt)], at_cycle=100.0).items[0]
    per_pass = sm.timing(it.events).cycles_per_pass
    assert it.start_cycle == 100.0
    # alone on an idle pipeline a chunk takes SiliconModel.prefill_seconds (head not the slowest region)
    assert per_pass[TINY_SPEC.n_layers] < per_pass.max()
    assert it.end_cycle - it.start_cycle == pytest.approx(
        sm.prefill_seconds(it.events, len(prompt)) * sm.chip.clock_ghz * 1e9, rel=1e-12)
    starts = [s.start_cycle for s in it.timeline]
    ends = [s.end_cycle for s in it.timeline]
    assert starts == sorted(starts) and ends == sorted(ends)
    # one decode alone takes the sum of its region times; two users' decodes overlap in the pipeline
    st.step([(v, prompt)])
    at = 10 * it.end_cycle
    one = st.step([(u, [1])], at_cycle=at).items[0]
    lat = sm.timing(one.events).total_cycles.sum()
    assert one.end_cycle - one.start_cycle == pytest.approx(lat, rel=1e-12)
    two = st.step([(u, [2]), (v, [2])], at_cycle=one.end_cycle)
    a, b = two.items
    assert a.start_cycle == one.end_cycle and b.start_cycle > a.start_cycle
    assert b.start_cycle < a.end_cycle                      # in flight together
    assert two.end_cycle - two.start_cycle < (a.end_cycle - a.start_cycle) + lat
    # a user's next token waits for its previous one to leave the head, whatever at_cycle says
    nxt = st.step([(v, [3])], at_cycle=0.0).items[0]
    assert nxt.start_cycle >= b.end_cycle
    json.dumps(two.to_dict(logits=True))
    assert two.to_dict()["version"] == STEP_API_VERSION == 1


def test_bad_input(image):
    st = ChipStepper(image, kv_capacity_tokens=16)
    u = st.open_user()
    with pytest.raises(ValueError, match="at least one"):
        st.step([])
    with pytest.raises(ValueError, match="twice"):
        st.step([(u, [1]), (u, [2])])
    with pytest.raises(KeyError, match="no open user 7"):
        st.step([(7, [1])])
    with pytest.raises(TypeError, match="work item"):
        st.step([3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        st.step([(u, [TINY_SPEC.vocab_size])])
    with pytest.raises(ValueError, match="do not fit the KV cache"):
        st.step([(u, np.zeros(17, np.int64))])
    with pytest.raises(ValueError, match="at_cycle"):
        st.step([(u, [1])], at_cycle=-1)
    assert st.position(u) == 0          # nothing ran
    st.close_user(u)
    with pytest.raises(KeyError):
        st.position(u)
    small = replace(get_chip("hc1"), kv_sram_bytes=2 * Chip(image, kv_capacity_tokens=16).kv.nbytes)
    st = ChipStepper(image, chip=small, kv_capacity_tokens=16)
    st.open_user(), st.open_user()
    with pytest.raises(ValueError, match="KV SRAM"):
        st.open_user()


def test_separate_steppers_run_in_threads(image):
    """The documented threading rule: steppers that share only the (read-only) image may be stepped
    from different threads at once and compute what they compute alone."""
    from concurrent.futures import ThreadPoolExecutor

    def run(seed):
        st = ChipStepper(image, kv_capacity_tokens=64)
        u = st.open_user()
        out = [st.step([(u, _prompt(20, seed))]).items[0]]
        for _ in range(6):
            out.append(st.step([(u, [int(np.argmax(out[-1].logits[-1]))])]).items[0])
        return [(it.logits.tobytes(), it.events.counts.tobytes(), it.end_cycle) for it in out]

    alone = [run(s) for s in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, range(4)))
    assert together == alone
