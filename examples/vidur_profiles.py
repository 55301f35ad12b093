"""Export a hard-coded chip's modeled per-layer step times as Vidur compute profiles.

Vidur (microsoft/vidur) predicts a batch's time from per-operation profiles of one transformer layer,
``mlp.csv`` (operations over ``num_tokens``) and ``attention.csv`` (prefill over ``prefill_chunk_size``
and ``kv_cache_size``, decode over ``batch_size`` and ``kv_cache_size``), times in milliseconds in
``time_stats.<op>.median`` columns, rows keyed by the model's shape and the tensor-parallel degree
(here 1). This writes both files for a chip: a decode step through the step API (:mod:`hcemu.step`)
gives a layer pass's CIM, vector and overhead cycles (the same for every pass), and the silicon model
prices each row's attention from the events of its passes (:func:`hcemu.perf.analytic.events_from_shapes`,
the counts the chip would make at those positions); cycles become milliseconds with the chip's clock.

Mapping (a GPU profile's operations onto the chip's units; documented in docs/embedding.md):
the layer's CIM cycles are split over ``attn_pre_proj`` (q, k, v), ``attn_post_proj`` (o),
``mlp_up_proj`` (gate, up) and ``mlp_down_proj`` (down) in proportion to their MACs; the vector unit's
cycles that do not grow with the context are reported under ``mlp_act`` (norms and RoPE included: ``input_layernorm``,
``post_attention_layernorm`` and ``attn_rope`` are 0); the per-pass overhead under ``add``; attention
under ``attn_prefill`` / ``attn_decode``, the KV append and the softmax's vector work included (the
SRAM write shares the attention unit's stream, so ``attn_kv_cache_save`` is 0).
A batch of ``n`` tokens costs ``n`` passes: Vidur's layer-by-layer model cannot express the chip's
pipelining across layers, so the profile gives the single-user (unpipelined) time, an upper bound.

Run: ``python examples/vidur_profiles.py IMAGE.hcrom OUT_DIR [--max-tokens 4096]``
"""
from __future__ import annotations

import argparse
import csv
import io
import os

import numpy as np

from hcemu._io import atomic_write
from hcemu.perf.analytic import events_from_shapes
from hcemu.perf.silicon import SiliconModel
from hcemu.step import ChipStepper

MLP_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj", "mlp_act", "input_layernorm",
           "post_attention_layernorm", "attn_rope", "add")
PRODUCT_OP = {"attn_q": "attn_pre_proj", "attn_k": "attn_pre_proj", "attn_v": "attn_pre_proj",
              "attn_output": "attn_post_proj", "ffn_gate": "mlp_up_proj", "ffn_up": "mlp_up_proj",
              "ffn_down": "mlp_down_proj"}


def layer_coefficients(image, chip="hc1"):
    """Cycles of one mean layer pass outside attention, ``{op: cycles}`` for :data:`MLP_OPS`, and
    ``clock_ghz``; measured with one decode step of the step API."""
    spec = image.spec
    st = ChipStepper(image, chip=chip, kv_capacity_tokens=2)
    u = st.open_user()
    a, b = (st.step([(u, [0])]).items[0] for _ in range(2))     # positions 0 and 1: 1 and 2 keys
    layers = lambda it, f: np.mean([getattr(s, f) for s in it.timeline if s.region.isdigit()])
    vec_per_key = layers(b, "vector_cycles") - layers(a, "vector_cycles")  # softmax: attention's share
    macs = {}
    for _name, kind, layer, (n, k) in spec.matrices():
        if layer == 0:
            macs[PRODUCT_OP[kind]] = macs.get(PRODUCT_OP[kind], 0) + n * k
    cim = layers(a, "cim_cycles")
    out = {op: 0.0 for op in MLP_OPS}
    for op, m in macs.items():
        out[op] = cim * m / sum(macs.values())
    out["mlp_act"] = layers(a, "vector_cycles") - vec_per_key
    out["add"] = layers(a, "overhead_cycles")
    out["clock_ghz"] = st.clock_ghz
    return out


def attention_cycles(image, positions, vec_per_pass, chip="hc1"):
    """Cycles of a layer's attention on passes at ``positions``, as the silicon model prices their
    events: the attention unit's (KV append included) and the vector unit's softmax (the vector cycles
    beyond ``vec_per_pass`` per pass, the position-independent part reported under ``mlp_act``)."""
    positions = np.asarray(positions, np.int64)
    t = SiliconModel(chip).timing(events_from_shapes(image.spec, image.plan, positions=positions))
    n = image.spec.n_layers
    return float((t.attention_cycles[:n] + t.vector_cycles[:n]).mean()) - len(positions) * vec_per_pass


def _csv(header, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def export(image, out_dir, chip="hc1", max_tokens=4096, block_size=16, max_batch=32):
    """Write ``mlp.csv`` and ``attention.csv`` under ``out_dir``; returns their paths."""
    spec = image.spec
    co = layer_coefficients(image, chip)
    ms = 1e3 / (co["clock_ghz"] * 1e9)              # milliseconds per cycle
    tokens = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, max_tokens} - {0})
    tokens = [t for t in tokens if t <= max_tokens]
    shape = [spec.n_heads, spec.n_kv_heads, spec.d_model, spec.d_ff, spec.vocab_size, True, 1]
    mlp = [shape + [t] + [t * co[op] * ms for op in MLP_OPS] for t in tokens]
    mlp_header = ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp",
                  "num_tensor_parallel_workers", "num_tokens"] + [f"time_stats.{op}.median" for op in MLP_OPS]
    att_header = ["n_embd", "n_q_head", "n_kv_head", "block_size", "num_tensor_parallel_workers", "batch_size",
                  "prefill_chunk_size", "kv_cache_size", "is_prefill", "time_stats.attn_prefill.median",
                  "time_stats.attn_decode.median", "time_stats.attn_kv_cache_save.median"]
    head = [spec.d_model, spec.n_heads, spec.n_kv_heads, block_size, 1]
    att = []
    kv_sizes = [k for k in (0, 16, 64, 256, 1024, 2048, 4096) if k <= max_tokens]
    for c in tokens:                                  # prefill chunk of c tokens after k cached
        for k in kv_sizes:
            if k + c <= max_tokens:
                cyc = attention_cycles(image, np.arange(k, k + c), co["mlp_act"], chip)
                att.append(head + [1, c, k, True, cyc * ms, 0.0, 0.0])
    for b in (n for n in (1, 2, 4, 8, 16, 32) if n <= max_batch):   # b users decoding, k cached each
        for k in kv_sizes:
            if k + 1 <= max_tokens:
                cyc = attention_cycles(image, np.full(b, k), co["mlp_act"], chip)
                att.append(head + [b, 0, k, False, 0.0, cyc * ms, 0.0])
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "mlp.csv"), os.path.join(out_dir, "attention.csv")]
    for path, data in zip(paths, (_csv(mlp_header, mlp), _csv(att_header, att))):
        with atomic_write(path) as f:
            f.write(data)
    return paths


def main(argv=None):
    from hcemu.rom.image import RomImage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("out_dir")
    ap.add_argument("--chip", default="hc1")
    ap.add_argument("--max-tokens", type=int, default=4096)
    args = ap.parse_args(argv)
    for p in export(RomImage.load(args.image), args.out_dir, args.chip, args.max_tokens):
        print(p)


if __name__ == "__main__":
    main()
