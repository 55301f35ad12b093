"""Kernel throughput measurement: hcemu's CIM kernels and their peers on the same shapes, same bytes.

Used by ``benchmarks/test_bench_cim.py``, ``benchmarks/ratios.py`` and ``hcemu kernels``. Each
*runner* is a zero-argument callable doing one product (or one read of the same bytes), rotating
among enough copies of the weights that they are cold (total >= ``COLD_FACTOR`` x the L3 cache).

Peers: ``read`` (plain C streaming read of the same bytes, several interleaved streams with
software prefetch), ``numpy_f32`` (BLAS float32 matvec/matmul), ``numpy_int`` (numpy int8 ->
int32 matmul), ``ort_int8`` (onnxruntime MatMulInteger) and ``ort_int4`` (onnxruntime
MatMulNBits, 4-bit blocks of 32 with zero points, int8 compute), the last two only when
onnxruntime and onnx (whose helpers build the one-node graphs) are importable: the ``bench`` extra.
"""
from __future__ import annotations

import ctypes
import glob
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from hcemu.formats import WeightFormat
from hcemu.layout import PackedWeights, lay_records, layout_shape, tile_bytes

COLD_FACTOR = 4
MAX_COPIES = 4096

LLAMA31_8B_SHAPES = ((4096, 4096), (14336, 4096), (4096, 14336), (128256, 4096))
"""(n_out, n_in) of Llama 3.1 8B: attn_q/output, ffn_gate/up, ffn_down, output head."""
SMOLLM2_135M_SHAPES = ((576, 576), (1536, 576), (576, 1536), (49152, 576))


def l3_bytes() -> int:
    """Size of the last-level cache (bytes), 32 MiB if the OS does not say."""
    for idx in (3, 2):
        path = f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size"
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024 ** 2}.get(text[-1], 1)
        return int(text.rstrip("KM")) * mult
    return 32 * 1024 ** 2


def n_copies(nbytes: int, cold: bool) -> int:
    """Copies to rotate among so that their total is COLD_FACTOR x L3 (1 when not cold)."""
    if not cold:
        return 1
    return int(min(MAX_COPIES, max(2, math.ceil(COLD_FACTOR * l3_bytes() / max(nbytes, 1)))))


_FILL = np.random.default_rng(12345).integers(0, 256, size=1 << 20, dtype=np.uint8)


def filler(shape, seed: int = 0) -> np.ndarray:
    """uint8 array of ``shape`` filled with pseudo-random bytes (a tiled 1 MiB random block, shifted)."""
    size = int(np.prod(shape))
    out = np.empty(size, np.uint8)
    src = np.roll(_FILL, seed * 4099)
    for start in range(0, size, src.size):
        stop = min(size, start + src.size)
        out[start:stop] = src[: stop - start]
    return out.reshape(shape)


def synthetic_weights(fmt: WeightFormat, n: int, k: int, seed: int = 0) -> PackedWeights:
    """A PackedWeights of random codes (any byte is a valid code in every format) and fp16 scales;
    block formats: random codes in their range, sub-scales, sub-mins and scale bytes."""
    if fmt.block is not None:
        return _synthetic_block(fmt, n, k, seed)
    nt, nb = layout_shape(fmt, n, k)
    codes = filler((nt, nb, tile_bytes(fmt)), seed)
    meta = (nt, 16) if fmt.per_channel else (nt, nb, 16)
    rng = np.random.default_rng(seed)
    scales = (rng.random(meta, dtype=np.float32) * 0.01).astype(np.float16)
    offsets = (rng.random(meta, dtype=np.float32) * -0.1).astype(np.float16) if fmt.asymmetric else None
    return PackedWeights(fmt, n, k, codes, scales, offsets)


def _synthetic_block(fmt: WeightFormat, n: int, k: int, seed: int) -> PackedWeights:
    bk = fmt.block
    nt, nb = layout_shape(fmt, n, k)
    codes = filler((nt, nb, tile_bytes(fmt)), seed)
    lim = (1 << bk.code_bits) - 1
    codes &= np.uint8(lim if fmt.bits == 8 else lim | (lim << 4))  # codes in range, every slot
    rng = np.random.default_rng(seed)
    nsub = k // bk.sub_k

    def units(u, dtype, lo, hi):
        return rng.integers(lo, hi, (nt, u, 16)).astype(dtype)

    if bk.scale == "f16":
        scales = (rng.random((nt, k // bk.super_k, 16), dtype=np.float32) * 0.01).astype(np.float16)
    else:
        scales = units(k // 32 if bk.scale == "e8m0" else nsub, np.uint8, 100 if bk.scale == "e8m0" else 1,
                       130 if bk.scale == "e8m0" else 0x7F)
    offsets = None
    if bk.offset != "none":
        offsets = (rng.random((nt, k // (bk.super_k if bk.offset == "dmin" else 32), 16), dtype=np.float32)
                   * 0.01).astype(np.float16)
    parts = {"codes": codes, "scales": scales, "offsets": offsets,
             "subscales": units(nsub, np.int8, -32, 32) if bk.has_subscales else None,
             "submins": units(nsub, np.uint8, 0, 16) if bk.has_submins else None}
    return PackedWeights(fmt, n, k, lay_records(fmt, parts))


@dataclass(frozen=True)
class Runner:
    """One measurable operation: ``fn()`` does one call; sizes per call for GB/s and GOPS."""

    peer: str            # "hcemu" or a peer name
    fn: object
    weight_bytes: int    # bytes of weights streamed per call (per copy)
    macs: int            # multiply-accumulates per call (0 for a read)
    copies: int
    note: str = ""


def _rotating(items, call):
    state = [0]
    count = len(items)

    def fn():
        i = state[0]
        state[0] = i + 1 if i + 1 < count else 0
        return call(items[i])

    return fn


def cim_runner(fmt: WeightFormat, n: int, k: int, m: int, threads: int, cold: bool = True,
               act_group: int = 32) -> Runner:
    """hcemu's CIM product (the active ISA path) on synthetic weights, int8 activations per group."""
    from hcemu import _core
    from hcemu.kernels import cim

    one = synthetic_weights(fmt, n, k, 0)
    copies = n_copies(one.nbytes, cold)
    cws = [cim.prepare(one)] + [cim.prepare(synthetic_weights(fmt, n, k, s)) for s in range(1, copies)]
    # prepared objects keep the arrays; PackedWeights may die
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    q, s = cim.quantize_activations(x, act_group)
    out = np.empty((m, n), np.float32)
    fn = _rotating(cws, lambda cw: _core.cim_matmul(q, s, cw, out=out, n_threads=threads))
    return Runner("hcemu", fn, one.nbytes, n * k * m, copies)


def read_runner(nbytes: int, threads: int, cold: bool = True) -> Runner:
    """Plain streaming read of ``nbytes`` (the bandwidth ceiling of the same bytes)."""
    from hcemu import _core

    copies = n_copies(nbytes, cold)
    bufs = [filler((nbytes,), s) for s in range(copies)]
    fn = _rotating(bufs, lambda b: _core.stream_read(b, threads))
    return Runner("read", fn, nbytes, 0, copies)


# ---- BLAS thread control (OpenBLAS bundled with numpy) ----------------------------------------------
def _openblas_setter():
    import numpy

    root = os.path.dirname(os.path.dirname(numpy.__file__))
    for path in glob.glob(os.path.join(root, "numpy.libs", "libscipy_openblas*.so*")) + \
            glob.glob(os.path.join(root, "scipy_openblas*", "lib", "libscipy_openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


def set_blas_threads(n: int) -> bool:
    """Set numpy's OpenBLAS thread count; False if it cannot be controlled."""
    setter = _openblas_setter()
    if setter is None:
        return False
    setter(ctypes.c_int(int(n)))
    return True


def numpy_f32_runner(n: int, k: int, m: int, threads: int, cold: bool = True) -> Runner:
    """numpy float32 ``W @ x`` (BLAS sgemv for m = 1, sgemm otherwise), W of n x k."""
    controlled = set_blas_threads(threads)
    nbytes = 4 * n * k
    copies = n_copies(nbytes, cold)
    ws = [np.full((n, k), np.float32(0.5 + s / 1024), np.float32) for s in range(copies)]
    x = np.random.default_rng(2).standard_normal((k, m)).astype(np.float32)
    out = np.empty((n, m), np.float32)
    fn = _rotating(ws, lambda w: np.matmul(w, x, out=out))
    return Runner("numpy_f32", fn, nbytes, n * k * m, copies, "" if controlled else "BLAS threads not controlled")


def numpy_int_runner(n: int, k: int, m: int, cold: bool = True) -> Runner:
    """numpy int8 x int8 -> int32 matmul (numpy's own integer loop; single-threaded)."""
    nbytes = n * k
    copies = n_copies(nbytes, cold)
    ws = [filler((n, k), s).view(np.int8) for s in range(copies)]
    x = np.random.default_rng(3).integers(-127, 128, size=(k, m), dtype=np.int8)
    fn = _rotating(ws, lambda w: np.matmul(w, x, dtype=np.int32))
    return Runner("numpy_int", fn, nbytes, n * k * m, copies)


# ---- onnxruntime peers -------------------------------------------------------------------------------
ONNX_IR_VERSION = 8
ONNX_OPSETS = (("", 17), ("com.microsoft", 1))
"""IR version and opset imports of the peers' graphs (onnxruntime >= 1.17, the bench extra's floor, runs them)."""


def onnx_model(node, initializers, inputs, outputs) -> bytes:
    """Serialized ONNX ModelProto of one ``node`` (``onnx.helper.make_node``) with constant
    ``initializers`` [(name, ndarray)], graph ``inputs`` and ``outputs`` [(name, onnx.TensorProto
    element type, shape)]; IR version ``ONNX_IR_VERSION``, opsets ``ONNX_OPSETS``."""
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(name, elem, shape) for name, elem, shape in inputs],
        [helper.make_tensor_value_info(name, elem, shape) for name, elem, shape in outputs],
        initializer=[numpy_helper.from_array(arr, name) for name, arr in initializers])
    model = helper.make_model(graph, ir_version=ONNX_IR_VERSION,
                              opset_imports=[helper.make_opsetid(domain, v) for domain, v in ONNX_OPSETS])
    return model.SerializeToString()


def have_onnxruntime() -> bool:
    """True when the onnxruntime peers can run: onnxruntime and onnx (which builds their graphs)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _ort_session(model: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_int8_runner(n: int, k: int, m: int, threads: int, cold: bool = True, max_copies: int = 512) -> Runner:
    """onnxruntime MatMulInteger: uint8 activations (m, k) with a zero point x int8 weights (k, n)
    -> int32 (the u8 x s8 form ORT's dynamic quantization emits, its fast path)."""
    from onnx import TensorProto, helper

    nbytes = n * k
    copies = min(n_copies(nbytes, cold), max_copies)
    sessions = []
    for s in range(copies):
        w = filler((k, n), s).view(np.int8)
        model = onnx_model(helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"], name="MatMulInteger"),
                           [("B", w), ("a_zp", np.array(128, np.uint8))],
                           [("A", TensorProto.UINT8, (m, k))], [("Y", TensorProto.INT32, (m, n))])
        del w
        sessions.append(_ort_session(model, threads))
        del model
    feed = {"A": np.random.default_rng(4).integers(0, 256, size=(m, k), dtype=np.uint8)}
    fn = _rotating(sessions, lambda sess: sess.run(None, feed))
    return Runner("ort_int8", fn, nbytes, n * k * m, copies, "" if copies == n_copies(nbytes, cold) else "copies capped")


def ort_int4_runner(n: int, k: int, m: int, threads: int, cold: bool = True, max_copies: int = 512,
                    block: int = 32) -> Runner:
    """onnxruntime MatMulNBits: float32 activations x 4-bit weights in blocks of 32 with fp32 scales
    and 4-bit zero points (the Q4_1-like format), accuracy_level 4 (int8 compute)."""
    from onnx import TensorProto, helper

    nb = k // block
    code_bytes = n * nb * block // 2
    meta_bytes = n * nb * 4 + n * ((nb + 1) // 2)
    nbytes = code_bytes + meta_bytes
    copies = min(n_copies(nbytes, cold), max_copies)
    sessions = []
    rng = np.random.default_rng(5)
    for s in range(copies):
        b = filler((n, nb, block // 2), s)
        scales = (rng.random(n * nb, dtype=np.float32) * 0.01).astype(np.float32)
        zp = filler((n * ((nb + 1) // 2),), s + 7)
        node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zp"], ["Y"], name="MatMulNBits",
                                domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=4)
        model = onnx_model(node, [("B", b), ("scales", scales), ("zp", zp)],
                           [("A", TensorProto.FLOAT, (m, k))], [("Y", TensorProto.FLOAT, (m, n))])
        del b
        sessions.append(_ort_session(model, threads))
        del model
    feed = {"A": np.random.default_rng(6).standard_normal((m, k)).astype(np.float32)}
    fn = _rotating(sessions, lambda sess: sess.run(None, feed))
    return Runner("ort_int4", fn, nbytes, n * k * m, copies, "" if copies == n_copies(nbytes, cold) else "copies capped")


# ---- timing -------------------------------------------------------------------------------------------
def measure(fn, min_time_s: float = 0.3, min_reps: int = 3, max_reps: int = 10_000, warmup: int = 1) -> float:
    """Median seconds per call over at least ``min_reps`` calls and ``min_time_s`` seconds."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved(runners: dict, rounds: int = 5, min_time_s: float = 0.1) -> dict:
    """Median seconds per call of each runner, measured in ``rounds`` interleaved passes (so that
    load from other processes hits every runner alike); returns ``{name: seconds}``."""
    samples = {name: [] for name in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            samples[name].append(measure(r.fn, min_time_s=min_time_s, warmup=1))
    return {name: float(np.median(v)) for name, v in samples.items()}


# ---- reports --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """One runner's median time per call, with the sizes to turn it into rates."""

    shape: tuple          # (n_out, n_in)
    peer: str
    format: str           # "int8", "int4", "f32"
    m: int
    threads: int
    seconds: float
    weight_bytes: int
    macs: int
    copies: int

    @property
    def gbps(self) -> float:
        return self.weight_bytes / self.seconds / 1e9

    @property
    def gmacs(self) -> float:
        return self.macs / self.seconds / 1e9

    @property
    def gops(self) -> float:
        return 2 * self.gmacs

    def to_dict(self) -> dict:
        return {"n": self.shape[0], "k": self.shape[1], "peer": self.peer, "format": self.format, "m": self.m,
                "threads": self.threads, "seconds": self.seconds, "weight_bytes": self.weight_bytes,
                "macs": self.macs, "copies": self.copies, "gb_per_s": self.gbps, "gops": self.gops}


def _fmt(name: str) -> WeightFormat:
    from hcemu.formats import INT4A_G32, INT8_G32

    return {"int8": INT8_G32, "int4": INT4A_G32}[name]


def measure_shape(n: int, k: int, specs, rounds: int = 5, min_time_s: float = 0.1, cold: bool = True):
    """Measure runners described by ``specs`` = [(peer, format, m, threads)] on one shape, interleaved.

    peer: hcemu | read | numpy_f32 | numpy_int | ort_int8 | ort_int4 (ORT skipped when not importable).
    Returns a list of :class:`Measurement`. The weights are freed before returning.
    """
    runners = {}
    for peer, fmt, m, threads in specs:
        key = (peer, fmt, m, threads)
        if peer == "hcemu":
            runners[key] = cim_runner(_fmt(fmt), n, k, m, threads, cold)
        elif peer == "read":
            nbytes = synthetic_weights(_fmt(fmt), 16, k).nbytes * -(-n // 16)
            runners[key] = read_runner(nbytes, threads, cold)
        elif peer == "numpy_f32":
            runners[key] = numpy_f32_runner(n, k, m, threads, cold)
        elif peer == "numpy_int":
            runners[key] = numpy_int_runner(n, k, m, cold)
        elif peer in ("ort_int8", "ort_int4"):
            if not have_onnxruntime():
                continue
            runners[key] = (ort_int8_runner if peer == "ort_int8" else ort_int4_runner)(n, k, m, threads, cold)
        else:
            raise ValueError(f"unknown peer {peer!r}")
    times = interleaved(runners, rounds=rounds, min_time_s=min_time_s)
    out = [Measurement((n, k), key[0], key[1], key[2], key[3], times[key], r.weight_bytes, r.macs, r.copies)
           for key, r in runners.items()]
    runners.clear()
    return out
