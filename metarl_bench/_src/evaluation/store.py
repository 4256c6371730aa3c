"""The results store: one append-only JSON-lines file that every writer of results shares.

Each line is one finished cell, complete in itself::

    {"schema": "metarl-bench/results", "schema_version": 2, "key": "<24 hex digits>",
     "config": {...everything that determines the numbers...},
     "result": {...statistics, truth kind, work, seconds...}}

``key`` is a digest of ``config`` (canonical JSON), so the same configuration always has the
same key, whoever wrote it and in whatever order. Rules:

* Lines are only ever appended, under a lock, each flushed to disk, and a torn last line (a
  write cut short by a crash) is ignored on reading and removed before the next append: the
  rules of ``core.files``.
* Reading stops with a one-line error naming the line on anything that is not a results
  line (binary or non-UTF-8 bytes, a JSON array, another schema, a line whose statistics
  are missing or not numbers).
* A key written twice (a forced re-run) is read as its latest line: latest wins, in the
  position where the key first appeared.
* Derived numbers (log-log slopes) are not stored: they are fitted on reading, so a resumed
  or extended run can never leave stale slopes behind.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Iterator

from metarl_bench._src.core import files
from metarl_bench._src.core.errors import ResultsFileError
from metarl_bench._src.core.files import check_path, plain  # noqa: F401 (re-exported)
from metarl_bench._src.core.stats import METRICS
from metarl_bench._src.evaluation.config import CellConfig, cell_key

SCHEMA = "metarl-bench/results"
SCHEMA_VERSION = 2
#: Fields of a result that measure the machine rather than the estimator (time, and memory
#: as the process saw it): two runs of the same configuration agree on everything else, bit
#: for bit.
TIMING_FIELDS = ("seconds", "peak_memory_bytes")


def make_line(config: CellConfig | dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A results line: the cell's configuration, its key and its result."""
    if isinstance(config, CellConfig):
        config = config.as_dict()
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "key": cell_key(config),
            "config": plain(config), "result": plain(result)}


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, line) of each complete results line of ``path``, in file order.

    A missing file, or a device such as /dev/null, holds no lines. A torn last line (no
    newline at its end) is skipped; anything else that is not a results line of this schema
    raises :class:`ResultsFileError` naming the file and the line.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ResultsFileError(f"{path}: is a directory, not a results file")
    if not files.is_regular(path):
        return
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ResultsFileError(f"{path}: cannot be read: {exc.strerror}") from None
    for number, raw in files.complete_lines(data, _OPENING)[0]:
        yield number, _parse(path, number, raw)


#: How every line the store writes begins (``json.dumps`` of ``make_line``'s dict).
_OPENING = b'{"schema": "metarl-bench/results", '


def _parse(path: str, number: int, raw: bytes) -> dict[str, Any]:
    where = f"{path}:{number}"
    if b"\0" in raw:
        raise ResultsFileError(f"{where}: binary data, not a metarl-bench results file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ResultsFileError(f"{where}: not UTF-8 text, not a metarl-bench results file"
                               ) from None
    try:
        line = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"{where}: not a JSON line ({exc.msg} at column {exc.colno})"
                               ) from None
    if not isinstance(line, dict):
        raise ResultsFileError(f"{where}: a JSON {type(line).__name__}, but a results file "
                               f"holds one JSON object per line")
    if line.get("schema") != SCHEMA:
        if line.get("type") in ("header", "iteration") and "return_after" in line or (
                line.get("type") == "header" and "meta_batch" in line):
            raise ResultsFileError(f"{where}: a meta-training log (metarl-bench train), not a "
                                   f"results file")
        version = line.get("schema_version")
        if line.get("type") == "header" or (
                "schema" not in line and isinstance(version, int) and version < SCHEMA_VERSION):
            raise ResultsFileError(f"{where}: results of schema_version {version!r} (an older "
                                   f"metarl-bench); this version reads {SCHEMA_VERSION}: write "
                                   f"to a new file")
        if "schema" in line:
            raise ResultsFileError(f"{where}: \"schema\" is {line['schema']!r}, not {SCHEMA!r}: "
                                   f"not a metarl-bench results line (was it edited?)")
        raise ResultsFileError(f"{where}: not a metarl-bench results line (no "
                               f"\"schema\": {SCHEMA!r})")
    if line.get("schema_version") != SCHEMA_VERSION:
        version = line.get("schema_version")
        newer = (" (a newer metarl-bench?)" if isinstance(version, int)
                 and not isinstance(version, bool) and version > SCHEMA_VERSION else "")
        raise ResultsFileError(f"{where}: schema_version {version!r}{newer}; this version of "
                               f"metarl-bench reads {SCHEMA_VERSION}")
    if not (isinstance(line.get("key"), str) and isinstance(line.get("config"), dict)
            and isinstance(line.get("result"), dict)):
        raise ResultsFileError(f"{where}: a results line needs \"key\", \"config\" and "
                               f"\"result\"")
    if cell_key(line["config"]) != line["key"]:
        raise ResultsFileError(f"{where}: key {line['key']!r} does not match its config (was "
                               f"the line edited?)")
    _check_fields(where, line)
    return line


#: Fields every line has, with the JSON types each may take (``None``: null).
_CONFIG_FIELDS = {"task": (str,), "estimator": (str,), "options": (dict,), "n_inner": (int,),
                  "n_trials": (int,), "seed": (int,), "dtype": (str,)}


def _number_or_null(value: Any) -> bool:
    """What a statistic may be: null, or a finite number (JSON's NaN and Infinity are not
    JSON, and the store never writes them)."""
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _check_fields(where: str, line: dict[str, Any]) -> None:
    """Refuse a line whose fields a reader would trip over later (a hand-edited or foreign
    line that kept the schema tag): a missing statistic, text where a number belongs."""
    for name, types in _CONFIG_FIELDS.items():
        value = line["config"].get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise ResultsFileError(f"{where}: config field {name!r} is {value!r}; expected "
                                   f"{' or '.join(t.__name__ for t in types)}")
    result = line["result"]
    for name in (*METRICS, "seconds"):
        if name not in result:
            raise ResultsFileError(f"{where}: the result has no {name!r}")
        if not _number_or_null(result[name]):
            raise ResultsFileError(f"{where}: result field {name!r} is {result[name]!r}; "
                                   f"expected a finite number or null")
        interval = result.get(f"{name}_ci", [None, None])
        if not (isinstance(interval, list) and len(interval) == 2
                and all(map(_number_or_null, interval))):
            raise ResultsFileError(f"{where}: result field {name + '_ci'!r} is {interval!r}; "
                                   f"expected [low, high] numbers or nulls")
    _check_consistency(where, result)


#: Relative rounding that a stored identity may show: the numbers are recomputed here from
#: their shortest JSON forms, a few operations in float64 away from how they were computed.
_ROUNDING = 1e-9


def _check_consistency(where: str, result: dict[str, Any]) -> None:
    """Refuse a result whose numbers contradict each other, which no run writes (a
    hand-edited line): a negative bias, variance or MSE, a cosine or correlation outside
    [-1, 1], statistics missing with no problem said, mse_x_trajectories != mse x
    trajectories; and, in results that have ``bias_raw`` (written since the statistics agree
    with themselves, d237413: before, bias was |mean - truth| and often lay outside its own
    interval, and mse was the mean squared error), a statistic outside its own 95% interval,
    mse != bias^2 + variance, a bias that does not follow from bias_raw and bias_noise."""
    def damaged(what: str) -> ResultsFileError:
        return ResultsFileError(f"{where}: a damaged result (was the line edited?): {what}")

    def value(name: str) -> float | None:
        number = result.get(name)
        return None if number is None or not _number_or_null(number) else float(number)

    def close(first: float, second: float, scale: float) -> bool:
        return abs(first - second) <= _ROUNDING * scale

    bias, variance, mse = value("bias"), value("variance"), value("mse")
    if result.get("problem") is None and None in (bias, variance, mse):
        raise damaged("bias, variance or mse is null, but no problem is given")
    for name in ("bias", "variance", "mse", "bias_raw", "bias_noise"):
        number = value(name)
        if number is not None and number < 0:
            raise damaged(f"{name} is {number!r}, below 0")
    agreeing = "bias_raw" in result
    for name in METRICS:
        point, interval = value(name), result.get(f"{name}_ci") or [None, None]
        if point is None or None in interval:
            continue
        low, high = interval
        if agreeing and not low <= point <= high:
            raise damaged(f"{name} {point!r} lies outside its 95% interval [{low!r}, "
                          f"{high!r}]")
        if name in ("cosine", "correlation", "cosine_per_estimate") and \
                not -1 - _ROUNDING <= low <= high <= 1 + _ROUNDING:
            raise damaged(f"{name}'s interval [{low!r}, {high!r}] leaves [-1, 1]")
    if agreeing and None not in (bias, variance, mse) and \
            not close(mse, bias * bias + variance, mse):
        raise damaged(f"mse {mse!r} is not bias^2 + variance = {bias * bias + variance!r}")
    raw, noise = value("bias_raw"), value("bias_noise")
    if None not in (bias, raw, noise):
        # bias = sqrt(max(raw^2 - noise^2, 0)), the squares a cancellation away at worst
        if not close(bias * bias, max(raw * raw - noise * noise, 0.0), raw * raw + noise * noise):
            raise damaged(f"bias {bias!r} does not follow from bias_raw {raw!r} and "
                          f"bias_noise {noise!r}")
    product, trajectories = value("mse_x_trajectories"), value("trajectories")
    if None not in (product, trajectories, mse) and \
            not close(product, mse * trajectories, product):
        raise damaged(f"mse_x_trajectories {product!r} is not mse x trajectories = "
                      f"{mse * trajectories!r}")


def latest(lines: Iterable[tuple[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Key -> its latest line, in the order keys first appeared."""
    out: dict[str, dict[str, Any]] = {}
    for _, line in lines:
        out[line["key"]] = line
    return out


class Store:
    """An append-only results file. Construct it only after every argument is checked: it
    reads (and so validates) the file at once, but creates or changes nothing until the
    first :meth:`append`."""

    def __init__(self, path: str | os.PathLike, *, option: str = "jsonl"):
        self.path = check_path(path, option)
        self.lines = latest(read_lines(self.path))
        self.written = 0

    def __contains__(self, key: str) -> bool:
        return key in self.lines

    def append(self, line: dict[str, Any]) -> None:
        """Write one line and flush it to disk; a failure is one line naming the file."""
        try:
            files.append_lines(self.path, [line], _OPENING)
        except OSError as exc:
            raise self._error(exc) from None
        self.lines[line["key"]] = line
        self.written += 1

    def _error(self, exc: OSError) -> ResultsFileError:
        kept = (f"; the {self.written} results written before are kept" if self.written else
                "; results written before are kept")
        return ResultsFileError(f"cannot write results to {self.path}: {exc.strerror}{kept}")

