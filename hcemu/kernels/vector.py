"""The chip's vector unit: float32 RMSNorm, RoPE, SiLU-gate product and residual add (C kernels).

Every function takes C-contiguous float32 arrays and an optional ``out`` (which may be the input,
for in-place use), releases the GIL, and follows docs/numerics.md "Vector unit" bit for bit; the
numpy oracle is :mod:`hcemu.kernels.vector_ref`.

- ``rmsnorm(x, w, eps, out=None)``: x (m, d), w (d,) -> (m, d)
- ``rope(x, cos, sin, out=None, style="normal")``: x (t, heads, head_dim), cos/sin (t, head_dim // 2);
  rotates consecutive pairs ``(x[2j], x[2j+1])`` by angle ``j`` (GGUF llama "normal" RoPE), or with
  ``style="neox"`` the halves ``(x[j], x[j + head_dim/2])``
- ``silu_mul(gate, up, out=None)``: (m, f) -> ``silu(gate) * up``; ``gelu_mul``: ``gelu(gate) * up``
- ``add_(x, y)``: ``x += y`` in place, (m, d); returns x; ``add_rows_(x, b)``: ``x[i] += b`` (biases)
- ``scale_(x, s)``: ``x *= s``; ``softcap_(x, cap)``: ``x = tanh(x / cap) * cap``, in place
- ``moe_route(logits, k, norm, scale)``: mixture-of-experts routing, (t, E) -> experts (t, k), weights (t, k);
  ``axpy_rows_(y, x, w)``: ``y[i] += x[i] * w[i]`` (an expert's weighted output); ``sigmoid_(x)``
- ``exp_f32(x)``: the unit's exp (any shape), for tests and references
"""
from hcemu._core import (add_, add_rows_, axpy_rows_, exp_f32, gelu_mul, moe_route, rmsnorm, rope,  # noqa: F401
                         scale_, sigmoid_, silu_mul, softcap_)

__all__ = ["rmsnorm", "rope", "silu_mul", "gelu_mul", "add_", "add_rows_", "scale_", "softcap_", "moe_route",
           "axpy_rows_", "sigmoid_", "exp_f32"]
