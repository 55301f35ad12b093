"""Run fuzz targets and count outcomes (docs/reliability.md).

    python -m fuzz.run TARGET [TARGET ...] --cases N [--engine random|atheris] [--seed S] [--report FILE]

``random`` (the default): N cases per target from a seeded generator (raw targets: byte mutations of the
seed files; the others: random choice bytes); deterministic for a seed. ``atheris``: coverage-guided
(libFuzzer) over the hcemu Python code, N runs of one target, starting from the seed files.

Every case is *accepted* or ends in a documented exception (:mod:`fuzz.targets`). A defect (an
undocumented exception, a wrong result of an accepted kernel call, a hang past ``--timeout`` seconds)
is written to ``--crashes`` (default ``fuzz/crashes``) as the input that reproduces it
(``python -m fuzz.run TARGET --reproduce FILE``); the run continues (random engine) and exits 1 at the
end. A hard crash (a signal) ends the process: the input being run is kept in ``<scratch>/current.bin``,
whose path is printed at the start.
"""
from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))


class Hang(BaseException):
    """A case ran past the time limit (BaseException: the targets' handlers do not catch it)."""


def _alarm(_signum, _frame):
    raise Hang()


class Runner:
    def __init__(self, targets, timeout: float, crashes: str, seeds_dir: str | None):
        from fuzz.targets import Context

        self.targets, self.timeout, self.crashes = targets, timeout, crashes
        self.ctx = Context(seeds_dir)
        self.current = os.path.join(self.ctx.scratch, "current.bin")
        self.outcomes = {t: Counter() for t in targets}
        self.cases = Counter()
        self.defects = []
        self.seconds = Counter()
        self._deadline = None
        signal.signal(signal.SIGALRM, _alarm)
        # a case stuck in C (no Python bytecode runs, so no SIGALRM handler) is ended by this watchdog
        threading.Thread(target=self._watchdog, daemon=True).start()
        print(f"fuzz: scratch {self.ctx.scratch}; the input being run is kept in {self.current}", file=sys.stderr)

    def _watchdog(self):
        while True:
            time.sleep(1.0)
            d = self._deadline
            if d is not None and time.monotonic() > d + 5 * self.timeout:
                sys.stderr.write(f"fuzz: hard hang; input kept in {self.current}\n")
                faulthandler.dump_traceback(all_threads=True)
                os._exit(3)

    def run(self, target: str, data: bytes) -> str:
        from fuzz.targets import Defect, run_case

        with open(self.current, "wb") as f:
            f.write(data)
        t0 = time.perf_counter()
        self._deadline = time.monotonic() + self.timeout
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            outcome = run_case(self.ctx, target, data)
        except Hang:
            outcome = "DEFECT:hang"
            self._record(target, data, f"hang: more than {self.timeout} s")
        except Defect as exc:
            outcome = "DEFECT:" + str(exc).split(":")[0]
            self._record(target, data, str(exc))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._deadline = None
        self.seconds[target] += time.perf_counter() - t0
        self.cases[target] += 1
        self.outcomes[target][outcome] += 1
        return outcome

    def _record(self, target, data, message):
        os.makedirs(self.crashes, exist_ok=True)
        name = f"{target}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
        with open(os.path.join(self.crashes, name), "wb") as f:
            f.write(data)
        self.defects.append({"target": target, "input": name, "message": message[:2000]})
        print(f"fuzz: DEFECT in {target} ({name}): {message[:500]}", file=sys.stderr)

    def report(self, engine: str, seed) -> dict:
        return {"engine": engine, "seed": seed, "python": sys.version.split()[0],
                "targets": {t: {"cases": self.cases[t], "seconds": round(self.seconds[t], 1),
                                "outcomes": dict(sorted(self.outcomes[t].items()))} for t in self.targets},
                "defects": self.defects}


def run_random(runner: Runner, cases: int, seed: int, progress_every: int = 0) -> None:
    import random

    from fuzz.targets import make_input

    for target in runner.targets:
        rng = random.Random(f"{seed}:{target}")
        for i in range(cases):
            raw = rng.randbytes(rng.choice((8, 32, 128, 512)))
            runner.run(target, make_input(runner.ctx, target, raw))
            if progress_every and (i + 1) % progress_every == 0:
                print(f"fuzz: {target} {i + 1}/{cases} {dict(runner.outcomes[target].most_common(4))}",
                      file=sys.stderr, flush=True)


def run_atheris(runner: Runner, target: str, cases: int, report_path: str, max_len: int) -> None:
    import atheris

    from fuzz.targets import seed_inputs

    corpus = os.path.join(runner.ctx.scratch, f"corpus-{target}")
    os.makedirs(corpus, exist_ok=True)
    for i, data in enumerate(seed_inputs(runner.ctx, target)):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(data)

    def one(data: bytes):
        outcome = runner.run(target, data)
        n = runner.cases[target]
        if n % 1000 == 0 or n >= cases:
            _write(report_path, runner.report("atheris", None))
        if outcome.startswith("DEFECT"):
            raise RuntimeError(f"defect: {runner.defects[-1]['message']}")

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], f"-runs={cases}", f"-max_len={max_len}", "-rss_limit_mb=8192",
                   f"-timeout={int(runner.timeout * 6)}", corpus], one)
    atheris.Fuzz()


def _write(path: str | None, report: dict) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, path)


def main(argv=None) -> int:
    from fuzz.targets import TARGETS

    p = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="+", choices=TARGETS + ("all",))
    p.add_argument("--cases", type=int, default=1000, help="cases per target")
    p.add_argument("--engine", choices=("random", "atheris"), default="random")
    p.add_argument("--seed", type=int, default=0, help="random engine seed")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds a case may take before it is a hang")
    p.add_argument("--report", default=None, help="write the outcome counts as JSON here")
    p.add_argument("--crashes", default=os.path.join(HERE, "crashes"), help="folder for defect inputs")
    p.add_argument("--seeds-dir", default=None, help="keep the seed files here (default: the scratch folder)")
    p.add_argument("--reproduce", default=None, metavar="FILE", help="run one saved input and print its outcome")
    p.add_argument("--progress", type=int, default=0, metavar="N", help="print counts every N cases")
    p.add_argument("--max-len", type=int, default=1 << 18, help="atheris: longest input")
    args = p.parse_args(argv)
    targets = TARGETS if "all" in args.targets else tuple(dict.fromkeys(args.targets))
    faulthandler.enable()
    runner = Runner(targets, args.timeout, args.crashes, args.seeds_dir)
    t0 = time.perf_counter()
    try:
        if args.reproduce:
            with open(args.reproduce, "rb") as f:
                print(runner.run(targets[0], f.read()))
            return 1 if runner.defects else 0
        if args.engine == "atheris":
            if len(targets) != 1:
                p.error("the atheris engine fuzzes one target per process")
            run_atheris(runner, targets[0], args.cases, args.report, args.max_len)
        else:
            run_random(runner, args.cases, args.seed, args.progress)
    finally:
        rep = runner.report(args.engine, args.seed)
        rep["wall_seconds"] = round(time.perf_counter() - t0, 1)
        _write(args.report, rep)
        print(json.dumps({t: v for t, v in rep["targets"].items()}, indent=1))
        runner.ctx.close()
    return 1 if runner.defects else 0


if __name__ == "__main__":
    sys.exit(main())
