"""``flowerbed bench collectors --valgrind``: a collector's cost in a real worker, counted, not timed.

On a shared 2-vCPU VM one timed worker run differs from the next by 5-30 %, so a 2 % throughput
loss cannot be told from noise by the clock. Here the same real worker (the throughput probe's: a
queue filled beforehand, drained by ``arq``, ``dramatiq``, ``taskiq worker`` or ``celery worker``)
runs under valgrind's callgrind, which counts every machine instruction the worker's process
executes (all its threads: the jobs' and the collector's emitter) and simulates its caches. The
count is cut where the sentinel jobs run (``collector_probes._common.mark`` calls
``os.getresgid()``, and callgrind dumps its counters before that function): between the two, only
the ``jobs`` jobs and, as each sentinel first has the collector send what it holds, all the
collector's work for them. Start-up, shutdown and the idle polling around them are left out: a
Taskiq worker's count per job repeated to 0.02 % over three runs, where a difference of two queue
sizes, whole runs counted, moved by 0.8 % (and Dramatiq's by 5 %; its consumer thread polls Redis
on a timer, so how many polls fall between the sentinels still moves its count by ~2 %).

From the counts, per job: instructions (Ir) and estimated cycles, ``Ir + 10 × L1 misses + 100 ×
last-level misses`` (the weights cachegrind's documentation and callgrind's CEst use). A worker
running no-op jobs is CPU-bound, so its throughput falls as its cycles per job rise: the loss is
``(with - without) / with``. Each mode runs ``repeat`` times, alternating; the median is reported.

Valgrind runs a worker ~100 times slower, so the collector's clocks are stretched as much (see
``collector_probes._common.dilate_clocks``): a send still carries as many rows, heartbeats come as
rarely per job, and CPU time is sampled for the same jobs as natively. What valgrind does not count:
time in the kernel (system calls: the collector makes one write to Redis per send, not per job) and
time spent waiting.
"""

from __future__ import annotations

import glob
import os
import shutil
import statistics
import tempfile
from typing import Any, Callable

__all__ = ["available", "describe", "measure", "job_thread", "DILATE"]

#: How much slower a worker runs under callgrind with its cache simulation (measured: 100-120).
DILATE = 100
#: Jobs between the sentinels of a counted run, by default.
JOBS = 1000
#: The function whose every call cuts callgrind's count (``mark`` calls ``os.getresgid()``).
CUT = "os_getresgid"


def describe(mode: str) -> str:
    """A run's mode as progress lines name it: "without collector", "with collector", "celery events"."""
    return f"{mode} collector" if mode in ("without", "with") else mode.replace("_", " ")


def available() -> bool:
    """Whether valgrind is installed (``apt-get install valgrind``)."""
    return shutil.which("valgrind") is not None


def _summary(path: str) -> dict[str, int] | None:
    """A callgrind output file's totals by event (Ir, I1mr, ILmr, Dr, D1mr, DLmr, Dw, D1mw, DLmw)."""
    names: list[str] = []
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                return dict(zip(names, (int(x) for x in line.split()[1:])))
    return None


def cycles(counts: dict[str, float]) -> float:
    """Estimated cycles: instructions plus 10 per first-level miss and 100 per last-level miss."""
    l1 = counts.get("I1mr", 0) + counts.get("D1mr", 0) + counts.get("D1mw", 0)
    ll = counts.get("ILmr", 0) + counts.get("DLmr", 0) + counts.get("DLmw", 0)
    return counts["Ir"] + 10 * l1 + 100 * ll


def _run(probe: Callable[[list[str], dict[str, str]], dict[str, Any]], out_dir: str, mode: str,
         run: int, jobs: int, extra_env: dict[str, str] | None = None, name: str | None = None) -> dict[str, int]:
    """One worker run under callgrind; the counts between its sentinels (dump 2 of the process that
    ran them: dump 1 is everything before the first cut)."""
    tag = f"{name or mode}-{run}"
    wrap = (f"valgrind --tool=callgrind --cache-sim=yes --trace-children=yes -q --dump-before={CUT} "
            f"--callgrind-out-file={out_dir}/{tag}.%p")
    probe(["throughput", "--jobs", str(jobs), "--collector", mode, "--warmup", "50", "--timeout", "1800"],
          {"FB_BENCH_WRAP": wrap, "FB_BENCH_DILATE": str(DILATE), **(extra_env or {})})
    counts = [c for c in (_summary(p) for p in glob.glob(f"{out_dir}/{tag}.*.2")) if c]
    if len(counts) != 1:
        raise RuntimeError(f"valgrind cut {len(counts)} counts between sentinels for {tag}, not one")
    return counts[0]


def measure(probe: Callable[[list[str], dict[str, str]], dict[str, Any]],
            log: Callable[[str], None], lib: str, repeat: int = 1, jobs: int = JOBS,
            reference: tuple[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Per-job instructions and estimated cycles of ``lib``'s worker without and with the collector.

    ``probe(args, env)`` runs the library's probe script with extra environment variables.
    ``reference`` is ``(name, env)``: a third run per repeat, without the collector, with that
    environment (Celery's own task events), counted the same way.
    """
    keep = os.environ.get("FB_BENCH_CG_DIR")  # keep the output files there, for callgrind_annotate
    out_dir = os.path.join(keep, lib) if keep else tempfile.mkdtemp(prefix=f"flowerbed-cg-{lib}-")
    os.makedirs(out_dir, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    modes: list[tuple[str, str, dict[str, str]]] = [("0", "without", {}), ("1", "with", {})]
    if reference is not None:
        modes.append(("0", reference[0], reference[1]))
        runs[reference[0]] = []
    try:
        for i in range(repeat):
            for mode, name, extra_env in modes:
                log(f"{lib}: under valgrind, {describe(name)}, {jobs} jobs (run {i + 1}/{repeat})")
                counts = _run(probe, out_dir, mode, i, jobs, extra_env, name)
                runs[name].append({k: v / jobs for k, v in counts.items()})
    finally:
        if not keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    per_job = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    without, with_ = per_job["without"], per_job["with"]
    ir0, ir1 = without["Ir"], with_["Ir"]
    c0, c1 = cycles(without), cycles(with_)
    result: dict[str, Any] = {
        "ir_per_job_without": round(ir0),
        "ir_per_job_with": round(ir1),
        "ir_added_per_job": round(ir1 - ir0),
        "ir_loss_pct": round((ir1 - ir0) / ir1 * 100.0, 2),
        "cycles_per_job_without": round(c0),
        "cycles_per_job_with": round(c1),
        "cycles_loss_pct": round((c1 - c0) / c1 * 100.0, 2),
        "jobs": jobs,
        "ir_per_job_runs": {name: [round(r["Ir"]) for r in rs] for name, rs in runs.items()},
        "counts_per_job": {k: {e: round(v) for e, v in d.items()} for k, d in per_job.items()},
    }
    if reference is not None:  # the reference setting's cost, counted against the same runs without
        ref = per_job[reference[0]]
        ir2, c2 = ref["Ir"], cycles(ref)
        result["reference"] = {"name": reference[0], "ir_per_job": round(ir2), "ir_added_per_job": round(ir2 - ir0),
                               "ir_loss_pct": round((ir2 - ir0) / ir2 * 100.0, 2),
                               "cycles_loss_pct": round((c2 - c0) / c2 * 100.0, 2)}
    return result


def job_thread(probe: Callable[[list[str], dict[str, str], list[str]], dict[str, Any]],
               log: Callable[[str], None], lib: str, jobs: int = JOBS, floor: bool = False) -> dict[str, Any]:
    """Instructions per job on the job's own thread, in-process, without and with the collector.

    The in-process probe (``probe(args, env, wrap)``) runs under callgrind with threads counted
    apart; sentinels around the jobs alone (``_common.clocked`` in a counted run) cut the job
    thread's count. What the µs of the in-process timing count, in a unit no machine changes: the
    same code took 2-3 times longer on one session's machine than on the next one's. With ``floor``
    (a probe with a "floor" run: hooks that do nothing), that run is counted too: what the library's
    own dispatch to any such hook costs, within the collector's count.
    """
    out_dir = tempfile.mkdtemp(prefix=f"flowerbed-cg-{lib}-inproc-")
    per_job: dict[str, int] = {}
    try:
        for mode in ("without", "floor", "with") if floor else ("without", "with"):
            log(f"{lib}: job thread under valgrind, {describe(mode)}, {jobs} jobs in-process")
            wrap = ["valgrind", "--tool=callgrind", "--separate-threads=yes", "-q", f"--dump-before={CUT}",
                    f"--callgrind-out-file={out_dir}/{mode}.%p"]
            probe(["inproc", "--jobs", str(jobs), "--repeat", "1"],
                  {"FB_BENCH_COUNT_MODE": mode, "FB_BENCH_DILATE": str(DILATE)}, wrap)
            counts = [c for c in (_summary(p) for p in glob.glob(f"{out_dir}/{mode}.*.2-01")) if c]
            if len(counts) != 1:
                raise RuntimeError(f"valgrind cut {len(counts)} job-thread counts for {lib} {mode}, not one")
            per_job[mode] = round(counts[0]["Ir"] / jobs)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    result = {"ir_per_job_without": per_job["without"], "ir_per_job_with": per_job["with"],
              "ir_added_per_job": per_job["with"] - per_job["without"], "jobs": jobs}
    if floor:
        result["ir_per_job_floor"] = per_job["floor"]
        result["ir_floor_added_per_job"] = per_job["floor"] - per_job["without"]
    return result
