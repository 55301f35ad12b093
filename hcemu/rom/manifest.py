"""A multi-chip system on disk: one ROM image per die and a small checksummed manifest.

``compile_system(source, plan, out_dir, partition)`` writes ``out_dir/die-00.hcrom`` ... (each an
ordinary ``.hcrom`` image holding only its die's share, with a ``die`` entry in its directory) and
then ``out_dir/system.json``::

    {"format": "hcsys", "version": 1, "created_by": ..., "source": ...,
     "spec": {...}, "plan": {...}, "geometry": {...}, "balance": "rom_bits" | "explicit",
     "dies": [{"die": {"index", "n_dies", "n_layers", "layers": [first, end), "embedding", "head"},
               "image": "die-00.hcrom", "file_bytes": N, "directory_sha256": hex, "rom_bits": {...}}, ...],
     "hops": [{"from": 0, "to": 1, "after_layer": 14}, ...],
     "sha256": hex SHA-256 of this object without the "sha256" key (sorted keys, compact separators)}

With expert parallelism over ``ep`` dies per stage the manifest adds ``"expert_parallel": ep`` and
``"expert_links": [{"link", "from", "block"}, ...]`` (link ``k (ep - 1) + b - 1`` joins pipeline die
``k`` to its expert die of block ``b``); ``dies`` lists the pipeline dies, then the expert dies
(``die-KK-eB.hcrom``, each ``die`` entry with ``expert_parallel`` and ``expert_block``).

The manifest names each image by the SHA-256 of its directory, which holds the SHA-256 of every
section, so one check per die ties the manifest to every byte of the images. Every file is written
atomically (:func:`hcemu._io.atomic_write`); an older manifest in ``out_dir`` is removed before the
first image is written and the new one is written last, so an interrupted compile leaves no
manifest that names images it did not finish. ``load_manifest`` raises :class:`SystemManifestError`
(a ``ValueError``) naming what failed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass

from hcemu.formats import Plan
from hcemu.model.spec import ModelSpec
from hcemu.rom.die import DieAssignment
from hcemu.rom.geometry import RomGeometry
from hcemu.rom.image import RomImage, compile_model, plan_from_dict, plan_to_dict
from hcemu.rom.partition import Partition, check_dies

MANIFEST_NAME = "system.json"
MANIFEST_FORMAT = "hcsys"
MANIFEST_VERSION = 1
_DIE_FILE = re.compile(r"^die-\d{2,}(-e\d+)?\.hcrom$")


class SystemManifestError(ValueError):
    """A system manifest is missing, corrupt, of another version, or disagrees with its images."""


def die_file_name(index: int, expert_block: int = 0) -> str:
    """``die-KK.hcrom`` for pipeline die ``KK``, ``die-KK-eB.hcrom`` for its expert die of block ``B``."""
    return f"die-{index:02d}.hcrom" if not expert_block else f"die-{index:02d}-e{expert_block}.hcrom"


def _digest(body: dict) -> str:
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class DieEntry:
    """One die of a manifest: its assignment, its image file (relative to the manifest's folder), the
    image's size and directory SHA-256, and its ROM bits (``RomBits.to_dict()``)."""

    die: DieAssignment
    image: str
    file_bytes: int
    directory_sha256: str
    rom_bits: dict


@dataclass(frozen=True)
class SystemManifest:
    """A loaded ``system.json``: the model, plan, geometry and the dies in pipeline order (then the expert
    dies, with ``expert_parallel`` > 1)."""

    folder: str
    spec: ModelSpec
    plan: Plan
    geometry: RomGeometry
    balance: str
    dies: tuple
    hops: tuple
    source: str = ""
    expert_parallel: int = 1

    @property
    def n_dies(self) -> int:
        """Every die: the pipeline dies and the expert dies."""
        return len(self.dies)

    @property
    def path(self) -> str:
        return os.path.join(self.folder, MANIFEST_NAME)

    @property
    def partition(self) -> Partition:
        """The :class:`~hcemu.rom.partition.Partition` the manifest describes."""
        return Partition(self.spec, self.plan, self.geometry, tuple(e.die for e in self.dies if not e.die.is_expert_die),
                         self.balance, self.expert_parallel)

    def image_paths(self) -> list[str]:
        return [os.path.join(self.folder, d.image) for d in self.dies]

    def load_images(self, verify: bool = True) -> list[RomImage]:
        """Every die's image, checked against the manifest (directory SHA-256, die, spec, plan);
        ``verify`` also checks every section's SHA-256 (see :meth:`RomImage.load`)."""
        images = []
        try:
            for entry, path in zip(self.dies, self.image_paths()):
                if not os.path.exists(path):
                    raise SystemManifestError(f"{self.path}: image {entry.image} of die {entry.die.index} is missing")
                img = RomImage.load(path, verify=verify)
                images.append(img)
                what = f"{self.path}: image {entry.image}"
                if img.directory_sha256 != entry.directory_sha256:
                    raise SystemManifestError(f"{what} is not the one the manifest names (directory SHA-256 differs)")
                if img.die != entry.die or img.spec != self.spec or plan_to_dict(img.plan) != plan_to_dict(self.plan):
                    raise SystemManifestError(f"{what} holds {img.die.describe()} of {img.spec.name}/{img.plan.name}; "
                                              f"the manifest says {entry.die.describe()} of {self.spec.name}/{self.plan.name}")
        except BaseException:
            for img in images:
                img.close()
            raise
        return images

    def to_dict(self) -> dict:
        return {"folder": self.folder, "model": self.spec.name, "plan": self.plan.name, "balance": self.balance,
                "expert_parallel": self.expert_parallel,
                "dies": [{"die": e.die.to_dict(), "image": e.image, "file_bytes": e.file_bytes,
                          "rom_bits": e.rom_bits} for e in self.dies],
                "hops": [{"from": a, "to": b, "after_layer": layer} for a, b, layer in self.hops]}


@dataclass(frozen=True)
class SystemCompileReport:
    """What :func:`compile_system` wrote: the manifest and one :class:`CompileReport` per die."""

    manifest: SystemManifest
    reports: tuple

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.reports)

    @property
    def file_bytes(self) -> int:
        return sum(r.file_bytes for r in self.reports)

    def table(self) -> str:
        lines = [f"{'die':>6s}  {'layers':>9s}  {'embedding':>9s}  {'head':>4s}  {'ROM Gbit':>9s}  {'banks':>7s}  "
                 f"{'MiB':>8s}  image"]
        for e in self.manifest.dies:
            d = e.die
            name = f"{d.index}" + (f"e{d.expert_block}" if d.is_expert_die else "")
            lines.append(f"{name:>6s}  {f'{d.first_layer}..{d.end_layer - 1}':>9s}  {'yes' if d.embedding else '':>9s}  "
                         f"{'yes' if d.head else '':>4s}  {e.rom_bits['total'] / 1e9:9.3f}  {e.rom_bits['banks']:7d}  "
                         f"{e.file_bytes / 2**20:8.1f}  {e.image}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"manifest": self.manifest.to_dict(), "seconds": self.seconds, "file_bytes": self.file_bytes,
                "dies": [r.to_dict() for r in self.reports]}


def compile_system(source, plan: Plan, out_dir, partition: Partition, progress: bool = True) -> SystemCompileReport:
    """Compile every die of ``partition`` from ``source`` into ``out_dir`` and write its manifest.

    Each image holds exactly the codes the one-chip image would hold for its matrices
    (:func:`compile_model` with ``die=``). See the module docstring for the files and their order.
    """
    from hcemu import __version__
    from hcemu._io import atomic_write

    spec = source.spec
    if partition.spec != spec:
        raise ValueError(f"the partition is of {partition.spec.name}, the source is {spec.name}")
    if plan_to_dict(partition.plan) != plan_to_dict(plan):
        raise ValueError(f"the partition was made for plan {partition.plan.name}, not {plan.name}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"{out_dir} exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(manifest_path)   # no manifest may name images this compile is about to replace
    reports, entries = [], []
    for die in partition.all_dies:
        name = die_file_name(die.index, die.expert_block)
        path = os.path.join(out_dir, name)
        rep = compile_model(source, plan, path, partition.geometry, progress=progress, die=die)
        with RomImage.load(path, verify=False) as img:
            sha, bits = img.directory_sha256, img.rom_bits.to_dict()
        reports.append(rep)
        entries.append({"die": die.to_dict(), "image": name, "file_bytes": rep.file_bytes,
                        "directory_sha256": sha, "rom_bits": bits})
    body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "created_by": f"hcemu {__version__}",
            "source": getattr(source, "description", spec.name), "spec": spec.to_dict(), "plan": plan_to_dict(plan),
            "geometry": partition.geometry.to_dict(), "balance": partition.balance, "dies": entries,
            "hops": partition.to_dict()["hops"]}
    if partition.expert_parallel > 1:
        body.update(expert_parallel=partition.expert_parallel, expert_links=partition.to_dict()["expert_links"])
    body["sha256"] = _digest(body)
    with atomic_write(manifest_path, "w") as f:
        json.dump(body, f, indent=1, allow_nan=False)
        f.write("\n")
    keep = {e["image"] for e in entries}
    for stale in os.listdir(out_dir):   # images of an earlier, larger split in the same folder
        if _DIE_FILE.match(stale) and stale not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out_dir, stale))
    return SystemCompileReport(load_manifest(out_dir), tuple(reports))


def is_system(path) -> bool:
    """Whether ``path`` is a system folder (holds a manifest) or a manifest file."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, MANIFEST_NAME)) or (
        os.path.isfile(path) and os.path.basename(path) == MANIFEST_NAME)


def load_manifest(path) -> SystemManifest:
    """Read and check ``path`` (a system folder or its ``system.json``): format, version, the
    manifest's own SHA-256, and a consistent pipeline of dies. The images are checked when loaded
    (:meth:`SystemManifest.load_images`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder, file = path, os.path.join(path, MANIFEST_NAME)
    else:
        folder, file = os.path.dirname(os.path.abspath(path)), path
    if not os.path.isfile(file):
        raise SystemManifestError(f"no system manifest at {file} (compile one with `hcemu compile MODEL --chips N`)")
    try:
        with open(file, "rb") as f:
            body = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemManifestError(f"{file}: unreadable manifest: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT:
        raise SystemManifestError(f"{file}: not an hcemu system manifest (format "
                                  f"{body.get('format') if isinstance(body, dict) else type(body).__name__!r})")
    if body.get("version") != MANIFEST_VERSION:
        raise SystemManifestError(f"{file}: unsupported manifest version {body.get('version')!r} "
                                  f"(this hcemu reads version {MANIFEST_VERSION})")
    stored = body.pop("sha256", None)
    if stored != _digest(body):
        raise SystemManifestError(f"{file}: corrupt manifest (SHA-256 mismatch)")
    try:
        spec = ModelSpec.from_dict(body["spec"])
        plan = plan_from_dict(body["plan"])
        geometry = RomGeometry.from_dict(body["geometry"])
        dies = tuple(DieEntry(DieAssignment.from_dict(e["die"]), str(e["image"]), int(e["file_bytes"]),
                              str(e["directory_sha256"]), dict(e["rom_bits"])) for e in body["dies"])
        ep = int(body.get("expert_parallel", 1))
        pipeline = tuple(e.die for e in dies if not e.die.is_expert_die)
        part = Partition(spec, plan, geometry, pipeline, str(body.get("balance", "")), ep)
        if tuple(e.die for e in dies) != part.all_dies:
            raise ValueError(f"the dies are not the pipeline's dies then their expert dies ({len(part.all_dies)} "
                             f"with expert parallelism {ep})")
        hops = tuple((int(h["from"]), int(h["to"]), int(h["after_layer"])) for h in body["hops"])
        elinks = [{"link": int(x["link"]), "from": int(x["from"]), "block": int(x["block"])}
                  for x in body.get("expert_links", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise SystemManifestError(f"{file}: inconsistent manifest: {exc}") from None
    want = tuple((d.index, d.index + 1, d.end_layer - 1) for d in pipeline[:-1])
    if elinks != (part.to_dict().get("expert_links") or []):
        raise SystemManifestError(f"{file}: expert links {elinks} do not join each pipeline die to its expert dies")
    if hops != want:
        raise SystemManifestError(f"{file}: hops {hops} do not link the dies in order ({want})")
    for e in dies:
        if os.path.basename(e.image) != e.image:
            raise SystemManifestError(f"{file}: image name {e.image!r} must be a file in the manifest's folder")
    return SystemManifest(folder, spec, plan, geometry, str(body.get("balance", "")), dies, hops,
                          str(body.get("source", "")), ep)


__all__ = ["compile_system", "load_manifest", "is_system", "SystemManifest", "SystemManifestError",
           "SystemCompileReport", "DieEntry", "MANIFEST_NAME"]
