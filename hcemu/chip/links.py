"""Activations on a chip-to-chip link: the message one token's residual stream becomes, and back.

Formats are :class:`hcemu.formats.LinkFormat` (``docs/system.md``, "Link formats"):

* ``fp32``: the float32 values as computed (lossless);
* ``bf16``: the upper 16 bits of each float32 after rounding to nearest, ties to even (the receiver
  widens them back with 16 zero bits);
* ``int8``: the activation quantizer of the CIM inputs (:func:`hcemu.kernels.cim.quantize_activations`,
  per block of 32 values: scale = amax / 127, code = round-half-even(x * 127 / amax) clipped to
  +-127) with its float32 scales; the receiver multiplies code x scale in float32.

A :class:`LinkMessage` holds the arrays that cross the link; :attr:`LinkMessage.nbytes` equals
``fmt.message_bytes(d_model) * t``, the count the link events carry.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcemu.formats import LinkFormat, get_link_format
from hcemu.kernels.cim import quantize_activations


@dataclass(frozen=True)
class LinkMessage:
    """What crosses a link for ``t`` tokens: ``values`` (t, d) in the format's value type
    (float32, uint16 bfloat16 bits or int8 codes) and, for block formats, ``scales`` float32 (t, d / block)."""

    fmt: LinkFormat
    values: np.ndarray
    scales: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + (0 if self.scales is None else self.scales.nbytes))


def _check(x) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise ValueError(f"link activations must be a float32 (t, d) array, got "
                         f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
    if not np.isfinite(x).all():
        raise ValueError("link activations hold NaN or infinity")
    return np.ascontiguousarray(x)


def encode(x: np.ndarray, fmt) -> LinkMessage:
    """The message for activations ``x`` float32 (t, d) in link format ``fmt`` (name or LinkFormat)."""
    fmt = get_link_format(fmt)
    x = _check(x)
    if fmt.name == "fp32":
        return LinkMessage(fmt, x.copy(), None)
    if fmt.name == "bf16":
        u = x.view(np.uint32)
        rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
        return LinkMessage(fmt, (rounded >> np.uint32(16)).astype(np.uint16), None)
    if fmt.name == "int8":
        q, scales = quantize_activations(x, fmt.block)
        return LinkMessage(fmt, q, scales)
    raise ValueError(f"no encoder for link format {fmt.name!r}")


def decode(msg: LinkMessage) -> np.ndarray:
    """The receiving die's float32 (t, d) activations (a fresh, writeable array)."""
    name = msg.fmt.name
    if name == "fp32":
        return msg.values.copy()
    if name == "bf16":
        return (msg.values.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if name == "int8":
        t, d = msg.values.shape
        block = msg.fmt.block
        x = msg.values.reshape(t, d // block, block).astype(np.float32) * msg.scales[..., None]
        return np.ascontiguousarray(x.reshape(t, d), dtype=np.float32)
    raise ValueError(f"no decoder for link format {name!r}")
