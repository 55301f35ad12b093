"""Per-request prices of a hard-coded chip, vectorized over many requests: what the serving simulator
consumes (it never looks at events or kernels).

For requests of ``n_prompt`` tokens in and ``n_generated`` out (int arrays), :func:`chip_request_prices`
returns

* ``inject_s``: seconds the prompt's tokens take to enter the region pipeline back to back when they
  have it to themselves (``n_prompt`` x the slowest region's mean prefill pass), and ``fill_s``: the
  remaining latency until the first token leaves the last region (the sum of the mean passes minus the
  slowest); ``inject_s + fill_s`` is :meth:`hcemu.perf.silicon.SiliconModel.prefill_seconds`;
* ``decode_s_per_token``: one user's mean decode latency per token and ``decode_slowest_s`` the slowest
  region's mean decode pass (from :func:`hcemu.perf.silicon.decode_sweep`): a decoding user holds
  ``decode_slowest_s / decode_s_per_token`` of the pipeline's injection slots;
* ``prefill_energy_j``, ``decode_energy_j_per_token``: dynamic energy;
* ``kv_bytes``: KV SRAM the request's context (``n_prompt + n_generated - 1`` tokens) occupies.
"""
from __future__ import annotations

import numpy as np

from hcemu.model.spec import ModelSpec
from hcemu.perf.analytic import kv_bytes_per_token, pass_coefficients
from hcemu.perf.area import head_lane_scale
from hcemu.perf.silicon import _energy_pj, _region_cycles, decode_sweep
from hcemu.perf.specs import ChipSpec, get_chip


def _prefill(spec: ModelSpec, plan, chip: ChipSpec, n_prompt: np.ndarray):
    """(mean pass cycles of a layer, the head and the embedding region (n, 3), dynamic pJ (n,)) of
    prefills of ``n_prompt`` tokens."""
    co = pass_coefficients(spec, plan)
    p = n_prompt.astype(np.float64)[:, None]
    layer = co.layer_const * p + co.layer_per_key * (p * (p + 1) / 2)   # positions 0 .. p-1 attend 1 .. p keys
    head = np.broadcast_to(co.head_const.astype(np.float64), layer.shape)  # the head runs on the last token
    embed = co.embed_const * p
    per_pass = np.stack([sum(_region_cycles(layer, chip, 1.0)) / p[:, 0],
                         sum(_region_cycles(head, chip, head_lane_scale(spec, plan, chip))),
                         sum(_region_cycles(embed, chip, 1.0)) / p[:, 0]], axis=1)
    energy = spec.n_layers * _energy_pj(layer, chip) + _energy_pj(head, chip) + _energy_pj(embed, chip)
    return per_pass, energy


def chip_request_prices(spec: ModelSpec, plan, chip: ChipSpec | str, n_prompt, n_generated,
                        chunk: int = 65536) -> dict[str, np.ndarray]:
    """Prices of each request on ``chip`` (see the module docstring); arrays of the requests' shape.

    Requests with ``n_generated == 1`` have no decode step: their decode figures are those of a 2-token
    request and go unused. Computed in chunks of ``chunk`` requests to bound memory."""
    chip = get_chip(chip)
    n_prompt = np.asarray(n_prompt, dtype=np.int64).reshape(-1)
    n_generated = np.asarray(n_generated, dtype=np.int64).reshape(-1)
    if n_prompt.shape != n_generated.shape:
        raise ValueError(f"n_prompt and n_generated differ in shape: {n_prompt.shape} vs {n_generated.shape}")
    if n_prompt.size and (n_prompt.min() < 1 or n_generated.min() < 1):
        raise ValueError("every request needs n_prompt >= 1 and n_generated >= 1")
    hz = chip.clock_ghz * 1e9
    keys = ("inject_s", "fill_s", "decode_s_per_token", "decode_slowest_s", "prefill_energy_j",
            "decode_energy_j_per_token", "kv_bytes")
    out = {k: np.empty(n_prompt.size) for k in keys}
    for i in range(0, n_prompt.size, chunk):
        p, g = n_prompt[i:i + chunk], n_generated[i:i + chunk]
        per_pass, e_pre = _prefill(spec, plan, chip, p)
        slow = per_pass.max(axis=1)
        out["inject_s"][i:i + chunk] = p * slow / hz
        total = spec.n_layers * per_pass[:, 0] + per_pass[:, 1] + per_pass[:, 2]
        out["fill_s"][i:i + chunk] = (total - slow) / hz
        out["prefill_energy_j"][i:i + chunk] = e_pre * 1e-12
        dec = decode_sweep(spec, plan, chip, p, np.maximum(g, 2))
        out["decode_s_per_token"][i:i + chunk] = dec["latency_s_per_token"]
        out["decode_slowest_s"][i:i + chunk] = dec["slowest_region_s"]
        out["decode_energy_j_per_token"][i:i + chunk] = dec["dynamic_energy_j_per_token"]
        out["kv_bytes"][i:i + chunk] = (p + g - 1) * kv_bytes_per_token(spec, plan)
    return out
