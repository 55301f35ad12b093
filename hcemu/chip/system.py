"""A system of hard-coded dies: the model's layers split over chips joined by links.

``System(images, links)`` has the surface of :class:`hcemu.chip.Chip` (``prefill``, ``decode``,
``generate``, ``reset``, ``position``): die 0 looks the tokens up, every die runs its layers with its
own KV SRAM (a :class:`~hcemu.chip.Chip` over its die image), the residual stream crosses each link in
the hop's :class:`~hcemu.formats.LinkFormat` (:mod:`hcemu.chip.links`), and the last die runs the head.
Each pass counts the dies' events into one :class:`~hcemu.events.Events` of the whole model (equal to
a one-chip run's) and the links' traffic into :class:`~hcemu.events.LinkEvents`. With lossless links
(``fp32``) the logits equal the one-chip run's bit for bit. See ``docs/system.md``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from hcemu.chip.chip import Chip, StepResult, exclusive, prefill_chunks, run_generation
from hcemu.chip.links import decode as link_decode
from hcemu.chip.links import encode as link_encode
from hcemu.events import Events, LinkEvents
from hcemu.formats import LinkFormat, get_link_format
from hcemu.rom.image import RomImage, plan_to_dict
from hcemu.rom.partition import check_dies


@dataclass
class SystemStepResult(StepResult):
    """A :class:`~hcemu.chip.chip.StepResult` of a system: ``events`` of all dies (the whole model's
    regions), ``link_events`` of its hops, ``bank_rows`` of every die's banks one after another
    (die ``k`` from :attr:`System.bank_offsets` ``[k]``)."""

    link_events: LinkEvents = None


class System:
    """Dies in pipeline order, each running its :class:`~hcemu.rom.image.RomImage`.

    images: one image per die (:attr:`RomImage.die` must form a pipeline of one model and plan: see
    :func:`hcemu.rom.partition.check_dies`). links: the link format of every hop — a name or
    :class:`~hcemu.formats.LinkFormat` for all of them, or a sequence with one per hop.
    kv_capacity_tokens: every die's KV-cache capacity in tokens (default: the model's max context,
    capped at 8192); kv_format, n_threads, profile, fuse_products, compiled: as for :class:`Chip`,
    for every die.
    """

    def __init__(self, images, links="fp32", *, kv_capacity_tokens: int | None = None, kv_format: str | None = None,
                 n_threads: int = 1, profile: bool = False, fuse_products: bool = True, compiled: bool = True):
        self._busy = threading.RLock()
        images = list(images)
        if not images or not all(isinstance(i, RomImage) for i in images):
            raise TypeError("System: images must be a non-empty sequence of RomImage")
        spec, plan = images[0].spec, images[0].plan
        for img in images[1:]:
            if img.spec != spec or plan_to_dict(img.plan) != plan_to_dict(plan):
                raise ValueError(f"System: {img.path} is {img.spec.name}/{img.plan.name}, die 0 is "
                                 f"{spec.name}/{plan.name}")
        check_dies(spec.n_layers, [img.die for img in images])
        n_hops = len(images) - 1
        if isinstance(links, (str, LinkFormat)):
            links = [links] * n_hops
        links = [get_link_format(f) for f in links]
        if len(links) != n_hops:
            raise ValueError(f"System: {len(links)} link formats given for {n_hops} hops")
        if kv_capacity_tokens is None:
            kv_capacity_tokens = min(spec.max_context, 8192)
        self.spec = spec
        self.links = tuple(links)
        self.dies = [Chip(img, kv_capacity_tokens=kv_capacity_tokens, kv_format=kv_format, n_threads=n_threads,
                          profile=profile, fuse_products=fuse_products, compiled=compiled) for img in images]
        self.plan = self.dies[0].plan
        d = spec.d_model
        self._message_bytes = [f.message_bytes(d) for f in self.links]
        banks = [img.address_map.n_banks for img in images]
        self.bank_offsets = np.concatenate([[0], np.cumsum(banks)[:-1]]).astype(np.int64)
        self.n_banks = int(sum(banks))

    @classmethod
    def load(cls, path, links="fp32", *, verify: bool = True, **kwargs) -> "System":
        """The system compiled into ``path`` (a folder with ``system.json``; see
        :func:`hcemu.rom.manifest.load_manifest`), its images checked against the manifest."""
        from hcemu.rom.manifest import load_manifest

        return cls(load_manifest(path).load_images(verify=verify), links, **kwargs)

    # ------------------------------------------------------------------ state
    @property
    def n_dies(self) -> int:
        return len(self.dies)

    @property
    def position(self) -> int:
        """Tokens held in every die's KV cache (the next token's position)."""
        return self.dies[0].position

    @property
    def capacity_tokens(self) -> int:
        return min(d.capacity_tokens for d in self.dies)

    @exclusive
    def reset(self) -> None:
        for d in self.dies:
            d.reset()

    def _check_tokens(self, tokens) -> np.ndarray:
        return self.dies[0]._check_tokens(tokens)

    # ------------------------------------------------------------------ execution
    @exclusive
    def prefill(self, tokens, *, all_logits: bool = False) -> SystemStepResult:
        """Prompt tokens through every die in chunks of up to 64 (as :meth:`Chip.prefill`)."""
        tokens = self._check_tokens(tokens)
        ev, links = Events.for_spec(self.spec), LinkEvents(self.n_dies - 1)
        outs, routes = [], []
        for chunk, head_rows in prefill_chunks(tokens, all_logits):
            logits = self._forward(chunk, ev, links, head_rows, routes)
            if logits is not None:
                outs.append(logits)
        logits = np.concatenate(outs)
        return SystemStepResult(logits, ev, self._step_bank_rows(tokens, len(logits), ev), link_events=links,
                                routes=np.concatenate(routes) if routes else None)

    @exclusive
    def decode(self, token: int) -> SystemStepResult:
        """One decode step through every die: the token at the current position; logits of the next."""
        tokens = self._check_tokens([token])
        ev, links = Events.for_spec(self.spec), LinkEvents(self.n_dies - 1)
        routes = []
        logits = self._forward(tokens, ev, links, slice(None), routes)
        return SystemStepResult(logits, ev, self._step_bank_rows(tokens, 1, ev), link_events=links,
                                routes=routes[0] if routes else None)

    @exclusive
    def generate(self, prompt_ids, max_new_tokens: int, sampler=None, stop_ids=(), on_token=None):
        """As :meth:`Chip.generate`; the :class:`~hcemu.chip.chip.Generation` also carries the link events."""
        return run_generation(self, prompt_ids, max_new_tokens, sampler, stop_ids, on_token)

    def _forward(self, tokens: np.ndarray, ev: Events, links: LinkEvents, head_rows: slice, routes: list):
        """One pass of ``tokens`` through every die; a mixture-of-experts model appends the pass's routes,
        int32 (t, n_layers, k) gathered from the dies in layer order, to ``routes``."""
        t = len(tokens)
        x = self.dies[0].embed(tokens, ev)
        ran, pass_routes = [], []
        try:
            for k, die in enumerate(self.dies):
                die.run_layers(x, ev, pass_routes)   # rolls its own K/V back if it fails
                ran.append(die)
                if k < len(self.links):
                    x = link_decode(link_encode(x, self.links[k]))
                    links.add(k, t, t * self._message_bytes[k])
        except BaseException:
            for die in ran:                 # no die keeps K/V of a pass that did not finish
                die.kv.rollback()
            raise
        for die in self.dies:
            die.kv.commit(t)
        if pass_routes:
            routes.append(np.concatenate(pass_routes, axis=1))
        x = x[head_rows]
        if not len(x):
            return None
        return self.dies[-1].head(x, ev)

    def _step_bank_rows(self, tokens: np.ndarray, head_passes: int, ev: Events) -> np.ndarray:
        parts = [d._step_bank_rows(tokens if d.die.embedding else None, head_passes if d.die.head else 0,
                                   len(tokens), ev) for d in self.dies]
        return np.concatenate(parts)

    def __repr__(self) -> str:
        return (f"System({self.spec.name}, plan {self.plan.name}, {self.n_dies} dies "
                f"{[d.die.n_die_layers for d in self.dies]} layers, links {[f.name for f in self.links]})")
