"""Where a sweep's independent groups run: inline, in local processes, or on a Ray cluster.

Every backend calls one picklable top-level function on each job and reports each result as it
arrives; results come back in job order. Jobs write into run directories themselves, so a Ray
cluster needs a root on a filesystem shared by its nodes (or a single node).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, TypeVar

from grokbasin.errors import ConfigError, GrokbasinError

J = TypeVar("J")
R = TypeVar("R")
OnResult = Callable[[int, Any], None]
BACKENDS = ("local", "ray")


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(threads: int, parent: int) -> None:
    """Give each process its share of the cores, so workers do not oversubscribe the CPU, and
    make it die with the parent: a killed sweep leaves no orphaned workers."""
    import torch

    die_with_parent(parent)
    torch.set_num_threads(threads)


def die_with_parent(parent: int) -> None:
    """Exit when process ``parent`` does: the kernel's parent-death signal on Linux, else a
    watchdog thread polling the parent id (also covers a parent that died before the call)."""
    import ctypes
    import signal
    import threading

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="grokbasin-parent-watch", daemon=True).start()


def run_local(
    fn: Callable[[J], R], jobs: Sequence[J], workers: int = 1, on_result: OnResult | None = None
) -> list[R]:
    """Inline for one worker; otherwise a spawn-based process pool of ``workers``."""
    out: list[Any] = [None] * len(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            out[i] = fn(job)
            if on_result:
                on_result(i, out[i])
        return out
    n = min(workers, len(jobs))
    with ProcessPoolExecutor(
        n,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(_threads_per_worker(n), os.getpid()),
    ) as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                i = futures[f]
                out[i] = f.result()  # re-raises a worker's error here; the pool is shut down
                if on_result:
                    on_result(i, out[i])
    return out


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise GrokbasinError(
            "the Ray backend needs Ray: pip install 'grokbasin[ray]' (or pip install ray)"
        ) from None
    return ray


def _start_ray(ray: Any, kw: dict[str, Any]) -> None:
    """ray.init, a failure of which (no cluster at --address, no room for its processes) is one
    line; a local instance's processes share the driver's fate (Ray's own default)."""
    try:
        ray.init(**kw)
    except Exception as e:  # Ray raises many types (ConnectionError, RuntimeError, ValueError)
        where = kw.get("address") or "a local instance"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise GrokbasinError(f"--backend ray: could not start Ray at {where} ({first})") from None


def run_ray(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    address: str | None = None,
    workers: int | None = None,
    on_result: OnResult | None = None,
) -> list[R]:
    """Each job a Ray task (1 CPU). ``address``: a cluster ('auto', 'ray://host:10001'); None
    starts a local instance with ``workers`` CPUs, shut down again afterwards."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {
            "address": address,
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address is None:
            kw["num_cpus"] = workers or os.cpu_count() or 1
        _start_ray(ray, kw)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(fn)
        refs = [remote.remote(job) for job in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        out: list[Any] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                i = index[ref]
                out[i] = ray.get(ref)
                if on_result:
                    on_result(i, out[i])
        return out
    finally:
        if started:
            ray.shutdown()
            time.sleep(0.1)


def run_jobs(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    on_result: OnResult | None = None,
) -> list[R]:
    """Run ``fn`` over ``jobs`` on the named backend; results in job order."""
    if not jobs:
        return []
    if backend == "local":
        if address:
            raise ConfigError("--address: only used with --backend ray")
        return run_local(fn, jobs, workers, on_result)
    if backend == "ray":
        return run_ray(fn, jobs, address, workers if workers > 1 else None, on_result)
    raise ConfigError(f"backend: got {backend!r}; use one of {', '.join(BACKENDS)}")


def run_jobs_with_progress(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    stage: str,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
) -> list[R]:
    """:func:`run_jobs` under one progress bar: a tick per finished job, named by its ``label``."""
    from grokbasin.progress import make_progress

    with make_progress(progress and bool(jobs)) as bar:
        task = bar.add_task("groups", total=len(jobs), stage=stage)

        def done(i: int, res: R) -> None:
            bar.update(task, advance=1, description=f"done {jobs[i].label}")

        return run_jobs(fn, jobs, backend, workers, address, on_result=done)


__all__ = ["BACKENDS", "run_jobs", "run_jobs_with_progress", "run_local", "run_ray"]
