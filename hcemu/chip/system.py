"""A system of hard-coded dies: the model's layers split over chips joined by links.

``System(images, links)`` has the surface of :class:`hcemu.chip.Chip` (``prefill``, ``decode``,
``generate``, ``reset``, ``position``): die 0 looks the tokens up, every die runs its layers with its
own KV SRAM (a :class:`~hcemu.chip.Chip` over its die image), the residual stream crosses each link in
the hop's :class:`~hcemu.formats.LinkFormat` (:mod:`hcemu.chip.links`), and the last die runs the head.
Each pass counts the dies' events into one :class:`~hcemu.events.Events` of the whole model (equal to
a one-chip run's) and the links' traffic into :class:`~hcemu.events.LinkEvents`. With lossless links
(``fp32``) the logits equal the one-chip run's bit for bit. See ``docs/system.md``.

With expert parallelism (images of expert dies beside the pipeline dies: :mod:`hcemu.rom.die`) a
stage's home die sends the rows of a layer's normalized FFN input routed to an expert it does not hold
to the expert die holding it (one dispatch message per token row, in the expert link's format), the
:class:`~hcemu.chip.experts.ExpertDie` runs the expert and sends its output back (one combine message
per row), and the home die weights and sums the outputs in routing order as the one chip does; the
expert links' traffic is :attr:`SystemStepResult.expert_link_events` and every die's own events are in
:attr:`SystemStepResult.die_events`.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from hcemu.chip.chip import Chip, StepResult, exclusive, prefill_chunks, run_generation
from hcemu.chip.experts import ExpertDie
from hcemu.chip.links import decode as link_decode
from hcemu.chip.links import encode as link_encode
from hcemu.events import Events, LinkEvents
from hcemu.formats import LinkFormat, get_link_format
from hcemu.rom.image import RomImage, plan_to_dict
from hcemu.rom.die import expert_block_of
from hcemu.rom.partition import check_dies, expert_blocks, expert_dies_of, expert_link_index


@dataclass
class SystemStepResult(StepResult):
    """A :class:`~hcemu.chip.chip.StepResult` of a system: ``events`` of all dies (the whole model's
    regions), ``link_events`` of its hops, ``bank_rows`` of every die's banks one after another
    (die ``k`` from :attr:`System.bank_offsets` ``[k]``, the pipeline dies then the expert dies).
    With expert parallelism: ``expert_link_events`` of the expert links (one dispatch and one combine
    message per remote expert pass, :func:`hcemu.rom.partition.expert_link_index` numbers them);
    ``die_events``: every die's own events (pipeline dies, then expert dies; each an :class:`Events` of
    the whole model's regions, summing to ``events``)."""

    link_events: LinkEvents = None
    expert_link_events: LinkEvents = None
    die_events: list = None


class System:
    """Dies in pipeline order, each running its :class:`~hcemu.rom.image.RomImage`.

    images: one image per die (:attr:`RomImage.die` must form a pipeline of one model and plan: see
    :func:`hcemu.rom.partition.check_dies`; with expert parallelism, every stage's expert dies too, in
    any order). links: the link format of every hop — a name or :class:`~hcemu.formats.LinkFormat` for
    all of them, or a sequence with one per hop. expert_links: the format of every expert link (one
    name or LinkFormat; default: ``links`` when that is one format).
    kv_capacity_tokens: every die's KV-cache capacity in tokens (default: the model's max context,
    capped at 8192); kv_format, n_threads, profile, fuse_products, compiled: as for :class:`Chip`,
    for every die.
    """

    def __init__(self, images, links="fp32", *, kv_capacity_tokens: int | None = None, kv_format: str | None = None,
                 n_threads: int = 1, profile: bool = False, fuse_products: bool = True, compiled: bool = True,
                 expert_links=None):
        self._busy = threading.RLock()
        images = list(images)
        if not images or not all(isinstance(i, RomImage) for i in images):
            raise TypeError("System: images must be a non-empty sequence of RomImage")
        spec, plan = images[0].spec, images[0].plan
        for img in images[1:]:
            if img.spec != spec or plan_to_dict(img.plan) != plan_to_dict(plan):
                raise ValueError(f"System: {img.path} is {img.spec.name}/{img.plan.name}, die 0 is "
                                 f"{spec.name}/{plan.name}")
        expert_images = sorted((img for img in images if img.die.is_expert_die),
                               key=lambda img: (img.die.index, img.die.expert_block))
        images = [img for img in images if not img.die.is_expert_die]
        ep = images[0].die.expert_parallel if images else 1
        if not images:
            raise ValueError("System: no pipeline die among the images (only expert dies)")
        expert_blocks(spec, ep)   # raises unless ep divides a mixture-of-experts model's experts
        check_dies(spec.n_layers, [img.die for img in images], ep)
        want = expert_dies_of([img.die for img in images], ep)
        if tuple(img.die for img in expert_images) != want:
            raise ValueError(f"System: the expert dies are {[img.die.describe() for img in expert_images]}; the "
                             f"pipeline with expert parallelism {ep} needs {[d.describe() for d in want]}")
        if expert_links is None:
            if not isinstance(links, (str, LinkFormat)) and expert_images:
                raise ValueError("System: give expert_links (one format) when links gives one format per hop")
            expert_links = links if isinstance(links, (str, LinkFormat)) else "fp32"
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
        self.expert_parallel = ep
        self.expert_link_format = get_link_format(expert_links)
        self.expert_dies = [ExpertDie(img, n_threads=n_threads, fuse_products=fuse_products) for img in expert_images]
        for k, die in enumerate(self.dies):
            if ep > 1:
                die.remote_expert = functools.partial(self._dispatch, k)
        self._pass = None   # (every die's Events, expert LinkEvents) of the step being run
        d = spec.d_model
        self._message_bytes = [f.message_bytes(d) for f in self.links]
        banks = [img.address_map.n_banks for img in images + expert_images]
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
        """Pipeline dies (the stages); :attr:`n_expert_dies` more hold experts only."""
        return len(self.dies)

    @property
    def n_expert_dies(self) -> int:
        return len(self.expert_dies)

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
        links = LinkEvents(self.n_dies - 1)
        outs, routes = [], []
        self._begin()
        try:
            for chunk, head_rows in prefill_chunks(tokens, all_logits):
                logits = self._forward(chunk, links, head_rows, routes)
                if logits is not None:
                    outs.append(logits)
        finally:
            die_ev, elinks = self._end()
        logits = np.concatenate(outs)
        return self._result(logits, tokens, len(logits), die_ev, links, elinks,
                            np.concatenate(routes) if routes else None)

    @exclusive
    def decode(self, token: int) -> SystemStepResult:
        """One decode step through every die: the token at the current position; logits of the next."""
        tokens = self._check_tokens([token])
        links = LinkEvents(self.n_dies - 1)
        routes = []
        self._begin()
        try:
            logits = self._forward(tokens, links, slice(None), routes)
        finally:
            die_ev, elinks = self._end()
        return self._result(logits, tokens, 1, die_ev, links, elinks, routes[0] if routes else None)

    def _begin(self) -> None:
        n = self.n_dies + self.n_expert_dies
        self._pass = ([Events.for_spec(self.spec) for _ in range(n)], LinkEvents(self.n_expert_dies))

    def _end(self):
        out, self._pass = self._pass, None
        return out

    def _result(self, logits, tokens, head_passes: int, die_ev: list, links: LinkEvents, elinks: LinkEvents,
                routes) -> SystemStepResult:
        ev = Events.for_spec(self.spec)
        for e in die_ev:
            ev += e
        rows = np.concatenate([d._step_bank_rows(tokens if d.die.embedding else None, head_passes if d.die.head else 0,
                                                 len(tokens), ev) for d in self.dies]
                              + [x.step_bank_rows(e) for x, e in zip(self.expert_dies, die_ev[self.n_dies:])])
        ep = self.expert_parallel > 1
        return SystemStepResult(logits, ev, rows, link_events=links, routes=routes,
                                expert_link_events=elinks if ep else None, die_events=die_ev if ep else None)

    def _dispatch(self, k: int, layer: int, expert: int, h: np.ndarray) -> np.ndarray:
        """Expert ``expert`` of ``layer`` for pipeline die ``k``: ``h`` float32 (n, d_model) crosses the expert
        link to the expert die holding it (n dispatch messages), its output comes back (n combine messages)."""
        ep = self.expert_parallel
        link = expert_link_index(k, int(expert_block_of(expert, self.spec.n_experts, ep)), ep)
        die_ev, elinks = self._pass
        fmt, n = self.expert_link_format, len(h)
        msg = link_encode(h, fmt)
        elinks.add(link, n, msg.nbytes)
        y = self.expert_dies[link].run_expert(layer, expert, link_decode(msg), die_ev[self.n_dies + link])
        back = link_encode(y, fmt)
        elinks.add(link, n, back.nbytes)
        return link_decode(back)

    @exclusive
    def generate(self, prompt_ids, max_new_tokens: int, sampler=None, stop_ids=(), on_token=None):
        """As :meth:`Chip.generate`; the :class:`~hcemu.chip.chip.Generation` also carries the link events."""
        return run_generation(self, prompt_ids, max_new_tokens, sampler, stop_ids, on_token)

    def _forward(self, tokens: np.ndarray, links: LinkEvents, head_rows: slice, routes: list):
        """One pass of ``tokens`` through every die (each counting into its own events of the step); a
        mixture-of-experts model appends the pass's routes, int32 (t, n_layers, k) gathered from the dies
        in layer order, to ``routes``."""
        t = len(tokens)
        die_ev = self._pass[0]
        x = self.dies[0].embed(tokens, die_ev[0])
        ran, pass_routes = [], []
        try:
            for k, die in enumerate(self.dies):
                die.run_layers(x, die_ev[k], pass_routes)   # rolls its own K/V back if it fails
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
        return self.dies[-1].head(x, die_ev[self.n_dies - 1])

    def __repr__(self) -> str:
        ep = f", experts over {self.expert_parallel} dies per stage" if self.expert_parallel > 1 else ""
        return (f"System({self.spec.name}, plan {self.plan.name}, {self.n_dies} dies "
                f"{[d.die.n_die_layers for d in self.dies]} layers, links {[f.name for f in self.links]}{ep})")
