"""Sharded work on one process, on local worker processes, or on Ray actors.

A :class:`Job` is a small picklable object: ``setup()`` runs once per worker (load the generator,
move networks to the device) and ``run(state, task)`` runs once per shard and returns its result.
:func:`run_tasks` hands the tasks to a back end and yields ``(task index, result)`` as shards
finish, in any order; the caller writes results. A job's results must not depend on which worker
ran a task or on how many workers there are: that is what lets ``export`` give the same bytes with
one process, ``--workers W`` or Ray.

Back ends:

- ``workers=1`` and no Ray: the tasks run in this process, one after the other.
- ``workers=W``: W local processes (spawned, so CUDA works in them), each with its own copy of the
  job's state; at most two tasks per worker are in flight, so memory stays bounded.
- ``ray="auto"``: a local Ray instance on 127.0.0.1, shut down afterwards; ``ray=ADDRESS`` joins an
  existing cluster. W actors each load the job's state once (a GPU each when ``device`` is
  CUDA).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from clusterguide.errors import UserError


class Job(Protocol):
    def setup(self) -> Any: ...

    def run(self, state: Any, task: Any) -> Any: ...


@dataclass(frozen=True)
class Backend:
    """Where the shards run."""

    workers: int = 1  # processes or Ray actors
    ray: str | None = None  # None (no Ray), "auto" (start a local instance) or a cluster address
    device: str = "cpu"  # each worker's device; with Ray and CUDA every actor asks for one GPU
    threads: int | None = None  # torch threads per worker (None: the cores divided among workers)

    def describe(self) -> str:
        if self.ray:
            return f"Ray ({'local' if self.ray == 'auto' else self.ray}), {self.workers} actor(s)"
        return "this process" if self.workers == 1 else f"{self.workers} local processes"

    def threads_per_worker(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)


def check_backend(workers: int, ray: str | None) -> None:
    """Validate the options before any work (one line each)."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    if ray is not None:
        if not ray.strip():
            raise UserError("--ray needs 'auto' or a cluster address host:port")
        try:
            import ray as _  # noqa: F401
        except ImportError:
            raise UserError("the Ray back end needs Ray: pip install 'clusterguide[ray]'") from None
        if ray != "auto":
            check_reachable(ray)


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast with one line when a Ray address cannot be reached (ray.init would wait long)."""
    text = address.removeprefix("ray://")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise UserError(f"--ray {address!r} is not 'auto' or an address host:port")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def run_tasks(
    job: Job, tasks: Sequence[Any], backend: Backend, state: Any = None
) -> Iterator[tuple[int, Any]]:
    """Run ``job`` on every task; yields (index into ``tasks``, result) as tasks finish.

    ``state``: what ``job.setup()`` would return, when the caller already has it (a loaded
    generator); used only when the tasks run in this process."""
    if not tasks:
        return
    if backend.ray:
        yield from _run_ray(job, tasks, backend)
    elif backend.workers > 1 and len(tasks) > 1:
        yield from _run_processes(job, tasks, backend)
    else:
        state = job.setup() if state is None else state
        for i, task in enumerate(tasks):
            yield i, job.run(state, task)


# ---- local processes ------------------------------------------------------------------------
_WORKER: tuple[Job, Any] | None = None


def _init_process(job: Job, threads: int) -> None:
    import signal

    # The parent handles Ctrl-C and terminates the pool; workers must not die mid-result on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    global _WORKER
    _WORKER = (job, job.setup())


def _run_in_process(item: tuple[int, Any]) -> tuple[int, Any]:
    assert _WORKER is not None
    job, state = _WORKER
    index, task = item
    return index, job.run(state, task)


def _run_processes(job: Job, tasks: Sequence[Any], backend: Backend) -> Iterator[tuple[int, Any]]:
    ctx = multiprocessing.get_context("spawn")
    workers = min(backend.workers, len(tasks))
    pool = ctx.Pool(workers, initializer=_init_process, initargs=(job, backend.threads_per_worker()))
    try:
        yield from pool.imap_unordered(_run_in_process, list(enumerate(tasks)))
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# ---- Ray ----------------------------------------------------------------------------------------
class _Actor:
    def __init__(self, job: Job, threads: int) -> None:
        torch.set_num_threads(threads)
        self.job = job
        self.state = job.setup()

    def run(self, item: tuple[int, Any]) -> tuple[int, Any]:
        index, task = item
        return index, self.job.run(self.state, task)


def _run_ray(job: Job, tasks: Sequence[Any], backend: Backend) -> Iterator[tuple[int, Any]]:
    import ray
    from ray.util import ActorPool

    started = False
    if not ray.is_initialized():
        if backend.ray == "auto":
            ray.init(
                num_cpus=max(backend.workers, 1),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            check_reachable(str(backend.ray))
            try:
                ray.init(address=backend.ray, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError) as exc:
                raise UserError(f"cannot join the Ray cluster at {backend.ray}: {exc}") from None
        started = True
    cuda = torch.device(backend.device).type == "cuda"
    actor_cls: Any = ray.remote(num_cpus=1, num_gpus=1 if cuda else 0)(_Actor)
    actors: list[Any] = [actor_cls.remote(job, backend.threads_per_worker()) for _ in range(backend.workers)]
    try:
        pool = ActorPool(actors)
        results = pool.map_unordered(lambda actor, item: actor.run.remote(item), list(enumerate(tasks)))
        while True:
            try:
                yield next(results)
            except StopIteration:
                break
            except ray.exceptions.RayTaskError as exc:
                # A UserError raised in an actor is still the user's error: one line, exit 2.
                if isinstance(exc.cause, UserError):
                    raise UserError(str(exc.cause)) from None
                raise
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
