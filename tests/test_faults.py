"""Faults: a compile killed (SIGKILL) at any point, a full disk, two processes compiling to one path,
and a Chip used from several threads (docs/reliability.md "Faults")."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hcemu.chip.chip import Chip, ChipBusyError
from hcemu.model.spec import ModelSpec
from hcemu.model.synthetic import SyntheticSource
from hcemu.rom.image import RomImage, compile_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = ModelSpec("fault-small", n_layers=2, d_model=256, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=512,
                 vocab_size=1024, max_context=64)

# a child that compiles SPEC (seed argv[2]) to argv[1] in small chunks, saying when it starts
CHILD = """
import sys
from hcemu.model.synthetic import SyntheticSource
from hcemu.rom.image import compile_model
from hcemu.model.spec import ModelSpec
spec = ModelSpec(**{spec!r})
src = SyntheticSource(spec, int(sys.argv[2]))
if len(sys.argv) > 3:
    sys.stdin.readline()
print("go", flush=True)
compile_model(src, "int8", sys.argv[1], progress=False, chunk_elems=1 << 14)
print("done", flush=True)
""".format(spec=SPEC.to_dict())


def _child(path, seed, wait=False):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    args = [sys.executable, "-c", CHILD, str(path), str(seed)] + (["wait"] if wait else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.PIPE, env=env, text=True)


def _seed_of(img) -> int:
    return int(img.directory["source"].rsplit("seed ", 1)[1].rstrip(")"))


@pytest.mark.slow
def test_sigkill_during_compile_leaves_the_old_image_or_none(tmp_path):
    """SIGKILL at points spread over a compile (six children at once, over an old image or none): the
    path holds the old image, the complete new one, or nothing; never a partial file."""
    t0 = time.monotonic()
    compile_model(SyntheticSource(SPEC, 1), "int8", tmp_path / "old.hcrom", progress=False, chunk_elems=1 << 14)
    duration = time.monotonic() - t0
    old_bytes = (tmp_path / "old.hcrom").read_bytes()
    plan = []
    for i, frac in enumerate((0.0, 0.0, 0.3, 0.6, 1.0, 2.0)):
        target = tmp_path / f"case{i}.hcrom"
        if i % 2:
            target.write_bytes(old_bytes)
        plan.append((target, frac, i % 2 == 1))
    procs = [_child(target, 2) for target, _f, _o in plan]
    starts = []
    for p in procs:
        assert p.stdout.readline().strip() == "go"
        starts.append(time.monotonic())
    for (target, frac, _had_old), p, start in sorted(zip(plan, procs, starts), key=lambda e: e[2] + e[0][1] * duration):
        time.sleep(max(0.0, start + frac * duration - time.monotonic()))
        p.send_signal(signal.SIGKILL)
    outcomes = []
    for (target, _frac, had_old), p in zip(plan, procs):
        p.wait()
        if not target.exists():
            assert not had_old   # the old image is never removed
            outcomes.append("none")
            continue
        with RomImage.load(target) as img:   # verify=True: every section's checksum
            seed = _seed_of(img)
        if seed == 1:
            assert had_old and target.read_bytes() == old_bytes
            outcomes.append("old")
        else:
            assert seed == 2
            outcomes.append("new")
    assert outcomes[0] == "none" and outcomes[1] == "old", outcomes   # killed at once: before the rename


def test_write_error_is_a_clear_oserror_and_leaves_the_old_image(tmp_path):
    """A real write error from the kernel: a file-size limit (EFBIG) in a child, as a full disk (ENOSPC)
    would be; the message names the path, the old image is untouched, no temporary file is left."""
    old = tmp_path / "model.hcrom"
    compile_model(SyntheticSource(SPEC, 1), "int8", old, progress=False)
    before = old.read_bytes()
    script = (
        "import json, resource, signal, sys\n"
        "from hcemu.model.synthetic import SyntheticSource\nfrom hcemu.rom.image import compile_model\n"
        "from hcemu.model.spec import ModelSpec\n"
        f"spec = ModelSpec(**{SPEC.to_dict()!r})\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, 1 << 18))\n"
        "try:\n"
        "    compile_model(SyntheticSource(spec, 2), 'int8', sys.argv[1], progress=False)\n"
        "    print(json.dumps({'ok': True}))\n"
        "except OSError as e:\n"
        "    print(json.dumps({'type': type(e).__name__, 'errno': e.errno, 'msg': str(e)}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    out = subprocess.run([sys.executable, "-c", script, str(old)], capture_output=True, text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res.get("errno") == errno.EFBIG, res
    assert "while writing" in res["msg"] and str(old) in res["msg"] and "left unchanged" in res["msg"]
    assert old.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.hcrom"]


def test_full_disk_is_a_clear_oserror(tmp_path, monkeypatch):
    """ENOSPC from a write partway through (the file system fills up)."""
    import hcemu._io as io_mod

    real_fdopen = os.fdopen

    class Filling:
        def __init__(self, f, budget):
            self._f, self._left = f, budget

        def write(self, b):
            self._left -= len(b)
            if self._left < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(b)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    monkeypatch.setattr(io_mod.os, "fdopen", lambda fd, mode: Filling(real_fdopen(fd, mode), 100_000))
    out = tmp_path / "model.hcrom"
    with pytest.raises(OSError, match=r"No space left on device while writing .*model.hcrom \(left unchanged\)") as ei:
        compile_model(SyntheticSource(SPEC, 1), "int8", out, progress=False)
    assert ei.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_a_real_full_file_system_is_a_clear_oserror(tmp_path):
    """A 256 KiB tmpfs filled by the compile: ENOSPC from the kernel (needs the right to mount, as root
    in a container; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(OSError, match="No space left on device while writing .*left unchanged") as ei:
            compile_model(SyntheticSource(SPEC, 1), "int8", mnt / "model.hcrom", progress=False)
        assert ei.value.errno == errno.ENOSPC
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.slow
def test_two_processes_compiling_to_one_path_leave_one_whole_image(tmp_path):
    path = tmp_path / "shared.hcrom"
    procs = [_child(path, seed, wait=True) for seed in (1, 2)]
    for p in procs:   # both have imported everything; start them together
        p.stdin.write("\n")
        p.stdin.flush()
    for p in procs:
        assert p.stdout.readline().strip() == "go"
    for p in procs:
        assert p.stdout.readline().strip() == "done"
        assert p.wait() == 0
    with RomImage.load(path) as img:
        assert _seed_of(img) in (1, 2)
    assert sorted(os.listdir(tmp_path)) == ["shared.hcrom"]


# ---------------------------------------------------------------- a Chip and threads
@pytest.fixture(scope="module")
def image(tmp_path_factory):
    spec = ModelSpec("thread-tiny", 2, 64, 4, 2, 16, 128, 96, max_context=64)
    path = tmp_path_factory.mktemp("thr") / "t.hcrom"
    compile_model(SyntheticSource(spec, 3), "int4", path, progress=False)
    img = RomImage.load(path)
    yield img
    img.close()


def test_a_chip_refuses_a_second_thread_while_running(image):
    chip = Chip(image)
    seen = []

    def from_another_thread(_tok):
        t = threading.Thread(target=lambda: seen.append(_try(chip.decode, 1)))
        t.start()
        t.join()
        seen.append(_try(chip.reset))

    chip.generate([1, 2, 3], 2, on_token=from_another_thread)
    assert seen and all(isinstance(e, ChipBusyError) for e in seen[:1])
    assert "another thread is running this chip" in str(seen[0])
    chip.reset()   # the owner is free again once generate returned


def _try(fn, *args):
    try:
        fn(*args)
    except ChipBusyError as e:
        return e
    return None


def test_chip_hammered_by_threads_stays_consistent(image):
    """Four threads decode on one chip: each call runs whole or raises ChipBusyError, and the cache holds
    exactly the tokens of the calls that ran, in some order whose replay on a fresh chip gives the same
    logits call for call."""
    chip = Chip(image, n_threads=1)
    chip.prefill([1, 2])
    ran, busy = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def worker(k):
        barrier.wait()
        for i in range(6):
            tok = 3 + (k * 7 + i) % 90
            try:
                logits = chip.decode(tok).logits.copy()
            except ChipBusyError:
                busy.append(tok)
                continue
            with lock:
                ran.append((tok, logits))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ran) + len(busy) == 24 and chip.position == 2 + len(ran)
    replay = Chip(image)
    replay.prefill([1, 2])
    left = list(ran)
    while left:   # find the order: at each position exactly the call that ran there reproduces its logits
        pos = replay.position
        for j, (tok, logits) in enumerate(left):
            if np.array_equal(replay.decode(tok).logits, logits):
                left.pop(j)
                break
            replay.kv.truncate(pos)
        else:
            raise AssertionError(f"no call reproduces its logits at position {pos}")


def test_chips_sharing_one_image_run_in_parallel_threads(image):
    """One RomImage (read-only ROM, shared prepared weights), one Chip per thread: results equal the
    sequential ones."""
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]

    def run(prompt):
        chip = Chip(image, n_threads=2)
        res = chip.prefill(prompt).logits
        return np.concatenate([res] + [chip.decode(t).logits for t in (11, 12, 13)])

    want = [run(p) for p in prompts]
    got = [None] * len(prompts)
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, run(prompts[i]))) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w, g in zip(want, got):
        assert np.array_equal(w, g)
