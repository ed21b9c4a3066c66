"""What every collector probe shares: interleaved best-of timing, the sentinel jobs, a worker process.

Probes run inside one library's own virtualenv (``python <lib>_probe.py …``), so this module uses
only the standard library and redis-py (which every library's env has).

Throughput protocol: the queue is filled *before* the worker starts with ``warmup`` no-op jobs, a
``start`` sentinel, ``jobs`` no-op jobs and an ``end`` sentinel. A sentinel job writes the time it
ran to a Redis key, so worker start-up and warm-up are outside the measured window:
``jobs / (end - start)`` is the worker's steady no-op throughput.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Callable, NoReturn

REDIS_URL = os.environ.get("FLOWERBED_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Set to "1" in a worker's environment when its app must install the collector.
ENV_COLLECTOR = "FB_BENCH_COLLECTOR"
#: The per-run prefix of every queue, key and namespace a probe's app uses.
ENV_PREFIX = "FB_BENCH_PREFIX"
#: A command the worker's command line is run under (``valgrind --tool=cachegrind …``); ``{prefix}``
#: in it becomes the run's prefix.
ENV_WRAP = "FB_BENCH_WRAP"


def with_collector() -> bool:
    """Whether this process's app installs the collector (its clocks stretched, see :func:`dilate_clocks`)."""
    if os.environ.get(ENV_COLLECTOR) != "1":
        return False
    dilate_clocks()
    return True


#: How many times slower than native this worker runs (under valgrind, ~100): the collector's clocks
#: are stretched as much.
ENV_DILATE = "FB_BENCH_DILATE"
#: In-process, under callgrind: the one mode (``without`` or ``with``) whose job thread is counted
#: (see :func:`interleaved`, ``collector_instructions.job_thread``).
ENV_COUNT_MODE = "FB_BENCH_COUNT_MODE"


def dilate_clocks() -> None:
    """Stretch the collector's timers by ``FB_BENCH_DILATE`` (a worker under valgrind).

    The emitter sends every ``flush_interval`` of wall time, and heartbeats and the loop-lag timer
    tick by it too: in a worker slowed 100 times, a send would carry 2 rows, not 200, and each job
    would pay for 100 times the heartbeats, and every job would look slow enough to have its CPU time
    read (``CpuSampler``). Stretched, each of them comes per job as often as it does natively.
    """
    factor = float(os.environ.get(ENV_DILATE) or 1)
    if factor == 1 or getattr(dilate_clocks, "done", False):
        return
    dilate_clocks.done = True  # type: ignore[attr-defined]
    from collectors import emitter, runtime

    emitter.Emitter.__init__.__kwdefaults__["flush_interval"] *= factor
    emitter.Emitter.__init__.__kwdefaults__["max_interval"] *= factor
    every, slow_s = runtime.CpuSampler.__init__.__defaults__  # a no-op job is "slow" at 100 times its time
    runtime.CpuSampler.__init__.__defaults__ = (every, slow_s * factor)
    runtime.LoopLagMonitor.__init__.__defaults__ = (0.5 * factor,)
    heartbeat_init = runtime.Heartbeat.__init__

    def stretched(self: Any, *args: Any, **kwargs: Any) -> None:
        heartbeat_init(self, *args, **kwargs)
        self.interval *= factor

    runtime.Heartbeat.__init__ = stretched  # type: ignore[method-assign]


def prefix() -> str:
    """This run's unique name prefix (set by the probe before it starts a worker)."""
    return os.environ.get(ENV_PREFIX) or "fbbench:default"


def mark(name: str) -> None:
    """The sentinel job's body: record when it ran, and the worker's garbage collections in between.

    First the collector sends what it holds (the jobs before this one are done with, in both modes'
    time), then ``os.getresgid()``: under ``--valgrind`` callgrind cuts its count there (see
    ``collector_instructions``), so the count between the sentinels holds the jobs and all of it.
    """
    if "collectors.emitter" in sys.modules:
        drain_emitters(timeout=600.0)
    os.getresgid()
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        if name == "start":
            _GC.start()
        else:
            client.set(f"{prefix()}:gc", json.dumps(_GC.report()), ex=3600)
        client.set(f"{prefix()}:mark:{name}", repr(time.time()), ex=3600)
    finally:
        client.close()


class _GcCounter:
    """Counts the worker's garbage collections per generation, and their time, between the sentinels.

    Events waiting in a collector's buffer keep job objects alive; in a busy worker those survivors
    set off collections that the same worker without a collector does not make.
    """

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._t0 = 0.0

    def start(self) -> None:
        import gc

        self.counts, self.seconds = [0, 0, 0], [0.0, 0.0, 0.0]
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            generation = info["generation"]
            self.counts[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._t0

    def report(self) -> dict[str, Any]:
        return {"collections": self.counts, "ms": [round(s * 1e3, 2) for s in self.seconds]}


_GC = _GcCounter()


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def output(result: dict[str, Any]) -> None:
    """The probe's answer: one JSON object on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# --- in-process cost ------------------------------------------------------------------------------


def interleaved(runs: dict[str, Callable[[int], tuple[float, float]]], jobs: int, repeat: int) -> dict[str, Any]:
    """Time each mode ``repeat`` times, alternating modes; best-of wall and job-thread CPU seconds.

    With ``FB_BENCH_COUNT_MODE`` set (under callgrind), run that one mode between two sentinels
    instead, and end the process.
    """
    count_mode = os.environ.get(ENV_COUNT_MODE)
    if count_mode:
        _counted_run(runs[count_mode], jobs)
    for fn in runs.values():  # warm-up: imports, caches, the emitter's thread and connection
        fn(max(50, jobs // 10))
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    emitter: list[float] = []
    for _ in range(repeat):
        for name, fn in runs.items():
            e0 = emitter_thread_ns()
            w, c = fn(jobs)
            wall[name].append(w)
            cpu[name].append(c)
            if name == "with":  # what the sending thread spent on this run's events, sent before the next
                drain_emitters()
                emitter.append((emitter_thread_ns() - e0) / 1e3 / jobs)
    base, inst = wall["without"], wall["with"]
    return {
        "jobs": jobs,
        "repeat": repeat,
        "wall_s": wall,
        "cpu_s": cpu,
        "us_per_job_without": min(base) / jobs * 1e6,
        "us_per_job_with": min(inst) / jobs * 1e6,
        # The collector's cost on the job's thread: best-of CPU time of that thread, with minus without.
        "us_per_job": (min(cpu["with"]) - min(cpu["without"])) / jobs * 1e6,
        "us_per_job_wall": (min(inst) - min(base)) / jobs * 1e6,
        # The emitter thread's CPU per job of the "with" runs (median): the rest of the collector's cost.
        "emitter_us_per_job": sorted(emitter)[len(emitter) // 2] if emitter else None,
        # The library's own dispatch to a hook that does nothing ("floor" runs), where a probe has them:
        # what any collector at this hook point costs before its first line runs.
        "floor_us_per_job": (min(cpu["floor"]) - min(cpu["without"])) / jobs * 1e6 if "floor" in cpu else None,
    }


def clocked(body: Callable[[], None]) -> tuple[float, float]:
    """Wall and this thread's CPU seconds of ``body()``; between two sentinels in a counted run."""
    counting = _counting
    if counting:
        os.getresgid()
    w0, c0 = time.perf_counter(), time.thread_time()
    body()
    w1, c1 = time.perf_counter(), time.thread_time()
    if counting:
        os.getresgid()
    return w1 - w0, c1 - c0


_counting = False


def _counted_run(run: Callable[[int], tuple[float, float]], jobs: int) -> NoReturn:
    """Warm up, run ``jobs`` jobs of one mode with sentinels around the jobs alone (``clocked``), and
    exit: callgrind cuts its count at each ``os.getresgid()``, so its part 2 of the job's thread
    holds only those jobs (not the messages built for them beforehand)."""
    global _counting
    run(max(50, jobs // 10))  # imports, caches, the emitter's thread and connection
    run(jobs)
    drain_emitters()
    _counting = True
    run(jobs)
    _counting = False
    drain_emitters()
    output({"counted": jobs})
    os._exit(0)  # the probe's own teardown is not counted, and not needed


def emitter_thread_ns() -> int:
    """CPU time (ns) this process's emitter threads have used so far (Linux schedstat; 0 elsewhere)."""
    return tree_cpu_ns(os.getpid())[1]


def drain_emitters(timeout: float = 5.0) -> None:
    """Let the emitter threads send what the last run queued, so it does not spill into the next one."""
    try:
        from collectors.emitter import _live

        for emitter in list(_live):
            emitter.flush(timeout)
    except Exception:
        pass


# --- throughput through a real worker -------------------------------------------------------------


def new_prefix(lib: str) -> str:
    return f"fbbench:{lib}:{uuid.uuid4().hex[:12]}"


def run_worker(cmd: list[str], env: dict[str, str], fill: Callable[[], None], jobs: int,
               timeout: float, cwd: str | None = None) -> dict[str, Any]:
    """Fill the queue, start the worker, wait for the ``end`` sentinel, stop the worker; jobs/s."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        with AwayFromWorker(client):
            return _run_worker(client, cmd, env, fill, jobs, timeout, cwd)
    finally:
        client.close()


def _run_worker(client: Any, cmd: list[str], env: dict[str, str], fill: Callable[[], None], jobs: int,
                timeout: float, cwd: str | None) -> dict[str, Any]:
    import tempfile

    pre = env[ENV_PREFIX]
    fill()
    # A file, not a pipe: a worker logging each job (arq does) would block on a full pipe.
    errfile = tempfile.TemporaryFile()
    wrap = os.environ.get(ENV_WRAP, "").replace("{prefix}", pre).split()
    proc = subprocess.Popen(wrap + cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errfile,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_pin)

    def tail() -> str:
        errfile.seek(0)
        return errfile.read().decode(errors="replace")[-2000:]

    try:
        deadline = time.monotonic() + timeout
        start = end = None
        cpu0 = cpu1 = redis0 = redis1 = emit0 = emit1 = sw0 = sw1 = None
        while time.monotonic() < deadline:
            if start is None:
                start = client.get(f"{pre}:mark:start")
                if start is not None:
                    (cpu0, emit0, sw0), redis0 = tree_cpu_ns(proc.pid), redis_cpu_s(client)
            end = client.get(f"{pre}:mark:end")
            if end is not None:
                (cpu1, emit1, sw1), redis1 = tree_cpu_ns(proc.pid), redis_cpu_s(client)
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early ({proc.returncode}): {tail()}")
            time.sleep(0.005)
        if start is None or end is None:
            stop(proc)
            raise RuntimeError(f"worker did not finish {jobs} jobs within {timeout:.0f} s: {tail()}")
        elapsed = float(end) - float(start)
        result = {"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed}
        if cpu0 and cpu1:
            # The worker's CPU (every thread of its process tree) between the sentinels, per job: with the
            # collector, its whole cost (hooks and emitter thread) is in it.
            result["cpu_us_per_job"] = (cpu1 - cpu0) / 1e3 / jobs
        if redis0 is not None and redis1 is not None:
            result["redis_cpu_us_per_job"] = (redis1 - redis0) * 1e6 / jobs
        if sw0 is not None and sw1 is not None:
            result["switches_per_job"] = (sw1 - sw0) / jobs
        if emit0 and emit1:  # the collector's sending thread alone (absent without a collector)
            result["emitter_cpu_us_per_job"] = (emit1 - emit0) / 1e3 / jobs
        gc_report = client.get(f"{pre}:gc")
        if gc_report is not None:
            result["gc"] = json.loads(gc_report)
        return result
    finally:
        stop(proc)
        errfile.close()


def worker_cpus() -> set[int] | None:
    """The CPU a measured worker is pinned to: the last one, unless ``FB_BENCH_CPUS`` says (``all``: none).

    Unpinned, the scheduler moves the worker between the vCPUs it shares with Redis and this probe,
    and one run's throughput differs from the next by ±12 % on a 2-vCPU VM; pinned, by ±2-5 %. Every
    thread of the worker shares one CPU, so its collector's emitter thread competes with the jobs
    for it: pinning can only make the collector's cost look larger.
    """
    spec = os.environ.get("FB_BENCH_CPUS", "")
    if spec == "all" or not hasattr(os, "sched_setaffinity"):
        return None
    if spec:
        return {int(c) for c in spec.split(",")}
    available = sorted(os.sched_getaffinity(0))
    return {available[-1]} if len(available) > 1 else None


def _pin() -> None:
    cpus = worker_cpus()
    if cpus:
        os.sched_setaffinity(0, cpus)


def pin_in_process() -> None:
    """Pin an in-process probe as a measured worker is pinned: its emitter thread then shares the job
    thread's CPU, as in a busy worker. Unpinned on an idle 2-vCPU VM, the emitter ran on the other
    vCPU and every hand-over of the GIL between the two cost the job's thread CPU of its own
    (taskiq: 19-23 µs a job against 8-10 pinned, same code)."""
    _pin()


class AwayFromWorker:
    """While a worker runs pinned, keep this probe and a local Redis server off the worker's CPU.

    Redis serves every job's fetch; when the kernel put it on the worker's CPU, a run's throughput
    fell by up to 20 %. Its affinity is restored afterwards; a Redis this user cannot re-pin (or on
    another host) is left alone.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.saved: list[tuple[int, set[int]]] = []

    def __enter__(self) -> AwayFromWorker:
        cpus = worker_cpus()
        if not cpus or not hasattr(os, "sched_setaffinity"):
            return self
        others = set(os.sched_getaffinity(0)) - cpus
        if not others:
            return self
        pids = [0]
        try:
            pid = int(self.client.info("server")["process_id"])
            if os.path.exists(f"/proc/{pid}/comm"):
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().startswith("redis"):
                        pids.append(pid)
        except Exception:
            pass
        for pid in pids:
            try:
                before = set(os.sched_getaffinity(pid))
                os.sched_setaffinity(pid, others)
                self.saved.append((pid, before))
            except OSError:
                continue
        return self

    def __exit__(self, *exc: Any) -> None:
        for pid, before in self.saved:
            try:
                os.sched_setaffinity(pid, before)
            except OSError:
                pass


#: The OS name of the collector's sending thread (see ``collectors.emitter``).
EMITTER = "flowerbed-emit"


def tree_cpu_ns(pid: int) -> tuple[int, int, int]:
    """CPU time (ns) used so far by every thread of a process and its descendants (Linux schedstat),
    by those of them named :data:`EMITTER`, and the context switches of all of them (a thread that
    wakes another to hand it work costs both a switch each way); 0 where there are none."""
    total = emitter = switches = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{current}/task/{tid}/comm") as f:
                    named = f.read().strip() == EMITTER
                with open(f"/proc/{current}/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
                with open(f"/proc/{current}/task/{tid}/status") as f:
                    switches += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
                total += ns
                if named:
                    emitter += ns
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    pending.extend(int(child) for child in f.read().split())
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended meanwhile
    return total, emitter, switches


def redis_cpu_s(client: Any) -> float | None:
    """CPU seconds the Redis server has used (``INFO cpu``): its side of every XADD and job fetch."""
    try:
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    except Exception:
        return None


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the worker's process group (a graceful stop), then SIGKILL it after ``grace`` s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def cleanup(pre: str, stream: str | None) -> None:
    """Delete every key under ``pre`` and the run's event stream."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        # arq names its keys arq:job:<job id>: the job ids carry the prefix, so match it anywhere.
        keys = list(client.scan_iter(match=f"*{pre}*", count=1000))
        if stream:
            keys.append(stream)
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    finally:
        client.close()


def worker_env(pre: str, collector: bool, stream: str) -> dict[str, str]:
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[ENV_PREFIX] = pre
    env[ENV_COLLECTOR] = "1" if collector else "0"
    env["FLOWERBED_STREAM"] = stream
    env.setdefault("FLOWERBED_APP", "bench")
    env["FLOWERBED_REDIS_URL"] = REDIS_URL
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # Same string hashes in every run: dict layouts (and so the worker's speed) differ with the seed.
    env["PYTHONHASHSEED"] = "0"
    return env


def throughput_main(lib: str, argv: list[str], build: Callable[[str, dict[str, str], int, int], tuple[list[str], Callable[[], None]]]) -> None:
    """``python <lib>_probe.py throughput --jobs N --collector 0|1``: one timed worker run."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--collector", type=int, choices=(0, 1), required=True)
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)
    pre = new_prefix(lib)
    stream = f"{pre}:events"
    env = worker_env(pre, bool(args.collector), stream)
    # This process only fills the queue: its app never installs the collector, in either mode.
    os.environ.update({ENV_PREFIX: pre, ENV_COLLECTOR: "0", "FLOWERBED_STREAM": stream})
    try:
        cmd, fill = build(pre, env, args.jobs, args.warmup)
        result = run_worker(cmd, env, fill, args.jobs, args.timeout)
        result["collector"] = bool(args.collector)
        if args.collector:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            try:
                result["entries"], result["events"] = stream_counts(client, stream)
            finally:
                client.close()
        output(result)
    finally:
        cleanup(pre, stream)


def stream_counts(client: Any, stream: str) -> tuple[int, int]:
    """Entries on the run's stream, and the events they stand for as ingest counts them (a row each,
    an end carrying its start two)."""
    from collectors.events import entry_events

    entries = events = 0
    for _, fields in client.xrange(stream):
        entries += 1
        for event in entry_events(fields):
            events += 2 if "started_at" in event else 1
    return entries, events


def run_profiled(body: Any) -> None:
    """Run ``body`` under cProfile and print the top entries (FB_SORT, FB_TOP, FB_CALLERS) to stderr."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(body)
    stats = pstats.Stats(prof, stream=sys.stderr)
    stats.sort_stats(os.environ.get("FB_SORT", "tottime")).print_stats(int(os.environ.get("FB_TOP", "25")))
    if os.environ.get("FB_CALLERS"):
        stats.print_callers(os.environ["FB_CALLERS"])


def probe_main(
    lib: str,
    argv: list[str],
    build: Callable[[str, dict[str, str], int, int], tuple[list[str], Callable[[], None]]],
    inproc: Callable[[int, int, bool], None],
) -> int:
    """A probe's command line: ``throughput …`` (a real worker) or ``inproc`` (the job's own thread)."""
    import argparse

    if argv and argv[0] == "throughput":
        throughput_main(lib, argv[1:], build)
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("inproc",))
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    if os.environ.get(ENV_COUNT_MODE):
        dilate_clocks()  # before the probe makes its collectors
    pin_in_process()
    log(f"{lib}: {args.jobs} jobs in-process × {args.repeat}")
    inproc(args.jobs, args.repeat, args.profile)
    return 0
