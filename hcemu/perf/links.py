"""Chip-to-chip links and GPU tensor-parallel collectives: named presets with sources.

A :class:`LinkSpec` prices one hop of a pipeline of hard-coded dies (``docs/system.md``):

    hop time of one message = latency_ns + message bytes / bandwidth   (what one token waits)
    hop occupancy           = message bytes / bandwidth                (what limits the pipeline)
    link power              = energy_pj_per_bit x 8 x bandwidth        (SerDes run continuously)
    die area                += phy_area_mm2 per link end on the die

A :class:`TensorParallelSpec` prices the all-reduces of tensor parallelism on GPUs
(:mod:`hcemu.perf.multigpu`). Every field has a :class:`~hcemu.perf.specs.Source` in
:data:`LINK_SOURCES` (``derived`` from a published figure, tagged as in
``shared/reference/silicon-facts.md``: [V] vendor/standard, [P] press, [I] independent measurement,
[S] third-party estimate; or ``assumed``); none is calibrated. docs/perf.md's tables are generated
from them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

from hcemu.perf.specs import _assumed, _check_positive, _derived, _lookup, _register


@dataclass(frozen=True)
class LinkSpec:
    """One point-to-point link between two dies, one direction.

    bandwidth_gb_s: payload GB/s (1e9 B/s) per direction; latency_ns: one-way time of a message
    through the sender's PHY, the channel and the receiver's PHY and adapter; energy_pj_per_bit: per
    bit moved; phy_area_mm2: silicon of one link end (PHY + controller) on a die.
    """

    name: str
    kind: str
    bandwidth_gb_s: float
    latency_ns: float
    energy_pj_per_bit: float
    phy_area_mm2: float

    def __post_init__(self):
        _check_positive(self, ["bandwidth_gb_s", "latency_ns", "energy_pj_per_bit", "phy_area_mm2"],
                        ("latency_ns", "energy_pj_per_bit", "phy_area_mm2"))

    def replace(self, **changes) -> "LinkSpec":
        return replace(self, **changes)

    def serialization_s(self, nbytes) -> float:
        """Seconds one message of ``nbytes`` occupies the link."""
        return nbytes / (self.bandwidth_gb_s * 1e9)

    def hop_s(self, nbytes) -> float:
        """Seconds from the first byte leaving the sender to the whole message at the receiver."""
        return self.latency_ns * 1e-9 + self.serialization_s(nbytes)

    @property
    def power_w(self) -> float:
        """Power of one link running continuously at its bandwidth (one direction)."""
        return self.energy_pj_per_bit * 1e-12 * 8 * self.bandwidth_gb_s * 1e9


LINK_PRESETS: dict[str, LinkSpec] = {}
LINK_SOURCES: dict[str, MappingProxyType] = {}
"""Link and tensor-parallel preset name -> field -> :class:`~hcemu.perf.specs.Source`."""


def _reg(registry, obj, sources):
    return _register(registry, obj, sources, LINK_SOURCES)


_UCIE = ("UCIe figures as presented by Intel (D. Das Sharma) at IEEE Hot Interconnects 2025, "
         "convergedigest.com/?p=104749")
_C2C = ("NVLink-C2C vs 112G SerDes comparison restating NVIDIA, besthub.dev 'Why Nvidia's NVLink C2C Is "
        "Redefining GPU-CPU Interconnects'")
_NV = "NVIDIA press release 2022-03-22 (NVLink-C2C: 900 GB/s, 25x more energy-efficient than PCIe Gen 5)"
_reg(LINK_PRESETS, LinkSpec("ucie-2.5d", "UCIe advanced package (2.5D)", 256.0, 2.0, 0.3, 0.5), {
    "kind": _derived("UCIe advanced package (2.5D): silicon interposer or bridge (CoWoS, EMIB), 25-55 um bump "
                     "pitch [V UCIe 1.1]"),
    "bandwidth_gb_s": _derived("256 GB/s per direction: one x64 advanced-package module at 32 GT/s, 64 lanes x "
                               "32 Gb/s / 8 [V UCIe 1.1]; shoreline density up to 1.3 TB/s/mm [V " + _UCIE + "]"),
    "latency_ns": _assumed("2 ns one-way, taken to include the die-to-die adapter: UCIe states ~2 ns round trip "
                           "and < 1 ns entry/exit [V " + _UCIE + "]"),
    "energy_pj_per_bit": _derived("[V] 0.3 pJ/bit above 16 GT/s (0.25 at or below) (" + _UCIE + ")"),
    "phy_area_mm2": _assumed("0.5 mm2 per link end: ~0.2 mm of shoreline at 1.3 TB/s/mm [V] x ~1 mm module "
                             "depth, plus the adapter; no module area is published"),
})
_reg(LINK_PRESETS, LinkSpec("ucie-2d", "UCIe standard package (2D)", 64.0, 2.0, 0.6, 0.5), {
    "kind": _derived("UCIe standard package (2D): organic substrate, 100-130 um bump pitch [V UCIe 1.1]"),
    "bandwidth_gb_s": _derived("64 GB/s per direction: one x16 standard-package module at 32 GT/s, 16 x 32 Gb/s / 8 "
                               "[V UCIe 1.1]; up to 224 GB/s/mm of shoreline [V " + _UCIE + "]"),
    "latency_ns": _assumed("2 ns one-way: ~2 ns round trip stated [V " + _UCIE + "], adapter included"),
    "energy_pj_per_bit": _derived("[V] 0.6 pJ/bit above 16 GT/s (0.5 at or below) (" + _UCIE + ")"),
    "phy_area_mm2": _assumed("0.5 mm2 per link end: ~0.3 mm of shoreline at 224 GB/s/mm x ~1.5 mm depth"),
})
_reg(LINK_PRESETS, LinkSpec("nvlink-c2c", "NVIDIA NVLink-C2C", 450.0, 5.0, 1.3, 5.0), {
    "kind": _derived("NVIDIA NVLink-C2C (Grace Hopper): 40 Gb/s NRZ without FEC; proprietary, a reference for a "
                     "custom board-level link [V " + _NV + "]"),
    "bandwidth_gb_s": _derived("450 GB/s per direction: 900 GB/s in total [V " + _NV + "]"),
    "latency_ns": _derived("[S] 5 ns: 'sub-5 ns interface latency' (" + _C2C + ")"),
    "energy_pj_per_bit": _derived("[S] 1.3 pJ/bit (" + _C2C + ")"),
    "phy_area_mm2": _derived("5 mm2 per link end: 3.6 Tb/s at the 281-552 Gb/s/mm2 edge density of " + _C2C
                             + " [S] is 6.5-13 mm2 for both directions; half, rounded"),
})
_reg(LINK_PRESETS, LinkSpec("serdes-112g-x8", "8 x 112G SerDes", 112.0, 20.0, 5.5, 4.0), {
    "kind": _derived("8 x 112G SerDes, PAM4 with FEC (backplane or copper cable between cards) [S " + _C2C + "]"),
    "bandwidth_gb_s": _derived("112 GB/s per direction: 8 lanes x 112 Gb/s / 8 (line rate; FEC overhead ignored)"),
    "latency_ns": _derived("[S] 20 ns: up to 20 ns for 112 Gb/s PAM4 SerDes with FEC (" + _C2C + ")"),
    "energy_pj_per_bit": _derived("[S] 5.5 pJ/bit for SerDes (" + _C2C + ")"),
    "phy_area_mm2": _assumed("4 mm2 per link end: 896 Gb/s at the ~304 Gb/s/mm2 SerDes edge density of " + _C2C
                             + " [S] is ~3 mm2, plus the controller"),
})
_reg(LINK_PRESETS, LinkSpec("pcie5-x16", "PCIe 5.0 x16 card to card", 63.0, 400.0, 5.5, 8.0), {
    "kind": _derived("PCIe 5.0 x16 card to card in one server, peer to peer (HC1 is a PCIe card, ten per "
                     "server [V Next Platform 2026-02-19])"),
    "bandwidth_gb_s": _derived("63 GB/s per direction: 32 GT/s x 16 lanes x 128b/130b / 8 [V PCI-SIG PCIe 5.0]"),
    "latency_ns": _derived("[I, weak] 400 ns one-way: about half of the ~850 ns round trip measured between an FPGA "
                           "endpoint and a CPU over PCIe Gen3 x8 (hackingnasdaq.blogspot.com 2014-05 'PCIe "
                           "latency'); controller- and switch-dominated, so kept for Gen5"),
    "energy_pj_per_bit": _derived("[S] 5.5 pJ/bit, the SerDes figure of " + _C2C + "; NVIDIA's '25x more "
                                  "energy-efficient than PCIe Gen 5' for NVLink-C2C at 1.3 pJ/bit would put PCIe Gen 5 "
                                  "with its controller near 32 pJ/bit"),
    "phy_area_mm2": _assumed("8 mm2 per x16 port (PHY + controller), beyond the host interface in io_area_mm2"),
})
_reg(LINK_PRESETS, LinkSpec("pcie6-x16", "PCIe 6.0 x16 card to card", 121.0, 400.0, 5.5, 10.0), {
    "kind": _derived("PCIe 6.0 x16 card to card: PAM4, 256-byte FLITs with FEC [V PCI-SIG PCIe 6.0]"),
    "bandwidth_gb_s": _derived("121 GB/s per direction: 64 GT/s x 16 lanes / 8 = 128 GB/s raw [V PCI-SIG] x 242/256 "
                               "FLIT payload"),
    "latency_ns": _assumed("400 ns one-way, as pcie5-x16 (controller-dominated); FLIT-mode FEC adds a few ns"),
    "energy_pj_per_bit": _assumed("5.5 pJ/bit, as pcie5-x16: a 64 Gb/s PAM4 lane is SerDes-class [S]"),
    "phy_area_mm2": _assumed("10 mm2 per x16 port (PHY + controller)"),
})

# ----------------------------------------------------------------------------------------------
# GPU tensor parallelism


@dataclass(frozen=True)
class TensorParallelSpec:
    """All-reduces of tensor-parallel decode on NVLink: ``allreduces_per_layer`` per layer (after the
    attention output and after the FFN down projection), each taking
    ``allreduce_latency_us + 2 (tp - 1) / tp x bytes / (nvlink_gb_s x bus_efficiency)``.

    nvlink_gb_s: NVLink bandwidth per GPU per direction.
    """

    name: str
    nvlink_gb_s: float
    bus_efficiency: float
    allreduce_latency_us: float
    allreduces_per_layer: int

    def __post_init__(self):
        _check_positive(self, ["nvlink_gb_s", "bus_efficiency", "allreduce_latency_us", "allreduces_per_layer"],
                        ("allreduce_latency_us",))
        if self.bus_efficiency > 1:
            raise ValueError(f"TensorParallelSpec.bus_efficiency is a fraction in (0, 1], got {self.bus_efficiency}")

    def replace(self, **changes) -> "TensorParallelSpec":
        return replace(self, **changes)

    def allreduce_s(self, tp: int, nbytes) -> float:
        """Seconds of one all-reduce of ``nbytes`` over ``tp`` GPUs (0 when tp == 1)."""
        if tp <= 1:
            return 0.0
        return (self.allreduce_latency_us * 1e-6
                + 2.0 * (tp - 1) / tp * nbytes / (self.nvlink_gb_s * 1e9 * self.bus_efficiency))


TP_PRESETS: dict[str, TensorParallelSpec] = {}

_AR_LAT = ("[I] small-message all-reduce on 8x H100: custom all-reduce 3.7-5.9 us, NCCL (vLLM) 8.5-10 us for "
           "512 B - 32 KB at TP 2/4/8 (sgl-project/sglang PR 2904, 2025-01); NCCL NVLS ~6 us at 2 GPUs "
           "(NVIDIA/nccl issue 1259)")
_AR_EFF = ("all-reduce bus bandwidth 366 GB/s = 77% of the per-GPU uni-directional NVLink budget on 4x H100 [I] "
           "(waynehacking8.github.io/blog/nccl-nvlink-bandwidth, nvidia/nccl-tests)")
_reg(TP_PRESETS, TensorParallelSpec("nvlink4-tp", 450.0, 0.77, 5.0, 2), {
    "nvlink_gb_s": _derived("450 GB/s per GPU per direction: H100/H200 SXM NVLink 4, 900 GB/s per GPU in both "
                            "directions [V NVIDIA datasheets]"),
    "bus_efficiency": _derived("0.77: " + _AR_EFF),
    "allreduce_latency_us": _assumed("5 us per all-reduce, the custom all-reduce's small-message floor; " + _AR_LAT),
    "allreduces_per_layer": _derived("2 all-reduces per layer (Megatron-style tensor parallelism): after the "
                                     "attention output projection and after the FFN down projection"),
})
_reg(TP_PRESETS, TensorParallelSpec("nvlink5-tp", 900.0, 0.77, 5.0, 2), {
    "nvlink_gb_s": _derived("900 GB/s per GPU per direction: B200 NVLink 5, 1.8 TB/s per GPU in both directions "
                            "[V NVIDIA datasheets]"),
    "bus_efficiency": _assumed("0.77, as measured on NVLink 4: " + _AR_EFF),
    "allreduce_latency_us": _assumed("5 us, as NVLink 4 (no B200 small-message figure found); " + _AR_LAT),
    "allreduces_per_layer": _derived("2 all-reduces per layer, as nvlink4-tp"),
})

GPU_TP_PRESET = {"h100": "nvlink4-tp", "h200": "nvlink4-tp", "b200": "nvlink5-tp"}
"""The tensor-parallel interconnect of each GPU preset (SXM boards, NVLink/NVSwitch within a server)."""


def get_link(name) -> LinkSpec:
    return _lookup(LINK_PRESETS, "link", name) if not isinstance(name, LinkSpec) else name


def get_tp(name) -> TensorParallelSpec:
    return _lookup(TP_PRESETS, "tensor-parallel", name) if not isinstance(name, TensorParallelSpec) else name


def link_sources(name: str) -> dict:
    """The :class:`~hcemu.perf.specs.Source` of every field of the named link or tensor-parallel preset."""
    if name not in LINK_SOURCES:
        raise ValueError(f"unknown link preset {name!r}; known: {', '.join(sorted(LINK_SOURCES))}")
    return dict(LINK_SOURCES[name])


__all__ = ["LinkSpec", "LINK_PRESETS", "LINK_SOURCES", "TensorParallelSpec", "TP_PRESETS", "GPU_TP_PRESET",
           "get_link", "get_tp", "link_sources"]
