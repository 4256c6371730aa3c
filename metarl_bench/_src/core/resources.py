"""Guards on memory and work, checked before anything large is allocated.

A cell's peak memory is estimated from the tensors it holds at once (trajectories of one
chunk, one parameter copy per row with its autograd graph, the exact value's per-row
state-transition matrices, the stored estimates and truth samples, the bootstrap's
resample weights). The estimate is deliberately generous (within a small factor of the
measured peak); it exists to refuse the absurd with a clear line, not to pack memory tight.

The memory limit is, by default, half of the memory available when the check runs
(``psutil``); ``limit_memory`` (the CLI's ``--max-memory``, evaluate's ``max_memory=``)
sets another for a block of code. Work (trajectory steps) has its own limit, lifted with
``max_work=None`` / ``--no-work-limit``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
from typing import Any, Iterator

import torch

from metarl_bench._src.core.errors import ParameterError, ResourceError

#: Share of the available memory one computation may plan to use by default.
DEFAULT_MEMORY_FRACTION = 0.5
#: Trajectory steps (trajectories x horizon) one command may plan before it is refused:
#: about 1e10 runs for hours on one core (measured rates are in docs/benchmarks.md).
DEFAULT_MAX_WORK = 10 ** 10

#: The limit in force: (bytes, or None for the default share of the available memory; the
#: flag or argument that set it; the worker processes it is divided among).
_memory_limit: contextvars.ContextVar[tuple[int | None, str, int]] = contextvars.ContextVar(
    "metarl_bench_memory_limit", default=(None, "", 1))

_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6,
          "g": 10 ** 9, "gb": 10 ** 9, "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10,
          "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(name: str, value: Any) -> int:
    """A memory size: a number of bytes, or text such as ``"8GiB"``, ``"500MB"``, ``"2e9"``."""
    if isinstance(value, bool):
        raise ParameterError(f"{name} must be a size in bytes, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ParameterError(f"{name} must be a size such as 8GiB, 500MB or 2e9 (bytes), "
                                 f"got {value!r}")
        try:
            number = float(match.group(1))
        except ValueError:
            raise ParameterError(f"{name} must be a size such as 8GiB, got {value!r}") from None
        unit = match.group(2).lower()
    else:
        raise ParameterError(f"{name} must be a size in bytes, got {type(value).__name__}")
    if not math.isfinite(number) or number <= 0:
        raise ParameterError(f"{name} must be a positive size, got {value!r}")
    return int(number * _UNITS[unit])


def available_memory() -> int:
    """Bytes of memory available to new allocations now (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def memory_limit() -> tuple[int, str]:
    """The limit in force, and how it was set (for messages): each worker's share, when it
    is divided among workers (:func:`share_memory`)."""
    limit, name, workers = _memory_limit.get()
    if limit is None:
        limit, source = (int(DEFAULT_MEMORY_FRACTION * available_memory()),
                         f"{DEFAULT_MEMORY_FRACTION:.0%} of the available memory")
        shared = f"{source}, shared by {workers} workers"
    else:
        source = f"the limit set by {name}"
        shared = f"{name} {size(limit)} shared by {workers} workers"
    if workers == 1:
        return limit, source
    # the whole limit, named as the user set it, and the share: a refusal that showed only
    # the share would present a number the user never chose as theirs
    return limit // workers, shared


def limit_memory(limit: Any, *, name: str = "--max-memory / max_memory"
                 ) -> contextlib.AbstractContextManager[None]:
    """Use ``limit`` (bytes or text like ``"8GiB"``; None: the default) inside the block.

    ``name``: the flag or argument that set it, as refusals should name it.
    """
    value = None if limit is None else parse_bytes("max_memory", limit)
    before = _memory_limit.get()
    return _in_force(before if value is None else (value, name, before[2]))


def share_memory(workers: int) -> contextlib.AbstractContextManager[None]:
    """Inside the block the limit in force is divided among ``workers`` processes that each
    hold one cell at a time (a sweep's local cluster); refusals say so."""
    limit, name, _ = _memory_limit.get()
    return _in_force((limit, name, max(1, workers)))


@contextlib.contextmanager
def _in_force(setting: tuple[int | None, str, int]) -> Iterator[None]:
    token = _memory_limit.set(setting)
    try:
        yield
    finally:
        _memory_limit.reset(token)


def size(n_bytes: float) -> str:
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n_bytes >= scale:
            value = n_bytes / scale
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{int(n_bytes)} B"


def check_memory(n_bytes: float, what: str, hint: str) -> None:
    """Refuse ``what`` when its estimated peak ``n_bytes`` exceeds the limit in force."""
    limit, source = memory_limit()
    if n_bytes > limit:
        raise ResourceError(f"{what} needs about {size(n_bytes)} of memory, more than "
                            f"{size(limit)} ({source}); {hint}")


def check_work(steps: float, max_work: float | None, what: str, hint: str) -> None:
    if max_work is not None and steps > max_work:
        raise ResourceError(f"{what} plans {steps:.3g} trajectory steps, more than the "
                            f"{max_work:.3g} allowed; {hint}")


def horizon_of(task: Any) -> int:
    """Steps per trajectory to plan for: the horizon, or for tasks whose episodes end at a
    random time (``horizon`` None) their ``planning_horizon`` (a typical padded length)."""
    if task.horizon is not None:
        return task.horizon
    return int(getattr(task, "planning_horizon", 1))


def _shape(task: Any) -> tuple[int, int, int]:
    """(parameters P, states S, actions A) of a task, with safe defaults for plug-ins."""
    n_params = math.prod(task.param_shape) if task.param_shape else 1
    n_states = int(getattr(task, "n_states", 1))
    n_actions = int(getattr(task, "n_actions", n_params))
    return n_params, n_states, n_actions


def bytes_per_row(task: Any, exact_value: bool, itemsize: int) -> float:
    """One row (a copy of theta): params, inner gradient with its graph, adapted params,
    and, with the exact value, the row's policy transition matrix and state distributions."""
    n_params, n_states, _ = _shape(task)
    out = 8 * n_params
    if exact_value:
        out += 3 * n_states * n_states + 4 * horizon_of(task) * n_states + 4 * n_params
    return itemsize * out


def _policy_width(task: Any) -> int:
    """Numbers per step that a Gaussian or MLP policy's forward pass keeps for the autograd
    graph (the observation, every hidden layer, the action's mean and log-std); 0 for the
    tabular policies, whose per-step cost is the sampling temporaries."""
    spec = getattr(getattr(task, "policy", None), "spec", None)
    if not isinstance(spec, dict) or "observation_dim" not in spec:
        return 0
    actions = int(spec.get("action_dim", spec.get("n_actions", 1)))
    return int(spec["observation_dim"]) + sum(map(int, spec.get("hidden", []))) + 2 * actions


def bytes_per_trajectory(task: Any, itemsize: int) -> float:
    """One trajectory: states, actions, rewards, log-probabilities and returns per step, the
    per-step sampling temporaries (a CDF row over actions or next states), and for a policy
    with layers their activations, counted four times (the forward pass, the gradient and
    the gradient's own graph; 2 to 3 times measured on navigation2d, see docs/training.md)."""
    _, n_states, n_actions = _shape(task)
    return (8 * 8 * horizon_of(task) + itemsize * 3 * max(n_states, n_actions)
            + itemsize * 4 * horizon_of(task) * _policy_width(task))


#: Most bytes one chunk of a batch may hold (its trajectories, rows and autograd graphs).
CHUNK_BYTES = 2 ** 30
#: Most trajectories one chunk of an estimator run samples.
CHUNK_TRAJECTORIES = 2 ** 20
#: Most inner trajectories (per task) one chunk of a leave-one-out truth samples.
LOO_CHUNK_TRAJECTORIES = 2 ** 15


def rows_per_chunk(bytes_per_row: float, most: int) -> int:
    """Rows (trials, truth samples) per chunk of a batch: at most ``most``, and no more than
    ``CHUNK_BYTES`` hold, each row weighing ``bytes_per_row``; at least one."""
    return max(1, min(most, int(CHUNK_BYTES // max(bytes_per_row, 1.0))))


def trial_bytes(task: Any, n_inner: int, n_outer: int | None, itemsize: int) -> float:
    """One trial of an estimator (one row per task, each with its N + M trajectories)."""
    return task.n_tasks * ((n_inner + (n_outer or 0)) * bytes_per_trajectory(task, itemsize)
                           + bytes_per_row(task, n_outer is None, itemsize))


def chunk_trials(task: Any, n_inner: int, n_outer: int | None, dtype: torch.dtype) -> int:
    """Trials per chunk of an estimator run: about 2**20 trajectories and at most 1 GiB.

    A function of the configuration alone (never of the machine), so that chunking never
    changes the numbers: the generator simply runs on from one chunk to the next.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    trajectories = (n_inner + (n_outer or 0)) * task.n_tasks
    return rows_per_chunk(trial_bytes(task, n_inner, n_outer, itemsize),
                          CHUNK_TRAJECTORIES // trajectories)


def truth_chunk(task: Any, n_inner: int, n_outer: int | None, dtype: torch.dtype
                ) -> tuple[int, float]:
    """(samples per chunk, bytes per sample) of an estimated truth at N = ``n_inner`` (times
    the inner steps): with a model, leave-one-out estimates (one row per inner trajectory,
    each with the exact value), about 2**15 inner trajectories per task and at most 1 GiB a
    chunk; without one, estimates with ``n_outer`` sampled outer trajectories, chunked as an
    estimator run. A function of the configuration alone, as :func:`chunk_trials`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if task.has_model:
        per_sample = task.n_tasks * n_inner * (bytes_per_trajectory(task, itemsize)
                                               + bytes_per_row(task, True, itemsize))
        return (rows_per_chunk(per_sample, max(1, LOO_CHUNK_TRAJECTORIES // n_inner)),
                per_sample)
    return chunk_trials(task, n_inner, n_outer, dtype), trial_bytes(task, n_inner, n_outer,
                                                                   itemsize)


#: The API argument and the CLI flag that set each size a memory estimate depends on.
FLAGS = {"n_inner": "n_inner (--n-inner)", "n_outer": "n_outer (--n-outer)",
         "n_trials": "n_trials (--trials)", "truth_samples": "truth_samples (--truth-samples)",
         "meta_batch": "meta_batch (--meta-batch)",
         "chunk": "little: one chunk of a cell holds up to 1 GiB whatever the counts (a "
                  "fixed size, so that results do not depend on the machine)"}


def cell_memory(task: Any, *, n_inner: int, n_outer: int | None, n_trials: int,
                truth_samples: int | None, n_boot: int, dtype: torch.dtype,
                bootstrap: bool = True) -> tuple[float, str]:
    """Estimated peak bytes of one evaluation cell (see the module docstring), and the
    argument that drives the largest part of it (to name in a refusal).

    A cell runs its truth, then its estimates, then its statistics, one after the other: its
    peak is what it keeps throughout (the truth's samples and the estimates, one parameter
    vector each) plus the largest of the three working sets (a chunk of the truth, a chunk of
    the estimates, the bootstrap's resample weights). A chunk is at most 1 GiB, whatever the
    counts, so a refusal names a count only where that count itself must come down: the
    trials and truth samples kept, or N (and M) where one trial alone outweighs a chunk.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    n_params = _shape(task)[0]
    chunk = min(chunk_trials(task, n_inner, n_outer, dtype), n_trials)
    estimator = chunk * trial_bytes(task, n_inner, n_outer, itemsize)
    truth = 0.0
    if truth_samples is not None:
        truth_rows, per_sample = truth_chunk(task, n_inner, n_outer, dtype)
        truth = min(truth_rows, truth_samples) * per_sample
    samples = n_trials + (truth_samples or 0)
    kept = 8 * n_params * samples
    resampling = 8 * 3 * n_boot * samples if bootstrap else 0.0
    working = max(estimator, truth, resampling)
    counts = "truth_samples" if (truth_samples or 0) > n_trials else "n_trials"
    if working == resampling or kept >= working:
        driver = counts
    else:
        # the largest chunk: of the estimates, or of the truth
        count, rows = ((n_trials, chunk) if working == estimator else
                       (truth_samples, min(truth_rows, truth_samples)))
        driver = ("n_trials" if working == estimator else "truth_samples") if rows == count \
            else "chunk" if rows > 1 \
            else "n_outer" if (n_outer or 0) > n_inner else "n_inner"
    return kept + working, FLAGS[driver]


def cell_work(task: Any, *, n_inner: int, n_outer: int | None, n_trials: int,
              truth_samples: int | None) -> float:
    """Trajectory steps one cell samples (its estimates and, if estimated, its truth)."""
    steps = n_trials * task.n_tasks * (n_inner + (n_outer or 0)) * horizon_of(task)
    if truth_samples is not None:
        # without a model the truth samples the outer step too
        per_sample = n_inner + (0 if task.has_model else (n_outer or 0))
        steps += truth_samples * task.n_tasks * per_sample * horizon_of(task)
    return float(steps)


def training_memory(task: Any, *, meta_batch: int, n_inner: int, n_outer: int,
                    trajectories: int, dtype: torch.dtype) -> tuple[float, str]:
    """Estimated peak bytes of one meta-training iteration, and the argument that drives it.

    An iteration holds ``meta_batch`` rows at once, each with its ``trajectories`` (the
    estimator's n_inner inner and n_outer outer ones) and one parameter copy with its
    autograd graph, the outer value sampled (no exact value per row). The driver named is the
    largest of the three counts: each one multiplies the estimate."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    needed = meta_batch * (trajectories * bytes_per_trajectory(task, itemsize)
                           + bytes_per_row(task, False, itemsize))
    counts = {"meta_batch": meta_batch, "n_inner": n_inner, "n_outer": n_outer}
    return needed, FLAGS[max(counts, key=counts.get)]


def training_work(task: Any, *, iterations: int, meta_batch: int, trajectories: int) -> float:
    """Trajectory steps a meta-training run samples: per iteration, ``trajectories`` per
    task of the meta-batch."""
    return float(iterations * meta_batch * trajectories * horizon_of(task))


class PeakMemory:
    """The peak memory a block of code adds, measured (not estimated).

    On CUDA: the allocator's peak over the block, less what was allocated at its start. On
    Linux CPUs: the resident set's high-water mark over the block (reset at its start by
    writing 5 to ``/proc/self/clear_refs``), less the resident set at its start, with the C
    heap trimmed first (``malloc_trim``) so that memory freed earlier and still held by the
    allocator does not hide this block's own. Elsewhere (or where ``/proc`` refuses the
    reset), or with ``enabled=False``, ``bytes`` stays None and ``method`` says why. The
    figure counts what the block holds at its peak (its tensors, autograd graphs and
    temporaries); it is approximate on CPUs, to a page, and measures a process: run one cell
    at a time to read it.
    """

    def __init__(self, device: torch.device, *, enabled: bool = True):
        self.device = device
        self.enabled = enabled
        self.bytes: int | None = None
        self.method = "unavailable"
        self._base = 0

    def __enter__(self) -> "PeakMemory":
        if not self.enabled:
            self.method = "not measured"
        elif self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda-allocator-peak"
        elif _reset_high_water_mark():
            self._base = _status_bytes("VmRSS") or 0
            self.method = "resident-high-water-mark"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.method == "cuda-allocator-peak":
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
        elif self.method == "resident-high-water-mark":
            peak = _status_bytes("VmHWM")
            self.bytes = None if peak is None else max(0, peak - self._base)


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None elsewhere (the figure may then include memory freed
    earlier and kept by the allocator)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _reset_high_water_mark() -> bool:
    """Trim the C heap and reset the resident high-water mark; False where not possible."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None
