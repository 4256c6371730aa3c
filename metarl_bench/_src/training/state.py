"""The files of a meta-training run: its JSON-lines log and the checkpoint beside it.

A run with ``jsonl="train.jsonl"`` keeps ``train.state.json`` next to the log: the number
of finished iterations, theta, the optimiser's state (null for TRPO, which keeps none), the
random generator's state and the last finished row, as plain JSON (never pickle). Rules, so that a crash, Ctrl-C or SIGKILL
loses no finished iteration and the same call resumes bit for bit:

* Per iteration the checkpoint is replaced atomically first (``core.files``: a reader sees
  the old checkpoint or the new one, never a mix), then the row is appended to the log. So the log holds either every row
  the checkpoint has finished or all but its last; resuming appends that last row.
* Nothing is written before the first iteration has finished, so a call that fails at
  once (e.g. an estimator refusing the task) leaves no file behind.
* The log is only appended to, as every JSON-lines file is (``core.files``): a torn last
  line (a write cut short) is removed before the next append.
* Everything is checked before anything is written: a log of another configuration, a log
  without its checkpoint, a checkpoint that disagrees with its log, or a file that is not
  a training log is refused with one line, and no file is touched.

JSON floats are written by ``repr``, which round-trips every float64 exactly (and float32
through float64), so a restored tensor equals the saved one bit for bit.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import torch

from metarl_bench._src.core import files
from metarl_bench._src.core.errors import ParameterError, ResultsFileError
from metarl_bench._src.core.files import check_path, plain

#: The log's schema (its header's ``schema_version``).
LOG_SCHEMA_VERSION = 1
CHECKPOINT_SCHEMA = "metarl-bench/train-checkpoint"
CHECKPOINT_VERSION = 1
#: How every line of a training log begins: a cut-short last line is a prefix of it or
#: starts with it (``json.dumps`` of a dict whose first key is ``type``).
_OPENING = b'{"type": "'


def checkpoint_path(jsonl: str | os.PathLike) -> str:
    """``train.jsonl`` -> ``train.state.json``, in the same folder."""
    return os.path.splitext(os.fspath(jsonl))[0] + ".state.json"


def finished_iterations(jsonl: str | os.PathLike) -> int:
    """How many iterations the checkpoint of the log ``jsonl`` has finished (0 if none)."""
    try:
        with open(checkpoint_path(jsonl), "rb") as handle:
            finished = json.loads(handle.read()).get("finished", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return finished if isinstance(finished, int) else 0


# --- tensors, optimiser and generator as JSON --------------------------------------------

def encode_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    tensor = tensor.detach().cpu()
    return {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
            "data": tensor.reshape(-1).tolist()}


def decode_tensor(value: Any) -> torch.Tensor:
    """A tensor from ``encode_tensor``'s JSON, on the CPU (``copy_`` and the optimiser's
    ``load_state_dict`` move it to where the parameter lives)."""
    dtype = getattr(torch, str(value["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value['dtype']!r}")
    return torch.tensor(value["data"], dtype=dtype).reshape(value["shape"])


def _encode_tree(value: Any) -> Any:
    """A state dict as JSON: tensors as {"tensor": {dtype, shape, data}}, tuples as lists."""
    if isinstance(value, torch.Tensor):
        return {"tensor": encode_tensor(value)}
    if isinstance(value, dict):
        return {str(key): _encode_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_tree(item) for item in value]
    return value


def _decode_tree(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"tensor"}:
            return decode_tensor(value["tensor"])
        return {key: _decode_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_tree(item) for item in value]
    return value


def encode_optimizer(optimizer: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """A torch optimiser's state dict as JSON; None for a step without state (TRPO's)."""
    return None if optimizer is None else _encode_tree(optimizer.state_dict())


def restore_optimizer(optimizer: torch.optim.Optimizer | None,
                      saved: dict[str, Any] | None) -> None:
    if optimizer is None or saved is None:
        if optimizer is not None or saved is not None:
            raise ValueError("the checkpoint's optimiser state does not fit this optimiser")
        return
    state = _decode_tree(saved)
    # JSON keys are strings; torch keys a parameter's state by its integer index
    state["state"] = {int(key): value for key, value in state["state"].items()}
    for loaded, fresh in zip(state["param_groups"], optimizer.state_dict()["param_groups"]):
        for key, value in fresh.items():  # e.g. Adam's betas: a tuple, as torch made it
            if isinstance(value, tuple) and isinstance(loaded.get(key), list):
                loaded[key] = tuple(loaded[key])
    optimizer.load_state_dict(state)


def encode_generator(generator: torch.Generator) -> dict[str, Any]:
    state = generator.get_state()
    return {"device": str(generator.device),
            "state": base64.b64encode(state.numpy().tobytes()).decode("ascii")}


def restore_generator(generator: torch.Generator, saved: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(saved["state"], validate=True))
    generator.set_state(torch.frombuffer(raw, dtype=torch.uint8).clone())


# --- the log -------------------------------------------------------------------------------

@dataclass
class LogContents:
    """A training log as read: its header (None for a log with no complete line yet), its
    iteration rows, and the byte length of its complete lines (a torn tail lies beyond)."""

    header: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    complete_bytes: int = 0


def parse_log(path: str, data: bytes) -> LogContents:
    """Read a log's bytes; anything that is not a training log of this schema raises one
    line naming the file and the line."""
    contents = LogContents()
    lines, contents.complete_bytes = files.complete_lines(data, _OPENING)
    for number, raw in lines:
        where = f"{path}:{number}"
        try:
            line = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ParameterError(f"{where}: not a JSON line; {path} is not a metarl-bench "
                                 f"training log") from None
        kind = line.pop("type", None) if isinstance(line, dict) else None
        if contents.header is None:
            if kind != "header":
                raise ParameterError(f"{where}: not a metarl-bench training log (its first "
                                     f"line is not a training header)")
            version = line.pop("schema_version", None)
            if version != LOG_SCHEMA_VERSION:
                raise ParameterError(f"{where}: a training log of schema_version "
                                     f"{version!r}; this version reads {LOG_SCHEMA_VERSION}")
            contents.header = line
        elif kind == "iteration" and line.get("iteration") == len(contents.rows):
            contents.rows.append(line)
        else:
            raise ParameterError(f"{where}: expected iteration {len(contents.rows)} of a "
                                 f"training log, found {kind!r} line")
    return contents


def _differences(logged: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [f"{key}: {logged.get(key)!r} in the log, {wanted.get(key)!r} now"
            for key in [*wanted, *(k for k in logged if k not in wanted)]
            if logged.get(key) != wanted.get(key)]


@dataclass
class Resume:
    """Where a run starts: ``finished`` iterations done (0 for a fresh run), the rows already
    logged, and the checkpoint (None for a fresh run)."""

    finished: int
    rows: list[dict[str, Any]]
    checkpoint: dict[str, Any] | None


class TrainingFiles:
    """A run's log and checkpoint. Constructing it reads and checks both and writes
    nothing; :meth:`start` repairs the log (torn tail, missing last row) and :meth:`record`
    writes one finished iteration. Holds an exclusive lock on the log while it is open, so
    two runs cannot write one log."""

    def __init__(self, jsonl: str | os.PathLike, config: dict[str, Any],
                 initial_theta: torch.Tensor):
        self.path = check_path(jsonl, "jsonl")
        self.state_path = check_path(checkpoint_path(self.path), "checkpoint")
        self.config = json.loads(json.dumps(plain(config), allow_nan=False))
        self.initial_theta = encode_tensor(initial_theta)
        self.fd: int | None = None
        self.has_header = False
        self._missing: list[dict[str, Any]] = []
        try:
            self.resume = self._read()
        except BaseException:
            self.close()
            raise

    def _read(self) -> Resume:
        exists = os.path.lexists(self.path)
        if exists and not stat.S_ISREG(os.stat(self.path).st_mode):
            raise ParameterError(f"jsonl {self.path!r} is not a regular file")
        contents = LogContents()
        if exists:
            self.fd = self._open(os.O_RDWR | os.O_APPEND)
            contents = parse_log(self.path, os.pread(self.fd, os.fstat(self.fd).st_size, 0))
        checkpoint = self._read_checkpoint()
        if contents.header is not None:
            differences = _differences(contents.header, self.config)
            if differences:
                raise ParameterError(
                    f"{self.path} is the log of another configuration ({'; '.join(differences)})"
                    f": choose another --json path for a new run, or repeat the logged "
                    f"configuration to resume it")
        self.has_header = contents.header is not None
        if checkpoint is None:
            if contents.header is not None:
                raise ParameterError(
                    f"{self.path} has no checkpoint {self.state_path}, so it cannot be "
                    f"resumed: choose another --json path")
            return Resume(0, [], None)
        finished, rows = checkpoint["finished"], contents.rows
        if checkpoint["config"] != self.config:
            raise ParameterError(
                f"checkpoint {self.state_path} is of another configuration "
                f"({'; '.join(_differences(checkpoint['config'], self.config))}): choose "
                f"another --json path")
        if checkpoint["initial_theta"] != self.initial_theta:
            raise ParameterError(f"{self.path} was trained from another initial theta: pass "
                                 f"the same theta to resume, or choose another path")
        if len(rows) == finished and rows[-1] == checkpoint["last_row"]:
            return Resume(finished, rows, checkpoint)
        if len(rows) == finished - 1 and checkpoint["last_row"].get("iteration") == len(rows):
            # stopped between writing the checkpoint and appending its row
            self._missing = [checkpoint["last_row"]]
            return Resume(finished, [*rows, checkpoint["last_row"]], checkpoint)
        raise ParameterError(f"checkpoint {self.state_path} ({finished} finished iterations) "
                             f"disagrees with {self.path} ({len(rows)} iterations"
                             f"{'' if exists else ': no such file'}); neither was changed")

    def _read_checkpoint(self) -> dict[str, Any] | None:
        if not os.path.lexists(self.state_path):
            return None
        bad = f"{self.state_path} is not a metarl-bench training checkpoint"
        try:
            with open(self.state_path, "rb") as handle:
                checkpoint = json.loads(handle.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            raise ParameterError(bad) from None
        keys = {"config", "initial_theta", "finished", "theta", "optimizer", "generator",
                "last_row"}
        if not (isinstance(checkpoint, dict) and checkpoint.get("schema") == CHECKPOINT_SCHEMA
                and keys <= set(checkpoint) and isinstance(checkpoint["last_row"], dict)):
            raise ParameterError(bad)
        if checkpoint.get("schema_version") != CHECKPOINT_VERSION:
            raise ParameterError(f"{self.state_path}: a checkpoint of schema_version "
                                 f"{checkpoint.get('schema_version')!r}; this version reads "
                                 f"{CHECKPOINT_VERSION}")
        if not (isinstance(checkpoint["finished"], int) and checkpoint["finished"] >= 1):
            raise ParameterError(bad)
        return checkpoint

    def restore(self, parameter: torch.Tensor, optimizer: torch.optim.Optimizer | None,
                generator: torch.Generator) -> None:
        """Set theta, the optimiser and the generator to the checkpoint's (if any); a damaged
        checkpoint is refused before any file is changed."""
        saved = self.resume.checkpoint
        if saved is None:
            return
        try:
            with torch.no_grad():
                parameter.copy_(decode_tensor(saved["theta"]))
            restore_optimizer(optimizer, saved["optimizer"])
            restore_generator(generator, saved["generator"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            first_line = (str(exc) or repr(exc)).splitlines()[0]
            raise ParameterError(f"{self.state_path} is damaged ({type(exc).__name__}: "
                                 f"{first_line}); choose another --json path") from None

    def start(self) -> None:
        """Make the log agree with the checkpoint: drop a torn tail, append what is missing."""
        try:
            if self.fd is not None:
                files.repair_tail(self.fd, _OPENING)
        except OSError as exc:
            raise ResultsFileError(f"cannot repair {self.path}: {exc.strerror}") from None
        if self._missing:
            self._append(self._missing)

    def record(self, finished: int, theta: torch.Tensor,
               optimizer: torch.optim.Optimizer | None, generator: torch.Generator,
               row: dict[str, Any]) -> None:
        """Save one finished iteration: the checkpoint first, then its log row."""
        checkpoint = {"schema": CHECKPOINT_SCHEMA, "schema_version": CHECKPOINT_VERSION,
                      "log": os.path.basename(self.path), "config": self.config,
                      "initial_theta": self.initial_theta, "finished": finished,
                      "theta": encode_tensor(theta), "optimizer": encode_optimizer(optimizer),
                      "generator": encode_generator(generator), "last_row": row}
        try:
            files.write_atomically(self.state_path, json.dumps(checkpoint, allow_nan=False))
        except OSError as exc:
            raise ResultsFileError(f"cannot write checkpoint {self.state_path}: "
                                   f"{exc.strerror}") from None
        self._append([row])

    def _append(self, rows: list[dict[str, Any]]) -> None:
        lines = [] if self.has_header else [
            {"type": "header", "schema_version": LOG_SCHEMA_VERSION, **self.config}]
        lines += [{"type": "iteration", **row} for row in rows]
        data = files.encode_lines(lines)
        try:
            if self.fd is None:
                self.fd = self._open(os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL)
            files.write_all(self.fd, data)
        except OSError as exc:
            raise ResultsFileError(f"cannot write {self.path}: {exc.strerror}; the iterations "
                                   f"written before are kept") from None
        self.has_header = True

    def _open(self, flags: int) -> int:
        """The log, opened and locked for this run alone (another run writing it is refused)."""
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise ParameterError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            files.lock(fd, wait=False)
        except BlockingIOError:
            os.close(fd)
            raise ParameterError(f"{self.path} is being written by another run; wait for it "
                                 f"to finish or choose another --json path") from None
        return fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # also releases the lock
            self.fd = None
