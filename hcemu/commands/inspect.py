"""``hcemu inspect FILE [--json]``: the model, plan, geometry, per-tensor error and floorplan of an image."""
from __future__ import annotations


def register(sub) -> None:
    from hcemu.perf.specs import CHIP_PRESETS

    p = sub.add_parser("inspect", help="describe a ROM image (.hcrom): model, plan, geometry, error, floorplan")
    p.add_argument("image", help="a .hcrom file")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 of the payload sections")
    p.add_argument("--floorplan", default="hc1", choices=sorted(CHIP_PRESETS), metavar="CHIP",
                   help="chip technology preset (hcemu.perf.specs) that prices the floorplan (default hc1)")
    p.add_argument("--kv-tokens", type=int, default=None,
                   help="KV-cache budget in tokens (default: the chip preset's KV SRAM)")
    p.set_defaults(func=run)


def describe(img, chip: str = "hc1", kv_tokens: int | None = None) -> dict:
    from hcemu.perf.area import floorplan
    from hcemu.perf.specs import get_chip

    fp = floorplan(img, chip, kv_tokens)
    c = get_chip(chip)
    area_fields = ("rom_density_mbit_per_mm2", "rom_bits_per_transistor", "sram_density_mbit_per_mm2",
                   "sram_transistors_per_bit", "logic_density_mtr_per_mm2", "cim_macs_per_cycle_w4",
                   "cim_lane_transistors", "attn_macs_per_cycle", "attn_lane_transistors", "vec_flops_per_cycle",
                   "vec_transcendentals_per_cycle", "vec_lane_transistors", "core_overhead_fraction",
                   "io_area_mm2", "kv_sram_bytes")
    return {"path": img.path, "source": img.directory.get("source"), "created_by": img.directory.get("created_by"),
            "spec": img.spec.to_dict(), "plan": img.directory["plan"], "geometry": img.geometry.to_dict(),
            "address_map": img.directory["address_map"], "report": img.report.to_dict(),
            "floorplan": fp.to_dict(),
            "floorplan_sized": None if (sz := _sized_floorplan(img, chip, kv_tokens)) is None else sz.to_dict(),
            "floorplan_chip": {"name": c.name, **{f: getattr(c, f) for f in area_fields}}}


def _sized_floorplan(img, chip, kv_tokens):
    """The floorplan in ``chip``'s technology sized for the image's model, or None when the preset is
    already sized for it."""
    from hcemu.perf.area import floorplan
    from hcemu.perf.sizing import size_for_model
    from hcemu.perf.specs import get_chip

    base = get_chip(chip)
    sized = size_for_model(base, img.spec, img.plan)
    return None if sized is base else floorplan(img, sized, kv_tokens)


def run(args) -> int:
    import json

    from hcemu.rom import RomImage
    from hcemu.perf.area import floorplan

    with RomImage.load(args.image, verify=not args.no_verify) as img:
        if args.json:
            print(json.dumps(describe(img, args.floorplan, args.kv_tokens), indent=2))
            return 0
        s, g, p = img.spec, img.geometry, img.plan
        print(f"{img.path}  ({img.directory.get('created_by')}, source: {img.directory.get('source')})")
        moe = (f", {s.n_experts} experts of d_ff {s.expert_ff} ({s.n_experts_used} per token"
               f"{f', shared expert of {s.d_ff_shared}' if s.d_ff_shared else ''}), "
               f"{s.n_active_params / 1e9:.3f} B active" if s.is_moe else "")
        print(f"model  {s.name} ({s.arch}): {s.n_layers} layers, d={s.d_model}, heads {s.n_heads}/{s.n_kv_heads}, "
              f"d_ff={s.d_ff}, vocab {s.vocab_size}, {s.n_params / 1e9:.3f} B matrix parameters"
              f"{', tied embeddings' if s.tied_embeddings else ''}{moe}")
        print(f"plan   {p.name}: matrices {p.matrices.name}, embedding {p.embedding.name}, output {p.output.name}, "
              f"activations {p.activations.name}, KV {p.kv}")
        print(f"geometry  bank {g.bank_rows} rows x {g.word_bits} bits, {g.banks_per_tile} banks per tile, "
              f"{g.tiles_per_region} tiles per layer region ({g.layer_banks} banks); "
              f"{img.address_map.n_banks} banks on chip")
        print(img.report.table())
        for note in img.report.notes:
            print(f"note: {note}")
        print(floorplan(img, args.floorplan, args.kv_tokens).table())
        sized = _sized_floorplan(img, args.floorplan, args.kv_tokens)
        if sized is not None:
            a = sized.area
            print(f"  sized for this model (size_for_model): {a.total_mm2:.1f} mm2 "
                  f"(ROM {a.rom_mm2:.1f}, SRAM {a.sram_mm2:.1f}, logic {a.logic_mm2:.1f}, "
                  f"other {a.overhead_mm2 + a.io_mm2:.1f}), {a.transistors / 1e9:.2f} G transistors")
    return 0
