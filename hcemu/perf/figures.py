"""Every published figure the performance models are calibrated to or compared with (:data:`FIGURES`),
and the rule by which a parameter's source text *states* its value (:func:`states_value`).

A figure is a *calibration target* when some preset parameter's :class:`hcemu.perf.specs.Source` is
``calibrated`` to it (naming its key), otherwise it is *held out*: :mod:`hcemu.perf.validation` predicts
each one and reports the error. Sources: ``shared/reference/silicon-facts.md`` (tags there: [V] vendor,
[P] press, [I] independent, [S] third-party estimate, [D] arithmetic) and NVIDIA's TensorRT-LLM
performance overview.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

_UNIT_SCALE = {"KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30, "k": 1e3, "M": 1e6, "G": 1e9, "B": 1e9,
               "%": 1e-2, "months": 1 / 12}
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s?(KiB|MiB|GiB|months|k|M|G|B|%))?")


def numbers_stated(text: str) -> list[float]:
    """Every number the text states, each as written and, when a unit multiplier follows it (KiB, MiB,
    GiB, k, M, G, B = billion, %, months = years / 12), also scaled: ``"288 MiB"`` states 288 and
    301,989,888."""
    out = []
    for m in _NUMBER.finditer(text):
        x = float(m.group(1).replace(",", "") + (m.group(2) or ""))
        out.append(x)
        if m.group(3):
            out.append(x * _UNIT_SCALE[m.group(3)])
    return out


def _number_in(value, readings) -> bool:
    return any(abs(x - value) <= 1e-9 * max(abs(value), 1e-300) for x in readings)


def states_value(text: str, value) -> bool:
    """True when ``text`` opens by stating ``value`` (after an optional ``[tag]``): for a number, the first
    number in the text, as written or scaled by its unit (:func:`numbers_stated`: ``"288 MiB, ..."``
    states 301,989,888), equals it to a relative 1e-9; a bool opens the text as ``true``/``false``; a
    string appears anywhere in it (case-insensitive). A text citing a range around another value does
    not state that value."""
    body = re.sub(r"^\s*\[[^\]]*\]\s*", "", text)
    if isinstance(value, bool):
        return body.lower().startswith(str(value).lower())
    if isinstance(value, str):
        return value.lower() in text.lower()
    m = _NUMBER.search(body)
    return m is not None and _number_in(value, numbers_stated(m.group(0)))


def format_value(value) -> str:
    """A parameter value as the generated tables print it (``9000.0`` -> ``9,000``, ``2 / 12`` -> ``0.166667``,
    ``True`` -> ``true``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.6g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


KINDS = ("vendor claim", "vendor measurement", "press restating a vendor", "independent measurement",
         "third-party estimate", "arithmetic on published figures")
"""What a figure is: a vendor's number (method unpublished), a vendor's benchmark with its method
published, press restating a vendor, an outsider's measurement, an outsider's estimate, or arithmetic."""


@dataclass(frozen=True)
class Figure:
    """One published figure: a point (``low == high``) or a range, in ``unit``.

    key: the name sources calibrated to it use. kind: one of :data:`KINDS` (a qualifier may follow).
    stated: how texts write it (a source text calibrated to it states ``low``); it states ``low`` and
    ``high``. model: what hcemu predicts for it (:func:`hcemu.perf.validation.predict`). band: the relative
    error the model is held to (a calibration target's band; for a held-out figure a plausibility band);
    None: the error is reported only (a calibration target without a band is pinned to
    :data:`hcemu.perf.validation.PIN_BAND`).
    """

    key: str
    name: str
    kind: str
    source: str
    low: float
    high: float
    unit: str
    stated: str
    model: tuple
    band: float | None = None
    note: str = ""

    def __post_init__(self):
        if not self.kind.startswith(KINDS):
            raise ValueError(f"figure {self.key}: kind must start with one of {KINDS}, got {self.kind!r}")
        if not 0 < self.low <= self.high:
            raise ValueError(f"figure {self.key}: need 0 < low <= high, got {self.low}, {self.high}")
        for v in {self.low, self.high}:
            if not _number_in(v, numbers_stated(self.stated)):
                raise ValueError(f"figure {self.key}: {self.stated!r} does not state {v}")

    @property
    def value(self) -> float:
        """The figure as one number: the point, or the middle of a range."""
        return (self.low + self.high) / 2

    def error(self, modeled: float) -> float:
        """Relative error of a modeled value: 0 inside a range, else against the nearest end."""
        if self.low <= modeled <= self.high:
            return 0.0
        ref = self.low if modeled < self.low else self.high
        return modeled / ref - 1.0


def _point(key, name, kind, source, value, unit, stated, model, band=None, note=""):
    return Figure(key, name, kind, source, value, value, unit, stated, model, band, note)


_V, _P, _I = "vendor claim", "press restating a vendor", "independent measurement"
_DEMO = ("setting unknown (demo capped near 1k tokens), modeled at 1k/1k; the vendor's 16,960 is the calibrated "
         "reading")
_HC1 = [  # HC1 hard-wires Llama 3.1 8B; the vendor's setting is 1k input / 1k output [P]
    _point("hc1-decode-tok-s", "HC1 Llama 3.1 8B per-user decode, 1k/1k", _V,
           "Taalas via latent.space 'AINews: The Custom ASIC Thesis'; thedailyscout.com (silicon-facts 1)", 16960,
           "tok/s", "16,960 tok/s/user", ("chip", "per_user_tok_s"), 0.10),
    _point("hc1-card-power-w", "HC1 card power", _V, "project brief and other outlets (silicon-facts 1)", 250, "W",
           "250 W", ("chip", "power_w"), 0.15),
    _point("hc1-power-ceo-w", "HC1 card power, the CEO's figure", _V, "Taalas CEO, Next Platform 2026-02-19 "
           "(silicon-facts 1)", 200, "W", "200 W", ("chip", "power_w"), 0.25,
           "another vendor reading of the power calibrated to 250 W: the error is mostly the gap between the two"),
    _point("hc1-die-mm2", "HC1 die area", _V, "ertas.ai / thequantumdispatch.com (silicon-facts 1)", 815, "mm2",
           "815 mm2", ("chip", "area_mm2"), 0.25,
           "the logic area shares cim_lane_transistors with the transistor-count calibration"),
    _point("hc1-transistors", "HC1 transistors", _V, "Next Platform; ang.gg (silicon-facts 1)", 53e9, "transistors",
           "53 B transistors", ("chip", "transistors"), 0.25),
    _point("hc1-demo-tok-s-frontiermodels", "HC1 demo reading, per-user decode", f"{_I} (weak)",
           "frontiermodels.cc/?p=4947 (silicon-facts 1)", 15780, "tok/s", "15,780 tok/s/user",
           ("chip", "per_user_tok_s"), 0.25, _DEMO),
    _point("hc1-demo-tok-s-ctol", "HC1 review reading, per-user decode", f"{_I} (weak)",
           "ctol.digital HC1 review (silicon-facts 1)", 14357, "tok/s", "14,357 tok/s/user",
           ("chip", "per_user_tok_s"), 0.25, _DEMO),
    _point("hc1-cost-cents-per-mtok", "HC1 cost per Mtok", _V,
           "project brief; agent-wars.com 2026-03-15 (method unpublished)", 0.75, "c/Mtok", "0.75 cents/Mtok",
           ("chip", "cents_per_mtok"), 0.20),
    _point("opentaalas-sram-bytes", "HC1 SRAM, OpenTaalas reconstruction (4K-token int8 KV cache)",
           "third-party estimate", "github.com/manageryzy/OpenTaalas docs/transistor-budget-53B.md "
           "(silicon-facts 6)", 261e6, "bytes", "261 MB", ("chip", "kv_sram_bytes"), 0.25),
    _point("opentaalas-transistors", "HC1 transistors, OpenTaalas reconstruction", "third-party estimate",
           "github.com/manageryzy/OpenTaalas docs/transistor-budget-53B.md (silicon-facts 6)", 55e9, "transistors",
           "55 B transistors", ("chip", "transistors"), 0.25,
           "the quantity cim_lane_transistors is calibrated on (the vendor's 53 B): not an independent check"),
    _point("llama8b-kv-bytes-per-token", "Llama 3.1 8B KV cache per token at int8 (2 x 32 layers x 8 heads x 128)",
           "arithmetic on published figures", "silicon-facts 1 and 6 (sbhn.g1b.me/item/48672419)", 65536, "bytes",
           "65,536 bytes", ("kv_bytes_per_token",), 0.25, "the hc1-int4 plan also stores an fp16 scale per head"),
]
_GPU = [  # Llama 3.1 8B, batch 1 (per user) and the cost of serving it, BF16
    _point("b200-decode-tok-s", "B200 Llama 3.1 8B per-user decode (HC1 48x faster)", _V,
           "project brief (silicon-facts 1)", 353, "tok/s", "353 tok/s/user", ("gpu1", "b200"), 0.15),
    _point("h200-decode-tok-s", "H200 Llama 3.1 8B per-user decode (HC1 74x faster)", _P,
           "aicentral.substack.com/p/hardwired (silicon-facts 1)", 230, "tok/s", "230 tok/s/user", ("gpu1", "h200"),
           0.20),
    _point("b200-cost-cents-per-mtok", "B200 cost per Mtok", _V, "project brief (silicon-facts 1)", 3.79, "c/Mtok",
           "3.79 cents/Mtok", ("gpucost", "b200"), 0.20),
    Figure("gpu-8b-single-user-tok-s", "Llama 3.1 8B single-user decode on GPU clouds, third-party figures",
           f"{_I} (weak)", "silicon-facts 2", 130, 290, "tok/s", "130-290 tok/s/user", ("gpu1", "h100"), 0.25,
           "modeled on the H100, the common cloud GPU"),
]

TRTLLM = ("NVIDIA TensorRT-LLM performance overview (docs/source/performance/perf-overview.md, v1.0 tables): "
          "trtllm-bench throughput, PyTorch backend, ModelOpt checkpoints, requests at an unbounded rate, "
          "total output tok/s per GPU")
_ISL_OSL = ((128, 128), (128, 2048), (128, 4096), (500, 2000), (1000, 1000), (1000, 2000), (2048, 128),
            (2048, 2048), (5000, 500), (20000, 2000))
_TRT = {  # (model, gpu, precision): output tok/s at each ISL/OSL above, TP1
    ("llama-3.1-8b", "h200", "fp8"): (27911, 26221, 18027, 20770, 17744, 16828, 3538, 12194, 3902, 1804),
    ("llama-3.1-8b", "h100", "fp8"): (28312, 22714, 14325, 17660, 15220, 13899, 3450, 9305, 3459, 1351),
    ("llama-3.1-70b", "h200", "fp8"): (3803, 4336, 2872, 3666, 2909, 2994, 442, 2003, 566, 283),
    ("llama-3.1-70b", "b200", "nvfp4"): (11147, 9922, 6831, 7762, 7007, 6271, 1339, 4783, 1459, 665),
}
_TRT_MODEL = {"llama-3.1-8b": "Llama 3.1 8B", "llama-3.1-70b": "Llama 3.3 70B"}  # 3.3 70B has 3.1 70B's shapes
_TRTLLM_FIGS = [
    _point(f"trtllm-{m}-{g}-{p}-{i}-{o}", f"{_TRT_MODEL[m]} {g.upper()} {p.upper()} TP1 {i}/{o} max throughput",
           "vendor measurement", TRTLLM, v, "tok/s", f"{v:,} tok/s", ("trt", m, g, p, i, o))
    for (m, g, p), vals in _TRT.items() for (i, o), v in zip(_ISL_OSL, vals)
]

FIGURES: tuple[Figure, ...] = tuple(_HC1 + _GPU + _TRTLLM_FIGS)
"""Every published figure, in report order."""
FIGURES_BY_KEY = MappingProxyType({f.key: f for f in FIGURES})
"""Figure key -> :class:`Figure`."""
if len(FIGURES_BY_KEY) != len(FIGURES):
    raise AssertionError("figure keys must be unique")
