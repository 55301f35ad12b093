"""``hcemu compile MODEL --plan P --out FILE``: quantize a model into a ROM image (.hcrom).

MODEL is a ``.gguf`` path, ``smollm2`` (the cached demo model, fetched on first use) or a model preset
name (``llama-3.1-8b``, ...: synthetic weights seeded by ``--seed``).

``--chips N|auto --out DIR`` splits the model over N dies (``auto``: the fewest whose largest image
holds at most ``--die-rom-gbit`` of ROM) and writes one image per die plus ``DIR/system.json``
(``docs/system.md``). ``--expert-parallel EP`` (mixture-of-experts models) also spreads each pipeline
die's experts over EP dies: the pipeline die keeps expert block 0, ``EP - 1`` expert dies hold the
other blocks (``die-KK-eB.hcrom``).
"""
from __future__ import annotations

import os
import sys


def register(sub) -> None:
    from hcemu.formats import PLANS

    p = sub.add_parser("compile", help="quantize a model into a mask-ROM image (.hcrom)")
    p.add_argument("model", help="a .gguf file, 'smollm2', or a model preset name (synthetic weights)")
    p.add_argument("--plan", default="int4", choices=sorted(PLANS), help="quantization plan (default int4)")
    p.add_argument("--out", required=True,
                   help="output image path (written atomically); with --chips, the system's folder")
    p.add_argument("--chips", default=None, metavar="N|auto",
                   help="split the model over N dies (pipeline of contiguous layers, balanced by ROM bits), "
                        "or 'auto': the fewest dies within --die-rom-gbit")
    p.add_argument("--die-rom-gbit", type=float, default=None,
                   help="ROM budget per die for --chips auto, Gbit (default: the ROM of the hc1 reference "
                        "die, Llama 3.1 8B in plan hc1-int4)")
    p.add_argument("--layers-per-die", default=None, metavar="A,B,...",
                   help="explicit layers per die in pipeline order (instead of a balanced split)")
    p.add_argument("--expert-parallel", type=int, default=1, metavar="EP",
                   help="mixture-of-experts models: spread each pipeline die's experts over EP dies (its own "
                        "block 0 and EP - 1 expert dies; EP must divide the experts; default 1). Needs --chips "
                        "(or --layers-per-die); --chips 1 --expert-parallel EP keeps every layer on one die")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic weights for preset models")
    p.add_argument("--bank-rows", type=int, default=2048, help="words per ROM bank (power of two)")
    p.add_argument("--word-bits", type=int, default=512, help="bits per ROM word (power of two, 32..2048)")
    p.add_argument("--banks-per-tile", type=int, default=16, help="banks per bank tile (power of two)")
    p.add_argument("--compensate-rank", type=int, default=0, metavar="R",
                   help="also write a rank-R LoRA adapter compensating the ROM's quantization error "
                        "(truncated SVD of W - Q(W)) beside the image, as OUT with the suffix .lora.gguf")
    p.add_argument("--compensate-weighted", action="store_true",
                   help="weight the SVD by the input channels' RMS on a calibration text (needs the model's "
                        "tokenizer; the Python licence text, tokens 2048..2559)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the compile report as JSON")
    p.set_defaults(func=run)


def open_source(model: str, seed: int = 0):
    """The ModelSource for a MODEL argument (see the module docstring)."""
    from hcemu.model.spec import MODEL_PRESETS

    def need(module: str, what: str):
        import importlib
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise RuntimeError(f"{what} needs {module}, which is not available in this build: {exc}") from None

    if model.lower().endswith(".gguf"):
        if not os.path.exists(model):
            raise FileNotFoundError(f"no such GGUF file: {model}")
        return need("hcemu.model.gguf_source", "reading a GGUF file").GGUFSource(model)
    if model.lower() == "smollm2":
        from hcemu.model.fetch import fetch
        return need("hcemu.model.gguf_source", "reading a GGUF file").GGUFSource(fetch("smollm2"))
    if model.lower() in MODEL_PRESETS:
        from hcemu.model.spec import get_preset
        return need("hcemu.model.synthetic", "a preset model").SyntheticSource(get_preset(model), seed)
    raise ValueError(f"unknown model {model!r}: give a .gguf path, 'smollm2' or a preset "
                     f"({', '.join(sorted(MODEL_PRESETS))})")


def compensation_path(image_path) -> str:
    """Where ``--compensate-rank`` writes its adapter: the image path with the suffix ``.lora.gguf``."""
    root, ext = os.path.splitext(os.fspath(image_path))
    return (root if ext else os.fspath(image_path)) + ".lora.gguf"


def write_compensation(source, image_path, rank: int, weighted: bool = False, progress: bool = False) -> str:
    """Write the rank-``rank`` compensation adapter of the image at ``image_path`` beside it."""
    from hcemu.rom.compensate import ErrorFactors, calibration_rms
    from hcemu.rom.image import RomImage

    if rank < 1:
        raise ValueError(f"--compensate-rank must be >= 1, got {rank}")
    image = RomImage.load(image_path, verify=False)
    rms = None
    if weighted:
        from hcemu.model.texts import licence_text
        from hcemu.model.tokenizer import load_tokenizer

        tok = load_tokenizer(image)
        if tok is None:
            raise ValueError("--compensate-weighted needs the model's tokenizer (a GGUF source)")
        rms = calibration_rms(source, tok.encode(licence_text())[2048:2560])
    factors = ErrorFactors(source, image, rank, rms, progress=progress)
    out = compensation_path(image_path)
    factors.write(out, rank)
    return out

def _partition(args, spec, plan, geometry):
    """The partition ``--chips`` / ``--layers-per-die`` ask for (None: one whole image)."""
    from hcemu.rom.partition import partition_model

    ep = args.expert_parallel
    if args.layers_per_die is not None:
        try:
            counts = [int(c) for c in args.layers_per_die.split(",")]
        except ValueError:
            raise ValueError(f"--layers-per-die must be integers separated by commas, got {args.layers_per_die!r}") from None
        if args.chips not in (None, "auto") and int(args.chips) != len(counts):
            raise ValueError(f"--chips {args.chips} disagrees with {len(counts)} entries of --layers-per-die")
        return partition_model(spec, plan, layers_per_die=counts, geometry=geometry, expert_parallel=ep)
    if args.chips is None:
        if args.die_rom_gbit is not None:
            raise ValueError("--die-rom-gbit needs --chips auto")
        if ep != 1:
            raise ValueError("--expert-parallel needs --chips (use --chips 1 to keep every layer on one die)")
        return None
    if args.chips == "auto":
        if args.die_rom_gbit is None:
            from hcemu.perf.system import reference_die_rom_bits

            budget = reference_die_rom_bits()
        else:
            if not args.die_rom_gbit > 0:
                raise ValueError(f"--die-rom-gbit must be > 0, got {args.die_rom_gbit}")
            budget = int(args.die_rom_gbit * 1e9)
        return partition_model(spec, plan, max_rom_bits=budget, geometry=geometry, expert_parallel=ep)
    try:
        n = int(args.chips)
    except ValueError:
        raise ValueError(f"--chips must be a positive integer or 'auto', got {args.chips!r}") from None
    return partition_model(spec, plan, n, geometry=geometry, expert_parallel=ep)


def run(args) -> int:
    import json

    from hcemu.formats import get_plan
    from hcemu.rom import RomGeometry, compile_model
    from hcemu.rom.manifest import compile_system

    plan = get_plan(args.plan)
    source = open_source(args.model, args.seed)
    try:
        geometry = RomGeometry.for_model(source.spec, plan, args.bank_rows, args.word_bits, args.banks_per_tile)
        partition = _partition(args, source.spec, plan, geometry)
        if partition is not None:
            if args.compensate_rank:
                raise ValueError("--compensate-rank writes one adapter beside one image: not with --chips")
            report = compile_system(source, plan, args.out, partition, progress=not args.no_progress)
        else:
            report = compile_model(source, plan, args.out, geometry, progress=not args.no_progress)
        if args.compensate_rank:
            lora = write_compensation(source, args.out, args.compensate_rank, args.compensate_weighted,
                                      progress=not args.no_progress)
            print(f"wrote {lora}: rank-{args.compensate_rank} compensation of the ROM quantization error",
                  file=sys.stderr)
    finally:
        source.close()
    if partition is not None:
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            ep = partition.expert_parallel
            print(f"{source.spec.name} in plan {plan.name} over {partition.n_dies} dies "
                  f"(balance: {partition.balance})"
                  + (f", each one's experts over {ep} dies ({len(partition.expert_dies)} expert dies)" if ep > 1 else ""))
            print(report.table())
            print(f"wrote {report.manifest.path} and {len(partition.all_dies)} images: "
                  f"{report.file_bytes / 2**20:.1f} MiB in {report.seconds:.1f} s", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        for note in report.notes:
            print(f"note: {note}")
        print(f"wrote {args.out}: {report.file_bytes / 2**20:.1f} MiB in {report.seconds:.1f} s", file=sys.stderr)
    return 0
