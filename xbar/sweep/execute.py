"""Running a sweep: filtering, local worker processes or a Dask cluster, progress, the journal
and the one writer that merges it into the store."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import store
from ..config import suggest
from ..errors import ConfigError, XbarError
from .groups import check_stack, estimate_group_seconds, own_crossbars, plan_groups, split_fields
from .spec import Experiment, Run
from .worker import fmt_time, run_group

# ---- filtering ----------------------------------------------------------------------------------------

def parse_only(items: Iterable[str]) -> dict[str, list[str]]:
    """['network=mlp-4', 'rule=bp', 'rule=fa'] -> {network: [mlp-4], rule: [bp, fa]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"--only {item!r}: expected KEY=VALUE, e.g. --only network=mlp-100x2")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def filter_runs(runs: list[Run], only: dict[str, list[str]]) -> list[Run]:
    if not only:
        return runs
    known = set(runs[0].config) | {k for r in runs for k in r.point}
    for k in only:
        if k not in known:
            raise ConfigError(f"--only {k}=...: unknown key{suggest(k, sorted(known))}; valid: "
                              f"{', '.join(sorted(known))}")

    def value(r: Run, k: str):
        return r.point[k] if k in r.point else r.config[k]

    def same(v, text: str) -> bool:
        if isinstance(v, float):
            try:
                return float(text) == v
            except ValueError:
                return False
        return str(v).lower() == text.lower() if isinstance(v, bool) else str(v) == text

    kept = [r for r in runs if all(any(same(value(r, k), t) for t in ts) for k, ts in only.items())]
    if not kept:
        raise ConfigError("--only " + " ".join(f"{k}={'|'.join(v)}" for k, v in only.items())
                          + ": no run of the grid matches")
    return kept


# ---- executing --------------------------------------------------------------------------------------

class Progress:
    """One status line: done, failed, running, elapsed and ETA (from the estimates, rescaled)."""

    def __init__(self, total: int, est_total: float, workers: int, stream=None, enabled: bool = True):
        self.total, self.est_total, self.workers = total, est_total, max(workers, 1)
        self.done = self.failed = 0
        self.est_done = 0.0
        self.start = time.perf_counter()
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def update(self, rec: dict[str, Any] | None = None, est: float = 0.0, running: int = 0) -> None:
        if rec is not None:
            self.done += 1
            self.est_done += est
            if rec["status"] != "ok":
                self.failed += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        if self.est_done > 0 and self.done:
            eta = elapsed * (self.est_total - self.est_done) / self.est_done
        else:
            eta = self.est_total / self.workers
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} done, {self.failed} failed, "
                f"{running} running | {fmt_time(elapsed)} elapsed, ETA {fmt_time(eta)}")
        if rec is not None and rec["status"] != "ok":
            msg = f"  run {rec['key']} {rec['status']}: {rec.get('message', '')[:200]}"
            print(("\r" + " " * 100 + "\r" if self.tty else "") + msg, file=self.stream, flush=True)
        if self.tty:
            print("\r" + line, end="", file=self.stream, flush=True)
        elif rec is not None or now - self._last > 30:
            print(line, file=self.stream, flush=True)
        self._last = now

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=self.stream, flush=True)


def _local_executor(workers: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    # Spawned workers read the environment at start: one BLAS and one numba thread each.
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "NUMBA_NUM_THREADS")}
    for k in saved:
        os.environ[k] = "1"
    try:
        ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init, initargs=(os.getpid(),))
        # start the workers now, under this environment
        list(ex.map(_noop, range(workers)))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ex


def _noop(_):
    return None


def _worker_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group: only the parent handles it (and stops the workers).
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent)


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this worker process when the sweep (process `parent`) dies, even by SIGKILL: an orphaned
    worker would finish its run for nothing, and hold the resource tracker alive with it.

    Linux delivers SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG; immediate, even inside a
    numba kernel holding the GIL); a thread polling the parent's pid covers other systems.
    """
    import signal
    import threading
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)   # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:   # it died before the line above took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="xbar-exit-with-parent", daemon=True).start()


class _Stop:
    """SIGINT/SIGTERM become a flag the runner polls, so it can stop workers and store cleanly."""

    def __init__(self):
        self.signum = None
        self._saved = {}

    def __enter__(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        import signal
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False


def run_sweep(exp: Experiment, out: str | os.PathLike, *, workers: int | None = None, cluster: str | None = None,
              only: dict[str, list[str]] | None = None, force: bool = False, dry_run: bool = False,
              retry_failed: bool = False, progress: bool = True, merge_every: float = 30.0,
              print_fn: Callable[[str], None] = print, submit_limit: int | None = None,
              warn: Callable[[str], None] | None = None, stack: str = "auto") -> dict[str, Any]:
    """Run (or, with dry_run, list) the spec's runs not yet in store `out`; returns a summary.

    warn: where one-line warnings go (journal entries set aside); default stderr.
    stack: "auto" trains runs that differ only in device-side settings together, as one stack
    per group (xbar.sweep.groups); "off" runs each alone.
    """
    check_stack(stack)
    warn = warn or store.warn_stderr
    notes: list[str] = []
    runs = filter_runs(exp.expand(notes=notes), only or {})
    for n in notes:
        print_fn(f"note: {n}")
    out = Path(out)
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected an integer >= 1")
    spec_hash = exp.spec_hash()
    stored: dict[str, str] = {}
    if out.exists():
        try:
            meta = store.info(out)
            store.verify(out)   # a damaged store is refused now, not when `xbar report` reads it
        except store.StoreError as exc:
            msg = str(exc) if store.DAMAGED_ADVICE in str(exc) else f"{exc}; choose another --out or move the file away"
            raise ConfigError(f"--out {msg}") from None
        if meta.get("spec_hash") != spec_hash and not force:
            raise ConfigError(f"--out {out} holds results of a different spec (spec hash {meta.get('spec_hash')}, "
                              f"this spec {spec_hash}, from {meta.get('spec_file') or 'unknown file'}); use "
                              "another --out, or --force to add this spec's runs to it")
        stored = meta["runs"]
    # Entries that cannot be stored (torn, empty, another run's key) are set aside: their runs are to do.
    for key in store.read_journal(out, quarantine=not dry_run, warn=warn):
        stored.setdefault(key, "journal")
    todo = [r for r in runs if r.key not in stored or (retry_failed and stored[r.key] == "error")]
    # Workers side by side share caches and memory bandwidth: measured 1.35x slower runs with two
    # workers on the 2-core dev machine (seed study, 46 runs) than the one-run fit of the estimate.
    share = 1.0 if workers == 1 else 1.35
    groups = plan_groups(todo, stack, 1 if cluster else workers)   # (a cluster's size is its own)
    est = {}   # per run: its share of its group's estimate
    longest = 0.0
    for g in groups:
        e = share * estimate_group_seconds(g)
        longest = max(longest, e)
        for r in g.runs:
            est[r.key] = e / len(g.runs)
    est_total = sum(est.values())
    est_wall = max(est_total / workers, longest)   # a task (a stack) trains on one worker
    n_stacks = sum(g.stacked for g in groups)
    summary = {"runs": len(runs), "stored": len(runs) - len(todo), "todo": len(todo),
               "estimated_seconds": est_wall, "out": str(out), "spec_hash": spec_hash,
               "groups": len(groups), "stacks": n_stacks}
    if dry_run:
        group_of = {r.key: n for n, g in enumerate(groups, 1) for r in g.runs}
        for r in runs:
            state = stored.get(r.key, "todo")
            gtext = f"g{group_of[r.key]:<4d}" if r.key in group_of else "     "
            print_fn(f"{r.index + 1:5d}  {r.key}  {state:8s}  {gtext} {r.label()}")
        _print_groups(groups, todo, stack, share, print_fn)
        print_fn(f"{len(runs)} runs: {summary['stored']} stored, {len(todo)} to run in {len(groups)} task(s) "
                 f"({n_stacks} stacked); estimated {fmt_time(est_wall)} on {workers} worker(s) "
                 "(rough, from this machine's timings)")
        return summary
    store.check_writable(out)
    store.cleanup(out)   # copies of a merge, torn journal temporaries: left by a killed sweep
    # Connect first: a cluster that cannot be reached leaves no empty store behind.
    client = _dask_client(cluster) if cluster and todo else None
    try:
        return _execute(exp, out, runs, groups, est, summary, workers, client, force, progress, merge_every,
                        print_fn, submit_limit, warn)
    finally:
        if client is not None:
            client.close()


def _print_groups(groups, todo, stack, share, print_fn) -> None:
    """--dry-run: the tasks (stacks and lone runs), what split the stacks, why lone runs are alone."""
    if stack == "off":
        print_fn("stacking off: every run is its own task")
        return
    split = split_fields(todo)
    if split:
        print_fn(f"stacks are split by {', '.join(split)} (a stack's runs share all but device-side settings)")
    whys: dict[str, int] = {}
    for n, g in enumerate(groups, 1):
        if g.stacked:
            own = " (each variant on its own crossbars: little faster than alone)" if any(
                own_crossbars(r.config) for r in g.runs) else ""
            print_fn(f"  g{n}: {len(g.runs)} runs stacked, estimated {fmt_time(share * estimate_group_seconds(g))}{own}")
        else:
            whys[g.why] = whys.get(g.why, 0) + 1
    for why, count in whys.items():
        print_fn(f"  {count} run(s) alone: {why}")


def _execute(exp, out: Path, runs, groups, est, summary, workers, client, force, progress, merge_every,
             print_fn, submit_limit, warn) -> dict[str, Any]:
    todo = [r for g in groups for r in g.runs]
    spec_hash = summary["spec_hash"]
    if not out.exists():
        store.create(out, exp.spec() | {"name": exp.name}, spec_hash, exp.file)
    elif force and store.info(out).get("spec_hash") != spec_hash:
        store.merge(out, [], spec_hash=spec_hash, warn=warn)
    if store.pending(out):
        store.merge(out, warn=warn)
    if not todo:
        print_fn(f"all {len(runs)} runs already stored in {out}")
        return summary | {"done": 0, "failed": 0, "diverged": 0, "seconds": 0.0}

    # Longest first: the last minutes stay busy. A task is a group (one run, or a stack).
    tasks = sorted(groups, key=lambda g: -sum(est[r.key] for r in g.runs))
    if submit_limit is not None:   # counted in runs; a stack is cut to fit
        left, cut = submit_limit, []
        for g in tasks:
            if left <= 0:
                break
            cut.append(type(g)(g.runs[:left], g.why, g.shared))
            left -= len(cut[-1].runs)
        tasks = cut
    order = [r for g in tasks for r in g.runs]
    prog = Progress(len(order), sum(est[r.key] for r in order), workers, enabled=progress)
    start = time.perf_counter()
    last_merge = time.perf_counter()
    done = failed = diverged = 0

    def finished(rec: dict[str, Any], running: int) -> None:
        nonlocal done, failed, diverged, last_merge
        store.write_journal(out, rec)
        done += 1
        failed += rec["status"] != "ok"
        diverged += rec["status"] == "diverged"
        prog.update(rec, est.get(rec["key"], 0.0), running)
        if time.perf_counter() - last_merge > merge_every:
            store.merge(out, warn=warn)
            last_merge = time.perf_counter()

    cache = str(out) + ".cache"   # shared pretrained networks of pruning sweeps
    payloads = [[{"key": r.key, "point": r.point, "config": r.config, "cache": cache} for r in g.runs] for g in tasks]
    try:
        if client is not None:
            _run_dask(client, payloads, finished)
        else:
            _run_local(workers, payloads, finished)
    finally:
        prog.close()
        store.merge(out, warn=warn)
    seconds = time.perf_counter() - start
    print_fn(f"{done} runs finished ({failed - diverged} failed, {diverged} diverged) in {fmt_time(seconds)}; "
             f"store: {out}")
    return summary | {"done": done, "failed": failed, "diverged": diverged, "seconds": seconds}


def _run_local(workers: int, payloads: list[dict], finished) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    if workers == 1 and os.environ.get("XBAR_SWEEP_INPROCESS") == "1":
        for p in payloads:           # debugging aid: no subprocesses
            for rec in run_group(p):
                finished(rec, 0)
        return
    ex = _local_executor(workers)
    stop = _Stop()
    try:
        queue = list(reversed(payloads))
        running = {}
        with stop:
            while (queue or running) and stop.signum is None:
                while queue and len(running) < workers * 2:
                    p = queue.pop()
                    running[ex.submit(run_group, p)] = p
                done_set, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                _collect(done_set, running, workers, finished)
    finally:
        if stop.signum is not None or sys.exc_info()[0] is not None:
            for proc in list((getattr(ex, "_processes", None) or {}).values()):
                proc.terminate()   # runs in flight are lost by design; finished ones are journaled
        ex.shutdown(wait=False, cancel_futures=True)
    if stop.signum is not None:
        raise KeyboardInterrupt


def _collect(done_set, running, workers, finished) -> None:
    from concurrent.futures.process import BrokenProcessPool
    for fut in done_set:
        running.pop(fut)
        try:
            recs = fut.result()
        except BrokenProcessPool:
            raise XbarError("a worker process died (killed or out of memory); finished runs are "
                            "stored: re-run the same command to continue") from None
        for rec in recs:
            finished(rec, min(len(running), workers))


def _dask_client(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--cluster needs dask.distributed: pip install 'xbar-sim[dask]'") from None
    try:
        return Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--cluster {address}: cannot reach a Dask scheduler there ({exc})") from None


def _run_dask(client, payloads: list[dict], finished) -> None:
    from distributed import as_completed
    # One task per group, named by its first run.
    futures = [client.submit(run_group, p, pure=False, key=f"xbar-run-{p[0]['key']}") for p in payloads]
    n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
    pending_n = len(futures)
    for fut in as_completed(futures):
        pending_n -= 1
        try:
            recs = fut.result()
        except Exception as exc:   # noqa: BLE001 - a lost worker: record, go on
            key = str(fut.key).removeprefix("xbar-run-")
            group = next(p for p in payloads if p[0]["key"] == key)
            recs = [{"key": q["key"], "point": q["point"], "config": q["config"], "status": "error",
                     "message": f"dask: {type(exc).__name__}: {exc}", "history": [], "env": {}} for q in group]
        for rec in recs:
            finished(rec, min(pending_n, n_workers))
