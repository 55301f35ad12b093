"""LoRA speed targets of the functional chip, as ratios measured in one process.

    python benchmarks/lora_ratios.py [--plan int4] [--rank 16] [--threads N] [--json PATH]

SmolLM2-135M decode at context 256 with a random rank-16 int8 adapter on all seven matrices of every
layer, against the same chip decoding without one (target >= 0.8x the speed); the time of switching
the side paths between two resident adapters against one decode step.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hcemu  # noqa: E402
from hcemu._io import write_json  # noqa: E402
from hcemu.bench.chip import lora_ratios  # noqa: E402

TARGET = 0.8


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default="int4")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    r = lora_ratios(plan=a.plan, rank=a.rank, context=a.context, threads=a.threads, rounds=a.rounds)
    r["isa"] = hcemu.capabilities()["active"]
    ok = r["lora_over_plain_speed"] >= TARGET
    print(f"SmolLM2-135M {a.plan} decode at context {a.context}, {a.threads} thread(s), kernels {r['isa']}")
    print(f"  without adapter {r['decode_tok_s']:.1f} tok/s; rank-{a.rank} adapter on all 7 matrices "
          f"({r['adapter_sram_bytes'] / 2**20:.2f} MiB SRAM) {r['decode_lora_tok_s']:.1f} tok/s: "
          f"{r['lora_over_plain_speed']:.3f}x (goal >= {TARGET}) {'ok' if ok else 'MISSED'}")
    print(f"  adapter switch {r['switch_us']:.1f} us = {r['switch_over_decode_step']:.4f} of a decode step")
    if a.json:
        write_json(a.json, r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
