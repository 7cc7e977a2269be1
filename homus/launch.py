"""Where a study's runs train: here one after another, here several at once, or on a Ray cluster.

Every way trains each run with the same :func:`classifier.train.train` on the same settings, so a
run's figures do not depend on where it trained (on the CPU, give each run the same
``train.threads`` to keep them bit for bit). Runs are independent: a failed run does not stop the
others, and each stays resumable, so the same command again continues what is unfinished.

- ``parallel: N``: joblib's process pool here; each run gets its own GPU (round robin when N is
  more than the GPUs) or a 1/N share of the CPU cores (``train.threads: 0``).
- ``ray: auto | local | ADDRESS``: one Ray task per run, asking for ``run_cpus`` cores and
  ``run_gpus`` GPUs; the run folders are written where ``train.runs_dir`` points, which every node
  must see at the same path (shared storage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import tempfile
import time
from pathlib import Path

from classifier.settings import TrainConfig
from homus_render.errors import HomusError, SettingsError, describe


class LaunchError(HomusError):
    """Runs that failed, or a cluster that cannot be reached."""


@dataclasses.dataclass
class Job:
    """One run to train: its settings, and whether its folder already holds a start to continue."""

    config: TrainConfig
    resume: bool

    @property
    def name(self) -> str:
        return self.config.run_name()


def train_job(job: Job, slots: list[tuple[str, int]] | None = None, log=None) -> dict:
    """Train one run in this process: ``{"run", "test_accuracy"}``, or ``{"run", "error"}`` for a
    fault homus reports in one line (any other exception is a bug and keeps its traceback).
    ``slots``: ``(lock file, GPU index)`` pairs shared by a pool; the run holds a free one while it
    trains. ``log``: where its lines go; none (a worker beside others): printed after the run's name,
    with no progress bars, since several runs share one terminal."""
    from classifier import engine
    from classifier.runfolder import RunFolder
    from classifier.train import train

    if log is None:
        engine.PROGRESS = False
        log = lambda m: print(f"[{job.name}] {m}", flush=True)  # noqa: E731
    with contextlib.ExitStack() as stack:
        if slots:
            gpu = stack.enter_context(_free_slot(slots))
            import torch

            torch.cuda.set_device(gpu)
        try:
            folder = train(job.config, resume=job.resume, log=log)
        except HomusError as e:
            return {"run": job.name, "error": describe(e) or str(e)}
    return {"run": job.name, "test_accuracy": RunFolder(folder).metrics()["test_accuracy"]}


@contextlib.contextmanager
def _free_slot(slots: list[tuple[str, int]]):
    """Hold the first free slot's lock (the kernel frees it with the process, however it ends) and
    yield its GPU. A pool of N workers has N slots, so one is always free."""
    import fcntl

    while True:
        for path, gpu in slots:
            with open(path, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    yield gpu
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
                return
        time.sleep(0.1)  # a run that ended has not let go yet


def train_jobs(jobs: list[Job], parallel: int = 1, ray: str | None = None, run_cpus: float = 2,
               run_gpus: float = -1, log=print) -> None:
    """Train every job (one after another, ``parallel`` at once, or on the Ray cluster ``ray``);
    returns when all have ended, and raises :class:`LaunchError` naming each run that failed."""
    if not jobs:
        return
    if ray:
        results = _on_ray(jobs, ray, run_cpus, run_gpus, log)
    elif parallel > 1 and len(jobs) > 1:
        results = _in_pool(jobs, parallel, log)
    else:
        results = []
        for job in jobs:  # one at a time: the first fault stops the study, as it would by hand
            _announce(job, log)
            r = train_job(job, log=log)
            if "error" in r:
                raise LaunchError(r["error"])
    failed = [r for r in results if "error" in r]
    if failed:
        lines = "; ".join(f"{r['run']}: {r['error']}" for r in failed)
        raise LaunchError(f"{len(failed)} of {len(jobs)} runs failed ({lines}); the others are complete, and "
                          "the same command again retries the failed ones")


def _announce(job: Job, log, where: str = "") -> None:
    log(f"training {Path(job.config.runs_dir) / job.name} ({'continuing' if job.resume else 'new'})"
        + (f" {where}" if where else ""))


def _with_threads(job: Job, threads: int) -> Job:
    """``job`` with ``threads`` torch threads where its settings leave the number to torch (0)."""
    return dataclasses.replace(job, config=dataclasses.replace(job.config, threads=job.config.threads or threads))


def _in_pool(jobs: list[Job], parallel: int, log) -> list[dict]:
    """``parallel`` runs at once in joblib's worker processes, which end with this one."""
    import torch
    from joblib import delayed

    from homus_render.workers import pool

    n = min(parallel, len(jobs))
    gpus = torch.cuda.device_count() if any(j.config.device in ("auto", "cuda") for j in jobs) else 0
    cores = os.cpu_count() or 1
    share = max(1, cores // n)
    jobs = [_with_threads(j, share) for j in jobs]
    each = f"on one of {gpus} GPU(s)" if gpus else f"with {share} of {cores} CPU cores"
    log(f"{len(jobs)} runs, {n} at a time, each {each}")
    for j in jobs:
        _announce(j, log, "(queued)")
    results = []
    with tempfile.TemporaryDirectory(prefix="homus-slots-") as locks:
        slots = [(str(Path(locks, f"slot{i}")), i % gpus) for i in range(n)] if gpus else None
        tasks = (delayed(train_job)(j, slots) for j in jobs)
        for r in pool(n, return_as="generator_unordered")(tasks):
            _report(r, log)
            results.append(r)
    return results


def _report(r: dict, log) -> None:
    if "error" in r:
        log(f"{r['run']}: failed: {r['error']}")
    else:
        log(f"{r['run']}: complete, test accuracy {r['test_accuracy']:.4f}")


def _absolute(cfg: TrainConfig) -> TrainConfig:
    """The settings with every path absolute: a Ray worker does not start in this folder."""
    def ab(p: str) -> str:
        return str(Path(p).expanduser().resolve())

    weights = cfg.weights if cfg.weights in ("none", "imagenet") else ab(cfg.weights)
    return dataclasses.replace(cfg, runs_dir=ab(cfg.runs_dir), raw_dir=ab(cfg.raw_dir),
                               variants=[ab(v) for v in cfg.variants], extra_raw=[ab(v) for v in cfg.extra_raw],
                               weights=weights)


def _on_ray(jobs: list[Job], address: str, run_cpus: float, run_gpus: float, log) -> list[dict]:
    """One Ray task per run, with its resource needs; Ray places them on the cluster's nodes."""
    # every run's epoch lines, each shown: Ray folds lines that differ only in their numbers otherwise
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise SettingsError("--ray needs Ray: pip install 'homus[ray]' (on every node of the cluster)") from None
    started = not ray.is_initialized()
    if started:
        if address not in ("auto", "local"):
            _check_reachable(address)
        on_term = signal.getsignal(signal.SIGTERM)  # ray.init takes SIGTERM over; homus' own handler ends runs cleanly
        try:
            if address == "local":  # a private instance on this machine, ended with the study
                ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=True, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise _no_cluster(address, str(e).splitlines()[0][:160]) from None
        finally:
            signal.signal(signal.SIGTERM, on_term)
    try:
        if run_gpus < 0:
            use_gpu = ray.cluster_resources().get("GPU", 0) > 0
            run_gpus = 1 if use_gpu and any(j.config.device != "cpu" for j in jobs) else 0
        task = ray.remote(_ray_task).options(num_cpus=run_cpus, num_gpus=run_gpus, max_retries=0)
        pending = {}
        for j in jobs:
            sent = _with_threads(j, max(1, int(run_cpus)))
            pending[task.remote(dataclasses.replace(sent, config=_absolute(sent.config)))] = j
            _announce(j, log, f"(Ray task: {run_cpus:g} CPU{'s' if run_cpus != 1 else ''}, {run_gpus:g} GPU)")
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                r = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:  # a bug in homus: show it whole
                raise e.as_instanceof_cause() from None
            except ray.exceptions.RayError as e:  # the worker or its node died
                r = {"run": job.name, "error": f"its Ray worker ended ({type(e).__name__}: "
                                               f"{str(e).splitlines()[0][:160]})"}
            _report(r, log)
            results.append(r)
        return results
    finally:
        if started:
            ray.shutdown()


def check_ray_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a cluster address, None for auto and local; a LaunchError for anything
    else, said before a study fetches, renders or plans anything."""
    if address in ("auto", "local"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise LaunchError(f"--ray {address!r}: give auto, local, HOST:PORT (the head's GCS port, 6379 by default) "
                          "or ray://HOST:PORT (a Ray client server, 10001 by default)")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """Fail in one line where nothing answers at ``host:port`` (or ``ray://host:port``): Ray itself
    would wait for that cluster for ever."""
    host, port = check_ray_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise _no_cluster(address, e.strerror or str(e)) from None


def _no_cluster(address: str, why: str) -> LaunchError:
    return LaunchError(f"no Ray cluster at {address!r} ({why}); start one with `ray start --head`, pass its "
                       "address, or use --ray local")


def _ray_task(job: Job) -> dict:
    """A Ray task: Ray has already set which GPU it sees."""
    return train_job(job)
