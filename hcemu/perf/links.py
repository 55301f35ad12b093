"""Chip-to-chip links and GPU tensor-parallel collectives: named presets with sources.

A :class:`LinkSpec` prices one hop of a pipeline of hard-coded dies (``docs/system.md``):

    hop time of one message = latency_ns + message bytes / bandwidth   (what one token waits)
    hop occupancy           = message bytes / bandwidth                (what limits the pipeline)
    link power              = energy_pj_per_bit x 8 x bandwidth        (SerDes run continuously)
    die area                += phy_area_mm2 per link end on the die

A :class:`TensorParallelSpec` prices the all-reduces of tensor parallelism on GPUs
(:mod:`hcemu.perf.multigpu`). Tags in the sources as in ``shared/reference/silicon-facts.md``:
[V] vendor/standard, [P] press, [I] independent measurement, [S] third-party estimate; "derived:" is
arithmetic from those; "assumption:" where nothing public was found.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from hcemu.perf.specs import _check_positive, _lookup, _register

_A = "assumption: "
_D = "derived: "


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

_UCIE = ("UCIe figures as presented by Intel (D. Das Sharma) at IEEE Hot Interconnects 2025, "
         "convergedigest.com/?p=104749; UCIe 1.1 specification")
_C2C = ("NVLink-C2C vs 112G SerDes comparison restating NVIDIA, besthub.dev 'Why Nvidia's NVLink C2C Is "
        "Redefining GPU-CPU Interconnects'; NVIDIA press release 2022-03-22 (900 GB/s, 25x more energy-"
        "efficient than PCIe Gen 5)")
_register(LINK_PRESETS, LinkSpec("ucie-2.5d", "die-to-die, advanced package (silicon interposer / bridge)",
                                 256.0, 2.0, 0.3, 0.5), {
    "kind": "UCIe advanced package (2.5D: CoWoS, EMIB; 25-55 um bump pitch)",
    "bandwidth_gb_s": _D + "one x64 advanced-package module at 32 GT/s: 64 lanes x 32 Gb/s / 8 = 256 GB/s per "
                      "direction [V UCIe 1.1]; shoreline density up to 1.3 TB/s/mm [V " + _UCIE + "]",
    "latency_ns": "[V] ~2 ns round trip, < 1 ns entry/exit (" + _UCIE + "); 2 ns one-way taken to include the "
                  "die-to-die adapter",
    "energy_pj_per_bit": "[V] 0.25 pJ/b at <= 16 GT/s, 0.3 pJ/b above (" + _UCIE + ")",
    "phy_area_mm2": _A + "0.5 mm2 per link end: ~0.2 mm of shoreline at 1.3 TB/s/mm [V] x ~1 mm module depth, "
                    "plus adapter; no published module area",
})
_register(LINK_PRESETS, LinkSpec("ucie-2d", "die-to-die, standard (organic) package", 64.0, 2.0, 0.6, 0.5), {
    "kind": "UCIe standard package (2D organic substrate, 100-130 um bump pitch)",
    "bandwidth_gb_s": _D + "one x16 standard-package module at 32 GT/s: 16 x 32 Gb/s / 8 = 64 GB/s per direction "
                      "[V UCIe 1.1]; up to 224 GB/s/mm of shoreline [V " + _UCIE + "]",
    "latency_ns": "[V] ~2 ns round trip (" + _UCIE + "); 2 ns one-way taken",
    "energy_pj_per_bit": "[V] 0.5 pJ/b at <= 16 GT/s, 0.6 pJ/b above (" + _UCIE + ")",
    "phy_area_mm2": _A + "0.5 mm2 per link end: ~0.3 mm of shoreline at 224 GB/s/mm x ~1.5 mm depth",
})
_register(LINK_PRESETS, LinkSpec("nvlink-c2c", "chip-to-chip on a module or board (NVIDIA)", 450.0, 5.0, 1.3, 5.0), {
    "kind": "NVIDIA NVLink-C2C (Grace Hopper): 40 Gb/s NRZ, no FEC; proprietary, a reference point for a custom "
            "board-level link",
    "bandwidth_gb_s": _D + "900 GB/s total [V NVIDIA] = 450 GB/s per direction",
    "latency_ns": "[S] < 5 ns interface latency (" + _C2C + ")",
    "energy_pj_per_bit": "[V] 1.3 pJ/bit (" + _C2C + ")",
    "phy_area_mm2": _A + "5 mm2 per link end: 450 GB/s = 3.6 Tb/s at ~281-552 Gb/s/mm2 edge density [S " + _C2C
                    + "] is 6.5-13 mm2 for both directions; half per direction",
})
_register(LINK_PRESETS, LinkSpec("serdes-112g-x8", "board or cable SerDes (Ethernet-class, PAM4 + FEC)",
                                 112.0, 20.0, 5.5, 4.0), {
    "kind": "8 lanes of 112 Gb/s PAM4 SerDes with FEC (backplane or copper cable between cards)",
    "bandwidth_gb_s": _D + "8 x 112 Gb/s / 8 = 112 GB/s per direction (line rate; FEC overhead ignored)",
    "latency_ns": "[S] up to 20 ns for 112 Gb/s PAM4 SerDes with FEC (" + _C2C + ")",
    "energy_pj_per_bit": "[S] 5.5 pJ/bit for SerDes (" + _C2C + ")",
    "phy_area_mm2": _A + "4 mm2 per link end: 896 Gb/s at ~304 Gb/s/mm2 edge density [S " + _C2C + "] ~ 3 mm2, "
                    "plus controller",
})
_register(LINK_PRESETS, LinkSpec("pcie5-x16", "card to card over PCIe 5.0 (as HC1 cards sit in a server)",
                                 63.0, 400.0, 5.5, 8.0), {
    "kind": "PCIe 5.0 x16 between cards in one server (peer to peer through the root complex or a switch)",
    "bandwidth_gb_s": _D + "32 GT/s x 16 lanes x 128b/130b / 8 = 63 GB/s per direction [V PCI-SIG PCIe 5.0]",
    "latency_ns": "[I, weak] one-way ~ half of the ~850 ns round trip measured between an FPGA endpoint and a "
                  "CPU over PCIe Gen3 x8 (hackingnasdaq.blogspot.com 2014-05 'PCIe latency'); controller- and "
                  "switch-dominated, so kept for Gen5",
    "energy_pj_per_bit": "[S] 5.5 pJ/bit, the SerDes figure of the NVLink-C2C comparison (" + _C2C + "); NVIDIA's "
                         "'25x more energy-efficient than PCIe Gen 5' implies up to ~32 pJ/bit with the controller",
    "phy_area_mm2": _A + "8 mm2 per x16 port (PHY + controller) beyond the host interface in io_area_mm2",
})
_register(LINK_PRESETS, LinkSpec("pcie6-x16", "card to card over PCIe 6.0", 121.0, 400.0, 5.5, 10.0), {
    "kind": "PCIe 6.0 x16 between cards (PAM4, 256-byte FLITs with FEC)",
    "bandwidth_gb_s": _D + "64 GT/s x 16 lanes / 8 = 128 GB/s raw per direction [V PCI-SIG PCIe 6.0] x 242/256 "
                      "FLIT payload = 121 GB/s",
    "latency_ns": _A + "as pcie5-x16 (controller-dominated); FLIT-mode FEC adds a few ns",
    "energy_pj_per_bit": _A + "as pcie5-x16: a 64 Gb/s PAM4 SerDes lane is SerDes-class, 5.5 pJ/bit [S]",
    "phy_area_mm2": _A + "10 mm2 per x16 port (PHY + controller)",
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
_AR_EFF = ("[I] all-reduce bus bandwidth 366 GB/s = 77% of the per-GPU uni-directional NVLink budget on 4x H100 "
           "(waynehacking8.github.io/blog/nccl-nvlink-bandwidth, nvidia/nccl-tests)")
_register(TP_PRESETS, TensorParallelSpec("nvlink4-tp", 450.0, 0.77, 5.0, 2), {
    "nvlink_gb_s": "[V] H100/H200 SXM NVLink 4: 900 GB/s per GPU, both directions; 450 GB/s per direction",
    "bus_efficiency": _AR_EFF,
    "allreduce_latency_us": _A + "5 us per all-reduce, the custom all-reduce's small-message floor; " + _AR_LAT,
    "allreduces_per_layer": "[D] Megatron-style tensor parallelism: one all-reduce after the attention output "
                            "projection, one after the FFN down projection",
})
_register(TP_PRESETS, TensorParallelSpec("nvlink5-tp", 900.0, 0.77, 5.0, 2), {
    "nvlink_gb_s": "[V] B200 NVLink 5: 1.8 TB/s per GPU, both directions; 900 GB/s per direction",
    "bus_efficiency": _A + "as NVLink 4: " + _AR_EFF,
    "allreduce_latency_us": _A + "as NVLink 4 (no B200 small-message figure found): " + _AR_LAT,
    "allreduces_per_layer": "[D] as nvlink4-tp",
})

GPU_TP_PRESET = {"h100": "nvlink4-tp", "h200": "nvlink4-tp", "b200": "nvlink5-tp"}
"""The tensor-parallel interconnect of each GPU preset (SXM boards, NVLink/NVSwitch within a server)."""


def get_link(name) -> LinkSpec:
    return _lookup(LINK_PRESETS, "link", name) if not isinstance(name, LinkSpec) else name


def get_tp(name) -> TensorParallelSpec:
    return _lookup(TP_PRESETS, "tensor-parallel", name) if not isinstance(name, TensorParallelSpec) else name


__all__ = ["LinkSpec", "LINK_PRESETS", "TensorParallelSpec", "TP_PRESETS", "GPU_TP_PRESET", "get_link", "get_tp"]
