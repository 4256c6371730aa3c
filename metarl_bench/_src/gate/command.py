"""``metarl-bench check``: the working tree against a baseline, in one job.

The suite (``gate.suite``: statistics, peak bytes, and the times of every hot path, the
samplers, the estimators' from-samples forms and registered calls, on each task family with a
model at a small and a large N) is measured on each tree in its own worker process, and the
two suites are compared (``gate.compare``).

Statistics and memory are deterministic: equal seeds make unchanged code reproduce them
bit for bit, whatever the load. Time is not: load on a shared machine changes from second to
second, so the two trees are never timed minutes apart: both workers stay alive and this
process alternates between them call by call (baseline, now, now, baseline, ...); a round's
sample of an item is the mean of its calls (as many as make about 0.1 s), and the gate is
the median over rounds of the per-round ratio now / baseline. A load change lasting longer
than a call moves both sides of a ratio alike.

A baseline saved to JSON (``--save``) keeps statistics and memory comparable, but its times
were measured at another moment under another load, so against a file the time rows are
shown and never gated.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from typing import Any

from metarl_bench._src.gate import suite
from metarl_bench._src.gate.compare import (DEFAULT_FACTOR, FAILING, compare, format_rows,
                                            interleaved)
from metarl_bench._src.gate.suite import (MEMORY_CELL, MUJOCO_TASKS, STATISTICS_N,
                                          STATISTICS_TASKS, SUITE_VERSION, TIMED_TASKS, Item,
                                          measure_statistics)

__all__ = ["FAILING", "compare", "current_tree", "format_rows", "measure",
           "measure_statistics", "read_suite", "run_check"]

#: One timed sample repeats the call until it lasts about this long, so that a sample is
#: long against the scheduler's time slices and the timer's resolution.
MIN_SAMPLE_SECONDS = 0.1
MAX_CALLS_PER_SAMPLE = 50
#: glibc's allocator in the workers with fixed thresholds: by default it moves its mmap
#: threshold as blocks are freed, so the same call's tensors come now from fresh pages (a
#: page fault per page) and now from the heap, depending on what ran before, and one call
#: took 18 or 40 ms from round to round. Fixed, every tensor up to 32 MiB comes from the heap
#: and the heap is not given back between calls, in both trees alike.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                "MALLOC_TRIM_THRESHOLD_": str(2**30)}


# -- the workers -----------------------------------------------------------------------------


class _Worker:
    """One tree's measuring process."""

    def __init__(self, tree: str, estimators: list[str] | None, threads: int, scratch: str,
                 tasks: list[str] | None = None):
        from metarl_bench._src.core.errors import MetaRLBenchError

        self.tree, self.error = tree, MetaRLBenchError
        self.names: list[str] = []
        self.threads = threads
        # a copy of the suite's file, alone in its folder (the script's folder comes first on
        # sys.path, and must hold nothing that could shadow a module of the measured tree)
        folder = tempfile.mkdtemp(dir=scratch)
        script = shutil.copy(os.path.abspath(suite.__file__),
                             os.path.join(folder, "check_suite.py"))
        self.stderr_path = os.path.join(folder, "worker.stderr")
        read_end, write_end = os.pipe()
        command = [sys.executable, script, "--reply-fd", str(write_end),
                   "--threads", str(threads)]
        if estimators:  # JSON: an entry's options hold commas
            command += ["--estimators-json", json.dumps(list(estimators))]
        if tasks is not None:
            command += ["--tasks-json", json.dumps(list(tasks))]
        if hasattr(os, "sched_getaffinity"):
            # every worker on the same CPUs: they never run at once (the parent waits on one
            # at a time), and neither sits on a CPU that other work keeps busier
            command += ["--cpus-json", json.dumps(sorted(os.sched_getaffinity(0))[:threads])]
        thread_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env = dict(os.environ, **thread_env, **FIXED_MALLOC, PYTHONPATH=os.pathsep.join(
            [tree] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                                            pass_fds=(write_end,))
        os.close(write_end)
        self.replies = os.fdopen(read_end)

    def handshake(self) -> None:
        """Wait until the worker has imported its tree, and check that it is that tree."""
        hello = self.receive()
        expected = os.path.realpath(os.path.join(self.tree, "metarl_bench"))
        if not os.path.realpath(hello["package"]).startswith(expected):
            raise self.error(f"measured {hello['package']}, not the tree {self.tree}")
        self.names, self.threads = hello["names"], hello["threads"]

    def send(self, op: str, **arguments: Any) -> None:
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()

    def receive(self) -> Any:
        line = self.replies.readline()
        if not line:
            raise self.error(f"the check suite failed on {self.tree}: {self.death()}")
        message = json.loads(line)
        if "error" in message:
            raise self.error(f"the check suite failed on {self.tree}: {message['error']}")
        return message["ok"]

    def death(self) -> str:
        """How the worker ended, with the last line of its stderr (a crash in native code,
        e.g. a segmentation fault, prints none)."""
        code = self.process.wait()
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        with open(self.stderr_path, errors="replace") as stderr:
            lines = stderr.read().strip().splitlines()
        return f"its worker {how}" + (f": {lines[-1].strip()}" if lines else
                                      ", with nothing on stderr")

    def request(self, op: str, **arguments: Any) -> Any:
        self.send(op, **arguments)
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.replies.close()


def _both(workers: list[_Worker], op: str) -> list[Any]:
    """The same request to every worker at once: for deterministic measures only."""
    for worker in workers:
        worker.send(op)
    return [worker.receive() for worker in workers]


def measure(trees: list[str], estimators: list[str] | None = None, *, rounds: int = 5,
            threads: int = 1, memory: bool = True, statistics: bool = True,
            tasks: list[str] | None = None, progress: Any = None) -> list[dict[str, Any]]:
    """Measure one tree, or a baseline tree and a working tree with interleaved timing.

    Returns one suite per tree (plain data, JSON-ready). With two trees their ``times``
    hold paired samples: sample ``i`` of both was taken in round ``i``, back to back.
    ``memory=False`` or ``statistics=False`` leaves those (deterministic) parts out;
    ``tasks``: the timed tasks (keys of ``suite.TIMED_TASKS`` and ``suite.MUJOCO_TASKS``;
    None: all).
    ``progress``: a :class:`~metarl_bench._src.core.progress.Progress` bar that follows the
    steps (statistics and memory, then each timed round).
    """
    steps = 2 + rounds

    def step(done: int) -> None:
        if progress is not None:
            progress.set(done, steps)

    run_id = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as scratch:
        workers: list[_Worker] = []
        try:
            for tree in trees:
                workers.append(_Worker(tree, estimators, threads, scratch, tasks))
            for worker in workers:  # started together, so their imports overlap
                worker.handshake()
            suites = [{"suite_version": SUITE_VERSION, "package": worker.tree, "run_id": run_id,
                       "threads": worker.threads, "rounds": rounds,
                       "measured_at": datetime.datetime.now(datetime.timezone.utc)
                       .isoformat(timespec="seconds")} for worker in workers]
            step(0)
            for measured, rows in zip(suites, _both(workers, "statistics") if statistics
                                      else [[] for _ in workers]):
                measured["statistics"] = rows
            step(1)
            warm = [[Item(**item) for item in items] for items in _both(workers, "prepare")]
            for measured, rows in zip(suites, _both(workers, "memory") if memory
                                      else [[] for _ in workers]):
                measured["memory"] = rows
            timed = [item for item in warm[0] if all(item in w for w in warm)]
            times = {item: [{"seconds": [], "cpu_seconds": []} for _ in workers]
                     for item in timed}
            calls = {item: _calls_per_sample(workers, item) for item in timed}
            load_before = os.getloadavg()
            step(2)
            for round_index in range(rounds):
                for item in timed:
                    sample = [[0.0, 0.0] for _ in workers]
                    # a sample's calls alternate between the trees one by one, which goes
                    # first alternating too (baseline, now, now, baseline, ...): a change of
                    # load lasting longer than a call moves both trees' sums alike
                    for call in range(calls[item]):
                        order = range(len(workers)) if (round_index + call) % 2 == 0 \
                            else reversed(range(len(workers)))
                        for index in order:
                            wall, cpu = workers[index].request("time", item=item.as_json(), calls=1)
                            sample[index][0] += wall / calls[item]
                            sample[index][1] += cpu / calls[item]
                    for index, (wall, cpu) in enumerate(sample):
                        times[item][index]["seconds"].append(wall)
                        times[item][index]["cpu_seconds"].append(cpu)
                step(3 + round_index)
            load_after = os.getloadavg()
        finally:
            for worker in workers:
                worker.close()
    for index, measured in enumerate(suites):
        measured["load_average"] = {"before": load_before[0], "after": load_after[0],
                                    "cpus": os.cpu_count()}
        measured["times"] = [{**_timed_cell(item), "calls_per_sample": calls[item],
                              **times[item][index]} for item in timed]
        # items one tree times and the other cannot: listed, so that the comparison says
        # new or gone, with no samples (there is nothing to pair them with)
        measured["times"] += [{**_timed_cell(item), "calls_per_sample": 0, "seconds": [],
                               "cpu_seconds": []} for item in warm[index] if item not in timed]
    return suites


def _timed_cell(item: Item) -> dict[str, Any]:
    """The record fields of a timed item: its path, estimator, task, N and trials."""
    return {**item.as_json(), "trials": {**TIMED_TASKS, **MUJOCO_TASKS}[item.task].trials}


def _calls_per_sample(workers: list[_Worker], item: Item) -> int:
    """Calls per timed sample, the same on every side so that the work compared is equal."""
    fastest = min(worker.request("time", item=item.as_json(), calls=1)[0] for worker in workers)
    return max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(MIN_SAMPLE_SECONDS / max(fastest, 1e-6))))


def describe(baseline: dict[str, Any] | None, now: dict[str, Any], *, z: float,
             factor: float) -> str:
    """What was measured, how it is gated, and under what load."""
    load = now.get("load_average") or {}
    calls = sorted({t["calls_per_sample"] for t in now.get("times", []) if t["seconds"]})
    cells = ", ".join(f"{key} N={'/'.join(map(str, spec.n_inner))}" for key, spec in
                      {**TIMED_TASKS, **MUJOCO_TASKS}.items())
    lines = [
        f"statistics: bias, variance, MSE on {', '.join(STATISTICS_TASKS)} at N = "
        f"{', '.join(map(str, STATISTICS_N))} (seeded, deterministic); fail beyond {z:g} joint "
        f"standard errors",
        f"memory: peak bytes of each timed estimator path on {MEMORY_CELL[0]} N="
        f"{MEMORY_CELL[1]} (memray; deterministic, compared directly); fail at {factor:g}x",
        f"time: wall and CPU seconds of the sampler, one estimator per family on given "
        f"samples, and registered calls, on {cells} (where the tree has them); torch "
        f"intra-op threads = {now.get('threads')}, {now.get('rounds')} rounds of "
        f"{f'{calls[0]}-{calls[-1]}' if calls else '-'} call(s) per sample",
    ]
    if baseline is None:
        pass
    elif interleaved(baseline, now):
        lines.append("      baseline and now interleaved call by call, each tree in its own "
                     f"process on the same CPU; ratio = median over rounds of now/baseline; "
                     f"fail at {factor:g}x in both wall and CPU seconds")
    else:
        base_load = (baseline.get("load_average") or {}).get("before")
        lines.append(
            "      NOT GATED: the baseline file's times were measured at "
            f"{baseline.get('measured_at', 'an unknown time')}"
            + (f" (load average {base_load:.2f})" if base_load is not None else "")
            + ", not interleaved with this run; ratios shown for information only. "
              "Use --baseline REV for the time gate.")
    if load:
        lines.append(f"load average (1 min): {load['before']:.2f} before timing, "
                     f"{load['after']:.2f} after, on {load['cpus']} CPUs")
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------


def _commit(spec: str) -> tuple[str, str]:
    """The checkout's top folder and the commit a ``--baseline`` names. An existing path
    that is not a regular file (a directory, /dev/null) is named as what it is, not as a
    missing revision."""
    from metarl_bench._src.core.errors import ParameterError

    kind = _path_kind(spec)
    try:
        top = _toplevel()
        resolved = subprocess.run(["git", "rev-parse", "--verify", "--quiet",
                                   f"{spec}^{{commit}}"], cwd=top, capture_output=True,
                                  text=True)
        if resolved.returncode != 0:
            raise ParameterError(f"--baseline {spec!r} is neither a suite JSON file nor a "
                                 f"commit of {top}")
    except ParameterError:
        if kind is None:
            raise
        raise ParameterError(f"--baseline {spec!r} is {kind}, not a suite JSON file (nor a "
                             f"git revision)") from None
    return top, resolved.stdout.strip()


def _toplevel() -> str:
    from metarl_bench._src.core.errors import ParameterError

    try:
        return subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise ParameterError("--baseline REV needs a git checkout: run metarl-bench check "
                             "inside the repository, or pass --baseline FILE.json") from None


def _load_suite(path: str) -> tuple[dict[str, Any] | None, str]:
    """(the suite in ``path``, "") or (None, what is wrong with it, to follow its name)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror}"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "is not a suite JSON file (binary, not UTF-8, or not JSON)"
    if not isinstance(data, dict) or "suite_version" not in data:
        kind = {"dict": "object", "list": "array"}.get(type(data).__name__,
                                                       type(data).__name__)
        return None, f"is not a suite JSON file (a JSON {kind} with no suite_version)"
    if data["suite_version"] not in (1, 2, SUITE_VERSION):
        return None, (f"has suite_version {data['suite_version']!r}, expected {SUITE_VERSION} "
                      f"(or 1, 2)")
    return data, ""


def read_suite(path: str) -> dict[str, Any]:
    """A suite saved by ``check --save``. Version 1 files: statistics and memory only;
    versions 1 and 2 time registered calls only, so their rows' path is ``call``."""
    from metarl_bench._src.core.errors import ParameterError

    data, problem = _load_suite(path)
    if data is None:
        raise ParameterError(f"--baseline {path!r} {problem}")
    if data["suite_version"] == 1:
        # version 1 kept one median time and the peak bytes per call in "costs"
        costs = data.pop("costs", [])
        data["memory"] = [{k: c[k] for k in ("estimator", "task", "n_inner", "peak_bytes")}
                          for c in costs if c.get("peak_bytes") is not None]
        data["times"] = [{**{k: c[k] for k in ("estimator", "task", "n_inner")},
                          "seconds": [c["seconds"]], "cpu_seconds": []} for c in costs]
    return data


def check_save(path: str) -> str:
    """A ``--save`` path, checked before anything is measured: a new file, a device, an empty
    file or a suite saved before may be written; anything else (a results store, any other
    file) would be lost, and is refused."""
    from metarl_bench._src.core.errors import ParameterError
    from metarl_bench._src.core.files import check_path

    path = check_path(path, "--save", "a suite JSON file")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        suite, problem = _load_suite(path)
        if suite is None:
            raise ParameterError(f"--save {path!r} already exists and {problem}: it is left as "
                                 f"it is; name a new file, or a suite saved before (replaced)")
    return path


def save_suite(suite: dict[str, Any], path: str) -> None:
    """Write ``suite`` to ``path`` whole or not at all (``core.files.write_atomically``), so
    a full disk or a crash leaves the file that was there. A device (e.g. /dev/null) is
    written in place: renaming over it would replace the device."""
    from metarl_bench._src.core.errors import ResultsFileError
    from metarl_bench._src.core.files import is_regular, write_atomically

    text = json.dumps(suite, indent=1) + "\n"
    target = os.path.realpath(path)  # a symbolic link keeps pointing at the saved suite
    try:
        if os.path.exists(target) and not is_regular(target):
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(text)
        else:
            write_atomically(target, text)
    except OSError as exc:
        raise ResultsFileError(f"cannot write the suite to {path}: {exc.strerror}; this run's "
                               f"measurements are not saved, and nothing else is lost (a file "
                               f"already there is unchanged)") from None


def _path_kind(path: str) -> str | None:
    """What an existing path that is not a regular file is; None for a file or no path."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    kinds = ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def revision_tree(spec: str, folder: str) -> str:
    """Extract the package of git revision ``spec`` into ``folder``; return its label."""
    top, commit = _commit(spec)
    archive = subprocess.run(["git", "archive", commit, "metarl_bench"], cwd=top,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return f"{spec} ({commit[:10]})"


def current_tree() -> str:
    """The folder holding the metarl_bench being run (the working tree when installed -e)."""
    import metarl_bench

    return os.path.dirname(os.path.dirname(os.path.abspath(metarl_bench.__file__)))


def run_check(baseline: str | None, *, estimators: list[str] | None = None, rounds: int = 5,
              threads: int = 1, z: float = 3.0, factor: float = DEFAULT_FACTOR,
              save: str | None = None,
              show_all: bool = False, out: Any = None, progress: bool = False) -> int:
    """The ``check`` command: 0 when nothing regressed, 1 otherwise. ``progress``: a bar on
    stderr."""
    from metarl_bench._src.core.progress import Progress

    from metarl_bench._src.core.errors import ParameterError

    out = out or sys.stdout
    if not 1 <= threads <= (os.cpu_count() or 1):
        raise ParameterError(f"threads must be from 1 to {os.cpu_count() or 1} (the CPUs of "
                             f"this machine), got {threads}")
    if save:
        save = check_save(save)
    here = current_tree()
    with tempfile.TemporaryDirectory() as folder, \
            Progress(None, "check", enabled=progress, unit="step") as bar:
        options = dict(rounds=rounds, threads=threads, progress=bar)
        if baseline is None:
            (now,), base, label = measure([here], estimators, **options), None, None
        elif os.path.isfile(baseline) or (baseline.endswith(".json")
                                          and not os.path.exists(baseline)):
            base, label = read_suite(baseline), baseline
            (now,) = measure([here], estimators, **options)
        else:
            label = revision_tree(baseline, folder)
            base, now = measure([folder, here], estimators, **options)
    regressed = False
    if base is not None:
        rows = compare(base, now, z=z, factor=factor)
        print(f"baseline: {label}\nnow:      {here}\n", file=out)
        print(describe(base, now, z=z, factor=factor) + "\n", file=out)
        print(format_rows(rows, show_all=show_all), file=out)
        regressed = any(row.failed for row in rows)
    if save:  # after the comparison: a failed write then loses nothing but the file
        save_suite(now, save)
        print(f"suite saved to {save}", file=out)
    return 1 if regressed else 0
