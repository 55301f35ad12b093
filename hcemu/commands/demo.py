"""``hcemu demo``: the main job. Fetch SmolLM2-135M, compile it for the chip, generate, report."""
from __future__ import annotations

from hcemu.commands.run import add_generation_args, run

DEFAULT_PROMPT = "Explain in two sentences why a chip with its weights in mask ROM is fast."


def register(sub) -> None:
    p = sub.add_parser("demo", help="fetch SmolLM2-135M, compile it, generate text and report (the main job)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    add_generation_args(p)
    p.set_defaults(func=run, model="smollm2")

