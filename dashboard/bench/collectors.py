"""``flowerbed bench collectors``: what each library's collector costs a job, and a worker's throughput.

Per library, in that library's own virtualenv (:mod:`dashboard.demo.envs`, built on first use), two
probes from ``collector_probes/`` are run as scripts:

* in-process: ``jobs`` no-op jobs through the library's real execution path (Celery ``task.apply()``,
  Dramatiq's worker-thread middleware chain on a StubBroker, Taskiq's worker ``Receiver.callback`` on
  prebuilt messages, arq's instrumented coroutine as ``Worker.run_job`` calls it), alternating
  runs without and with the collector. The cost per job is the best-of CPU time of the job's own
  thread with minus without, over ``jobs`` (the emitter's background thread is not the job's thread;
  its work shows in the throughput figure). The wall-clock difference is reported beside it. Where a
  probe also measures the producer's side (Taskiq: ``kiq()``), that figure is reported apart.
* throughput: a real worker process (``celery worker -P solo``, ``dramatiq`` 1 process × 1 thread,
  ``taskiq worker`` 1 process, ``arq``) on the local Redis drains a queue filled beforehand; sentinel
  jobs time the steady part (see ``collector_probes/_common.py``). Runs alternate without and with
  the collector; the best of each gives jobs/s and the loss. Each run has its own queue, keys and
  event stream, deleted afterwards. Between the sentinels the worker's CPU time (every thread of its
  process tree, from /proc schedstat) and Redis's (``INFO cpu``) are sampled too, to say where a loss
  comes from: CPU per job with minus without is what the collector costs the worker in total (hooks and
  emitter thread), ``cpu_loss_pct`` its share (the throughput a CPU-bound worker loses), and Redis's
  added CPU is its side of the XADDs. The collector's sending thread is measured apart (it names
  itself ``flowerbed-emit`` to the OS), and the worker's garbage collections are counted.
  For Celery and Dramatiq, each alternation has a third run, without the collector: the worker with
  Celery's own task events on (``--task-events``, what Flower reads), and with Dramatiq's own
  Prometheus middleware. The collector's cost stands beside what a team pays today for a view of its
  jobs (``REFERENCES``; ``--valgrind`` counts it too).
  The worker is pinned to one CPU (``FB_BENCH_CPUS``; see ``_common.worker_cpus``) and runs with a
  fixed ``PYTHONHASHSEED``: unpinned, one run's throughput differed from the next by ±12 % on a
  2-vCPU VM, pinned by ±2-5 %. On 2 vCPUs that are hyperthreads of one core the figures still move
  from run to run: a CPU second buys less work while the sibling is busy. Read the median of the
  alternations' losses beside the best-of figure.

The machine's 1-minute load average is printed with the figures: on a shared machine, read them with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from .collector_instructions import describe

__all__ = ["main", "GOAL_US_PER_JOB", "GOAL_LOSS_PCT"]

LIBS = ("arq", "dramatiq", "taskiq", "celery")
PROBES = Path(__file__).resolve().parent / "collector_probes"
#: The goals of issue 3: per job on the job's own thread, and throughput lost to the collector.
GOAL_US_PER_JOB = 5.0
GOAL_LOSS_PCT = 2.0


class Reference(NamedTuple):
    """A worker measured beside the two: what a team pays today for a view of its jobs."""

    name: str  # its runs' key in the report
    what: str
    env: dict[str, str]  # what the probe's worker is run with (no collector)


#: Celery's own task events (``worker -E``) are what Flower reads; Dramatiq ships a Prometheus middleware.
REFERENCES: dict[str, Reference] = {
    "celery": Reference("celery_events", "Celery's own task events (worker --task-events, which Flower needs), "
                        "no collector", {"FB_BENCH_CELERY_EVENTS": "1"}),
    "dramatiq": Reference("dramatiq_prometheus", "Dramatiq's own Prometheus middleware "
                          "(dramatiq.middleware.prometheus), no collector", {"FB_BENCH_DRAMATIQ_PROMETHEUS": "1"}),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowerbed bench collectors", description=__doc__.split("\n")[0])
    p.add_argument("--libs", default=",".join(LIBS), help="comma-separated libraries (default: all four)")
    p.add_argument("--jobs", type=int, default=3000,
                   help="no-op jobs per throughput run, and per in-process run ×2 (default 3000)")
    p.add_argument("--repeat", type=int, default=3, help="throughput runs per mode; best-of (default 3)")
    p.add_argument("--inproc-repeat", type=int, default=7, help="in-process runs per mode; best-of (default 7)")
    p.add_argument("--skip-throughput", action="store_true", help="only the in-process cost")
    p.add_argument("--valgrind", action="store_true",
                   help="also count the worker's instructions and cache misses per job under valgrind, "
                        "without and with the collector, between the sentinel jobs (~3 min a library)")
    p.add_argument("--valgrind-repeat", type=int, default=1,
                   help="counted runs per mode under --valgrind; the median is reported (default 1)")
    p.add_argument("--valgrind-jobs", type=int, default=1000,
                   help="jobs between the sentinels of a run under --valgrind (default 1000)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--redis-url", default=os.environ.get("FLOWERBED_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return p


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def env_python(lib: str) -> tuple[Path, str]:
    """The library's venv python, and which helper built it."""
    try:
        from dashboard.demo import envs
    except ImportError:  # pragma: no cover - a checkout from before the demo's environments
        from tests.libenvs import ensure_env  # type: ignore[import-not-found]

        return ensure_env(lib) / "python", "tests.libenvs"
    if not envs.is_ready(lib):
        _log(f"{lib}: preparing its environment (first run only)…")
    return envs.ensure_env(lib) / "python", "dashboard.demo.envs"


def _probe(python: Path, lib: str, args: list[str], redis_url: str, timeout: float,
           stream: str | None = None, extra_env: dict[str, str] | None = None,
           wrap: list[str] | None = None) -> dict[str, Any]:
    env = dict(os.environ, **(extra_env or {}))
    if stream is not None:
        env["FLOWERBED_STREAM"] = stream
    env["FLOWERBED_REDIS_URL"] = redis_url
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPATH", None)  # the probe directory comes first as the script's own
    proc = subprocess.run([*(wrap or []), str(python), str(PROBES / f"{lib}_probe.py"), *args], env=env, cwd=str(PROBES),
                          capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-3000:]
        raise RuntimeError(f"{lib} probe {' '.join(args)} failed ({proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _inproc_stream(lib: str) -> str:
    import uuid

    return f"fbbench:{lib}:{uuid.uuid4().hex[:12]}:inproc"


def bench_lib(lib: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements for one library."""
    python, source = env_python(lib)
    out: dict[str, Any] = {"lib": lib, "env": source, "python": str(python)}
    reference = REFERENCES.get(lib)
    stream = _inproc_stream(lib)
    load0 = _load()
    _log(f"{lib}: in-process, {args.jobs * 2} jobs × {args.inproc_repeat} per mode (load {load0:.2f})")
    try:
        inproc = _probe(python, lib, ["inproc", "--jobs", str(args.jobs * 2), "--repeat", str(args.inproc_repeat)],
                        args.redis_url, timeout=600, stream=stream)
    finally:
        _delete(args.redis_url, stream)
    out["inproc"] = inproc
    out["us_per_job"] = round(inproc["us_per_job"], 2)
    out["us_per_job_wall"] = round(inproc["us_per_job_wall"], 2)
    out["us_per_job_baseline"] = round(inproc["us_per_job_without"], 2)
    if inproc.get("floor_us_per_job") is not None:  # the library's dispatch to an empty hook, within us_per_job
        out["floor_us_per_job"] = round(inproc["floor_us_per_job"], 2)
    if inproc.get("emitter_us_per_job") is not None:  # the sending thread's CPU for those same jobs
        out["emitter_us_per_job_inproc"] = round(inproc["emitter_us_per_job"], 2)
    out["path"] = inproc.get("path")
    if "producer_us_per_job" in inproc:  # enqueueing: the producer's thread, not the job's
        out["producer_us_per_job"] = round(inproc["producer_us_per_job"], 2)
    if not args.skip_throughput:
        runs: dict[str, list[float]] = {"without": [], "with": []}
        cpu: dict[str, list[float]] = {"without": [], "with": []}
        redis_cpu: dict[str, list[float]] = {"without": [], "with": []}
        emitter_cpu: list[float] = []
        gc_runs: dict[str, list[Any]] = {"without": [], "with": []}
        events: list[int] = []
        entries: list[int] = []
        modes: list[tuple[str, str, dict[str, str]]] = [("without", "0", {}), ("with", "1", {})]
        if reference is not None:
            modes.append((reference.name, "0", reference.env))
            runs[reference.name] = []
        for i in range(args.repeat):
            for mode, flag, extra_env in modes:
                _log(f"{lib}: throughput {describe(mode)}, run {i + 1}/{args.repeat}, {args.jobs} jobs "
                     f"(load {_load():.2f})")
                r = _probe(python, lib, ["throughput", "--jobs", str(args.jobs), "--collector", flag],
                           args.redis_url, timeout=900, extra_env=extra_env)
                runs[mode].append(r["jobs_per_s"])
                if reference is not None and mode == reference.name:  # its throughput alone
                    continue
                if "cpu_us_per_job" in r:
                    cpu[mode].append(r["cpu_us_per_job"])
                if "redis_cpu_us_per_job" in r:
                    redis_cpu[mode].append(r["redis_cpu_us_per_job"])
                if "events" in r:
                    events.append(r["events"])
                    entries.append(r["entries"])
                if mode == "with" and "emitter_cpu_us_per_job" in r:
                    emitter_cpu.append(r["emitter_cpu_us_per_job"])
                if "gc" in r:
                    gc_runs[mode].append(r["gc"])
        best_without, best_with = max(runs["without"]), max(runs["with"])
        out["throughput"] = {"runs": runs, "events_per_run": events, "entries_per_run": entries, "gc": gc_runs}
        if emitter_cpu:  # the collector's sending thread, apart from the rest of the worker
            out["emitter_cpu_us_per_job"] = round(statistics.median(emitter_cpu), 2)
        if events:
            out["events_per_job"] = round(statistics.median(events) / args.jobs, 3)
            out["entries_per_job"] = round(statistics.median(entries) / args.jobs, 4)
        out["jobs_per_s_without"] = round(best_without, 1)
        out["jobs_per_s_with"] = round(best_with, 1)
        out["loss_pct"] = round((best_without - best_with) / best_without * 100.0, 2)
        # Each alternation's own loss as well: their spread says how far the best-of figure can be trusted
        # (on this 2-vCPU VM the same code gave 3-7 % from one run to the next).
        pairs = [(w - c) / w * 100.0 for w, c in zip(runs["without"], runs["with"])]
        out["loss_pct_pairs"] = [round(x, 2) for x in pairs]
        out["loss_pct_median"] = round(statistics.median(pairs), 2)
        if reference is not None:  # the same alternations' loss to the reference setting
            ref_pairs = [(w - c) / w * 100.0 for w, c in zip(runs["without"], runs[reference.name])]
            out["reference"] = {"name": reference.name, "what": reference.what,
                                "jobs_per_s": round(max(runs[reference.name]), 1),
                                "loss_pct_median": round(statistics.median(ref_pairs), 2)}
        if cpu["without"] and cpu["with"]:
            # CPU per job of the worker's whole process tree, best-of: what the collector adds in total
            # (hooks and emitter thread), and as a share of the worker's (its throughput loss when CPU-bound).
            base_cpu, with_cpu = min(cpu["without"]), min(cpu["with"])
            out["throughput"].update(cpu_us_per_job=cpu, redis_cpu_us_per_job=redis_cpu)
            out["worker_cpu_us_per_job_without"] = round(base_cpu, 2)
            out["worker_cpu_us_per_job_with"] = round(with_cpu, 2)
            out["cpu_loss_pct"] = round((with_cpu - base_cpu) / with_cpu * 100.0, 2)
            cpu_pairs = [(c - w) / c * 100.0 for w, c in zip(cpu["without"], cpu["with"])]
            out["cpu_loss_pct_median"] = round(statistics.median(cpu_pairs), 2)
            if "emitter_us_per_job_inproc" in out:
                # The collector's CPU as the in-process probe measures it (job thread plus emitter thread,
                # to ±1 µs) over a no-op job's CPU in the real worker (median). A lower bound: in a real
                # worker the same hooks take about twice their in-process time (Celery's three handlers,
                # timed inside a solo worker: 12.3 µs a job against 5-6 in-process), their caches cold.
                total = out["us_per_job"] + out["emitter_us_per_job_inproc"]
                out["cpu_loss_pct_estimate"] = round(total / statistics.median(cpu["without"]) * 100.0, 2)
        if redis_cpu["without"] and redis_cpu["with"]:
            out["redis_cpu_us_per_job_added"] = round(min(redis_cpu["with"]) - min(redis_cpu["without"]), 2)
    if args.valgrind:
        from . import collector_instructions

        def probe(probe_args: list[str], extra_env: dict[str, str]) -> dict[str, Any]:
            return _probe(python, lib, probe_args, args.redis_url, timeout=2400, extra_env=extra_env)

        def inproc_probe(probe_args: list[str], extra_env: dict[str, str], wrap: list[str]) -> dict[str, Any]:
            stream = _inproc_stream(lib)
            try:
                return _probe(python, lib, probe_args, args.redis_url, timeout=1200, stream=stream,
                              extra_env=extra_env, wrap=wrap)
            finally:
                _delete(args.redis_url, stream)

        out["valgrind_job_thread"] = collector_instructions.job_thread(
            inproc_probe, _log, lib, jobs=args.valgrind_jobs, floor="floor_us_per_job" in out)
        out["valgrind"] = collector_instructions.measure(
            probe, _log, lib, repeat=args.valgrind_repeat, jobs=args.valgrind_jobs,
            reference=None if reference is None else (reference.name, reference.env))
    out["load_avg"] = [round(load0, 2), round(_load(), 2)]
    return out


def _delete(redis_url: str, stream: str) -> None:
    try:
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            client.delete(stream)
        finally:
            client.close()
    except Exception as exc:  # pragma: no cover - reported, not fatal
        _log(f"could not delete {stream}: {exc}")


def _table(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    nan = float("nan")
    lines = [
        f"{'library':<9} {'µs/job (job thread)':>20} {'µs/job (emitter)':>17} {'jobs/s without':>15} "
        f"{'jobs/s with':>12} {'loss % (median)':>16} {'(best-of)':>10} {'CPU loss % (median)':>20}  load",
    ]
    for r in results:
        lines.append(
            f"{r['lib']:<9} {r['us_per_job']:>20.2f} {r.get('emitter_us_per_job_inproc', nan):>17.2f} "
            f"{r.get('jobs_per_s_without', nan):>15.1f} {r.get('jobs_per_s_with', nan):>12.1f} "
            f"{r.get('loss_pct_median', nan):>16.2f} {r.get('loss_pct', nan):>10.2f} "
            f"{r.get('cpu_loss_pct_median', nan):>20.2f}"
            f"  {r['load_avg'][0]:.2f}→{r['load_avg'][1]:.2f}"
        )
    lines.append("  (job thread and emitter: in-process, pinned, best-of; jobs/s: best-of worker runs; loss: the median "
                 "of each back-to-back pair's, which a noisy VM moves least, and the best-of runs'; CPU loss: the "
                 "worker's CPU per job, all threads, with against without, median of pairs)")
    for r in results:
        if "floor_us_per_job" in r:
            lines.append(f"  {r['lib']}: of the job thread's {r['us_per_job']:.2f} µs, {r['floor_us_per_job']:.2f} µs is "
                         f"the library's own dispatch to hooks that do nothing")
    lines.append(f"goals: ≤ {GOAL_US_PER_JOB:g} µs per job on the job's thread, ≤ {GOAL_LOSS_PCT:g} % throughput loss")
    budget = GOAL_US_PER_JOB / machine["issue_build_queue_us"]
    lines.append(f"  this machine builds and queues one job event in {machine['build_queue_us']:.2f} µs and serialises "
                 f"it in {machine['serialise_us']:.2f} µs ({machine['serialiser']}); the issue measured "
                 f"~{machine['issue_build_queue_us']:g} and ~{machine['issue_serialise_us']:g} µs, so its "
                 f"{GOAL_US_PER_JOB:g} µs is {budget:g} events built and queued. The job thread's cost in those: "
                 + ", ".join(f"{r['lib']} {r['events_built_per_job_cost']:g}" for r in results))
    for r in results:
        if "loss_pct_pairs" in r:
            lines.append(f"  {r['lib']}: loss of each alternation {r['loss_pct_pairs']} %, median {r['loss_pct_median']:.2f} %")
    for r in results:
        if "cpu_loss_pct" in r:
            lines.append(f"  {r['lib']}: worker CPU per job (all threads) {r['worker_cpu_us_per_job_without']:.1f} → "
                         f"{r['worker_cpu_us_per_job_with']:.1f} µs, loss when CPU-bound {r['cpu_loss_pct']:.2f} % "
                         f"(median of pairs {r['cpu_loss_pct_median']:.2f} %), of which the emitter thread "
                         f"{r.get('emitter_cpu_us_per_job', float('nan')):.1f} µs; "
                         f"Redis CPU added per job {r.get('redis_cpu_us_per_job_added', float('nan')):.1f} µs; "
                         f"events per job {r.get('events_per_job', float('nan')):.2f} in "
                         f"{r.get('entries_per_job', float('nan')):.3f} stream entries")
    for r in results:
        if "reference" in r:
            ref = r["reference"]
            lines.append(f"  {r['lib']}, for comparison: {ref['what']}: {ref['jobs_per_s']:.1f} jobs/s, loss "
                         f"{ref['loss_pct_median']:.2f} % (median of the same alternations)")
    counted = [r for r in results if "valgrind" in r]
    if counted:
        lines.append("counted under valgrind (a real worker, all its threads, between the sentinel jobs; "
                     "per job, the median of the runs):")
        lines.append(f"  {'library':<9} {'instructions without':>21} {'with':>10} {'added':>8} {'loss %':>7} "
                     f"{'est. cycles loss %':>19}")
        for r in counted:
            v = r["valgrind"]
            lines.append(f"  {r['lib']:<9} {v['ir_per_job_without']:>21,} {v['ir_per_job_with']:>10,} "
                         f"{v['ir_added_per_job']:>8,} {v['ir_loss_pct']:>7.2f} {v['cycles_loss_pct']:>19.2f}")
            ref = v.get("reference")
            if ref is not None:
                lines.append(f"  {r['lib']}, for comparison, {REFERENCES[r['lib']].what}: {ref['ir_per_job']:,} "
                             f"instructions a job, {ref['ir_added_per_job']:,} added, loss {ref['ir_loss_pct']:.2f} % "
                             f"(est. cycles {ref['cycles_loss_pct']:.2f} %)")
    threads = [r for r in results if "valgrind_job_thread" in r]
    if threads:
        lines.append("counted under valgrind, the job's own thread in-process (the µs above, in a unit no machine "
                     "changes; per job):")
        for r in threads:
            t = r["valgrind_job_thread"]
            floor = (f", of which {t['ir_floor_added_per_job']:,} is {r['lib']}'s own dispatch to hooks that do nothing"
                     if "ir_floor_added_per_job" in t else "")
            lines.append(f"  {r['lib']:<9} {t['ir_per_job_without']:>10,} → {t['ir_per_job_with']:>10,} instructions, "
                         f"{t['ir_added_per_job']:,} added{floor}")
    for r in results:
        lines.append(f"  {r['lib']}: {r['path']} (env: {r['env']})")
        if "producer_us_per_job" in r:
            lines.append(f"  {r['lib']}: producer side, per enqueue (not the job's thread): "
                         f"{r['producer_us_per_job']:.2f} µs")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point of ``flowerbed bench collectors``."""
    args = _parser().parse_args(argv)
    libs = [x.strip() for x in args.libs.split(",") if x.strip()]
    if args.valgrind:
        from . import collector_instructions

        if not collector_instructions.available():
            _log("--valgrind needs valgrind: apt-get install valgrind")
            return 2
    unknown = [x for x in libs if x not in LIBS]
    if unknown:
        _log(f"unknown libraries: {', '.join(unknown)} (choose from {', '.join(LIBS)})")
        return 2
    started = time.monotonic()
    from .collector_probes._common import worker_cpus
    from .reference import measure

    cpus = worker_cpus()
    machine = measure(min(cpus) if cpus else None)
    _log(f"this machine: building and queueing one job event {machine['build_queue_us']:.2f} µs, serialising it "
         f"{machine['serialise_us']:.2f} µs ({machine['serialiser']})")
    results = []
    for lib in libs:
        try:
            results.append(bench_lib(lib, args))
        except Exception as exc:
            _log(f"{lib}: failed: {exc}")
            return 1
    report = {
        "goals": {"us_per_job": GOAL_US_PER_JOB, "loss_pct": GOAL_LOSS_PCT},
        "jobs": args.jobs,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "libs": {r["lib"]: r for r in results},
    }
    for r in results:  # the job thread's cost in the issue's own unit: events built and queued
        r["events_built_per_job_cost"] = round(r["us_per_job"] / machine["build_queue_us"], 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table(results, machine))
    return 0
