"""Low-rank compensation of the ROM's quantization error, stored as a LoRA adapter for the SRAM.

For every layer matrix, the error the compiler left, ``E = W - Q(W)`` (source float32 weights minus
what the ROM image represents, :func:`hcemu.layout.dequantize`), is approximated by a truncated SVD
of rank r: ``E ~= B A`` with ``B = U_r sqrt(S_r)`` (n x r) and ``A = sqrt(S_r) V_r^T`` (r x k), the
singular values split evenly so that both factors quantize well to int8 (computed from the smaller
Gram matrix's eigenvectors, :func:`_truncated_svd`). Optionally the error is
weighted by the input channels' RMS ``d`` measured on a calibration text (LQER / EoRA family): the SVD
of ``E diag(d)`` minimizes the error of the *outputs* ``E x`` rather than of the weights, and
``A = sqrt(S_r) V_r^T diag(1/d)``. The result is a llama.cpp LoRA adapter with ``alpha = 0``
(scale 1), which the chip applies on its SRAM side path: ``y = Q(W) x + B (A x)``. Matrices the
compiler imported without loss (error exactly 0) get no adapter.
"""
from __future__ import annotations

import numpy as np

from hcemu.layout import dequantize
from hcemu.model.lora import write_lora
from hcemu.model.spec import LAYER_MATRICES


def _truncated_svd(e: np.ndarray, rank: int):
    """``(b, a, singular values)`` with ``b @ a`` the best rank-``rank`` approximation of ``e`` (n x k,
    float64) and the singular values split evenly between the factors. Computed from the eigenvectors
    of the smaller Gram matrix (``e.T @ e`` or ``e @ e.T``): one matrix product and a symmetric
    eigensolver instead of a full SVD, many times faster; ``b @ a`` is ``e`` projected on the top
    singular subspace, so it is exact where the rank covers ``e``'s. Directions with a singular value
    below 1e-12 of the largest are dropped (the rank may come out smaller)."""
    n, k = e.shape
    right = k <= n
    w, vecs = np.linalg.eigh(e.T @ e if right else e @ e.T)
    order = np.argsort(w)[::-1]
    sv = np.sqrt(np.maximum(w[order], 0.0))
    keep = min(rank, int((sv > 1e-12 * max(sv[0], 1e-300)).sum()))
    vecs = vecs[:, order[:keep]]
    root = np.sqrt(sv[:keep])
    if right:  # vecs = V_r: e V_r = U_r S_r
        b = (e @ vecs) / root[None, :]
        a = root[:, None] * vecs.T
    else:  # vecs = U_r: U_r^T e = S_r V_r^T
        b = vecs * root[None, :]
        a = (vecs.T @ e) / root[:, None]
    return b, a, sv


class ErrorFactors:
    """Truncated SVD factors of every layer matrix's ROM quantization error, up to ``max_rank``.

    ``factors[(layer, kind)] = (b, a)``: float32 (n, R) and (R, k), R = min(max_rank, n, k), ordered by
    singular value, so :meth:`pairs` of any rank r <= max_rank is a slice; ``singular[(layer, kind)]``:
    the singular values (float64, all of them) of the (weighted) error.
    """

    def __init__(self, source, image, max_rank: int, input_rms: dict | None = None, progress: bool = False):
        if int(max_rank) < 1:
            raise ValueError(f"compensation rank must be >= 1, got {max_rank}")
        spec = image.spec
        if source.spec.n_layers != spec.n_layers or source.spec.d_model != spec.d_model:
            raise ValueError(f"the source ({source.spec.name}) is not the image's model ({spec.name})")
        self.max_rank = int(max_rank)
        self.weighted = input_rms is not None
        self.factors, self.singular = {}, {}
        keys = [(i, k) for i in range(spec.n_layers) for k in LAYER_MATRICES]
        if progress:
            from tqdm import tqdm

            keys = tqdm(keys, desc="compensation SVD", unit="matrix")
        for layer, kind in keys:
            name = f"blk.{layer}.{kind}.weight"
            err = source.float32(name).astype(np.float64) - dequantize(image.matrix(name)).astype(np.float64)
            if not err.any():
                continue  # imported losslessly: nothing to compensate
            d = None
            if input_rms is not None:
                d = np.asarray(input_rms[(layer, kind)], np.float64)
                d = np.maximum(d, 1e-6 * max(d.max(), 1e-30))
                err = err * d[None, :]
            b, a, sv = _truncated_svd(err, self.max_rank)
            if d is not None:
                a = a / d[None, :]
            self.factors[(layer, kind)] = (b.astype(np.float32), a.astype(np.float32))
            self.singular[(layer, kind)] = sv

    def pairs(self, rank: int) -> dict:
        """``{(layer, kind): (a, b)}`` of rank ``min(rank, the matrix's)`` (for write_lora / LoraAdapter)."""
        if not 1 <= int(rank) <= self.max_rank:
            raise ValueError(f"rank {rank} is outside 1..{self.max_rank} (the SVD was truncated there)")
        return {key: (np.ascontiguousarray(a[:rank]), np.ascontiguousarray(b[:, :rank]))
                for key, (b, a) in self.factors.items()}

    def adapter(self, rank: int, name: str | None = None):
        """The rank-``rank`` compensation as a :class:`hcemu.model.lora.LoraAdapter` (scale 1)."""
        from hcemu.model.lora import LoraAdapter, LoraPair

        pairs = {key: LoraPair(a, b, 1.0) for key, (a, b) in self.pairs(rank).items()}
        return LoraAdapter(name or f"compensation-r{rank}", 0.0, 1.0, pairs)

    def write(self, path, rank: int) -> None:
        """Write the rank-``rank`` compensation as a llama.cpp LoRA GGUF (alpha 0: scale = the user scale, 1)."""
        write_lora(path, self.pairs(rank), alpha=0.0, name=f"hcemu ROM compensation r{rank}")


def calibration_rms(source, tokens) -> dict:
    """Input-channel RMS of every layer matrix of the float reference over ``tokens``."""
    from hcemu.model.reference import FloatLlama

    return FloatLlama(source).input_rms(tokens)
