"""numpy reference of the LoRA side path (docs/numerics.md "LoRA adapters"): the test oracle, bit for bit."""
from __future__ import annotations

import numpy as np

from hcemu.kernels.cim_ref import cim_matmul_ref, quantize_activations_ref
from hcemu.kernels.vector_ref import lane_sum
from hcemu.layout import PackedWeights


def dot16_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float32 (m, n): row i of x (m, k) dotted with row o of w (n, k) in the vector unit's lane order."""
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float32)
    return lane_sum(x[:, None, :] * w[None, :, :])


def adapter_apply_ref(a, b, q, act_scales, x, y, col: int = 0) -> np.ndarray:
    """A copy of float32 ``y`` (m, ld) with ``B (A x)`` added to columns ``col .. col+n-1``.

    int8 form (``a``, ``b`` PackedWeights r x k, n x r): ``u = CIM(A; q, act_scales)``,
    ``(uq, us) = quantize(u, group r)``, ``v = CIM(B; uq, us)``. fp16 form (``a``, ``b`` float16
    arrays (r, k), (n, r)): ``u = dot16(x, A)``, ``v = dot16(u, B)``. Then ``y = y + v`` (float32).
    """
    y = np.array(y, dtype=np.float32, copy=True)
    if isinstance(a, PackedWeights):
        u = cim_matmul_ref(q, act_scales, a)
        if b.k > a.n:  # B held as one zero-padded block: pad A x with zeros (amax and codes unchanged)
            u = np.concatenate([u, np.zeros((u.shape[0], b.k - a.n), np.float32)], axis=1)
        uq, us = quantize_activations_ref(u, b.k)
        v = cim_matmul_ref(uq, us, b)
    else:
        u = dot16_ref(x, a.astype(np.float32))
        v = dot16_ref(u, b.astype(np.float32))
    n = v.shape[1]
    y[:, col:col + n] = y[:, col:col + n] + v
    return y
