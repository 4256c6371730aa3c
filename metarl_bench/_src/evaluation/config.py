"""One cell's configuration: everything that determines its numbers, typed, with its defaults.

A cell is one (estimator, N) measurement of an evaluation. ``evaluate``, the sweeps, the
results store and the reports all describe a cell by a :class:`CellConfig`; its
:meth:`~CellConfig.as_dict` is what the store writes and digests into the cell's key, so the
rules that keep keys stable live here and only here:

* one inner step (``n_steps=1``) is left out of the dict, so that stores written before
  K inner steps existed still resume;
* likewise the adaptive-trials fields, present only when trials are adaptive, and ``wrt``
  only when the meta-gradient is not theta's;
* each random stream of a cell has its own seed derived from the run's seed
  (:meth:`~CellConfig.stream_seed`), so adding an estimator or an N never changes the
  numbers of the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from metarl_bench._src.core.files import plain


def cell_seed(seed: int, *parts: Any) -> int:
    """A seed for one cell, stable across runs, machines and the other cells of a grid."""
    return zlib.crc32(":".join(str(p) for p in (seed, *parts)).encode())


def cell_key(config: dict[str, Any]) -> str:
    """The key of a cell: a digest of its configuration (canonical JSON: field order, NaN
    and array types do not matter)."""
    canonical = json.dumps(plain(config), sort_keys=True, separators=(",", ":"),
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


#: Fields of a cell's configuration that vary inside one result (a table of estimators x N);
#: every other field is shared by the whole table.
PER_CELL_FIELDS = ("estimator", "options", "n_inner")


@dataclass(frozen=True)
class CellConfig:
    """Everything that determines a cell's numbers; its digest is the cell's store key.

    ``theta`` is None for the task's own initial parameters. ``n_outer`` None: the exact
    outer step. ``exact``: exact enumerated moments where the task and estimator allow them.
    With a ``target_rel_ci``, ``n_trials`` is the first batch and ``max_trials`` the cap.
    Timing, library versions and the machine are not part of it (they are recorded with the
    result). The defaults of ``evaluate`` and of a sweep's settings are these.
    """

    task: str
    estimator: str
    n_inner: int
    task_params: dict[str, Any] = field(default_factory=dict)
    theta: list | None = None
    options: dict[str, Any] = field(default_factory=dict)
    n_outer: int | None = None
    inner_lr: float = 1.0
    n_trials: int = 1000
    seed: int = 0
    truth: str = "finite"
    truth_samples: int = 20_000
    exact: bool = True
    n_boot: int = 200
    dtype: str = "float64"
    device: str = "cpu"
    n_steps: int = 1
    target_rel_ci: float | None = None
    target_metric: str = "mse"
    max_trials: int | None = None
    wrt: str = "theta"

    def as_dict(self) -> dict[str, Any]:
        """The configuration as the store writes it and digests it into the key."""
        return dict(task=self.task, task_params=plain(self.task_params), theta=self.theta,
                    estimator=self.estimator, options=plain(self.options),
                    n_inner=self.n_inner, n_outer=self.n_outer, inner_lr=self.inner_lr,
                    n_trials=self.n_trials, seed=self.seed, truth=self.truth,
                    truth_samples=self.truth_samples, exact=bool(self.exact),
                    n_boot=self.n_boot, dtype=self.dtype, device=self.device,
                    **({"n_steps": self.n_steps} if self.n_steps != 1 else {}),
                    **({"target_rel_ci": self.target_rel_ci,
                        "target_metric": self.target_metric, "max_trials": self.max_trials}
                       if self.target_rel_ci is not None else {}),
                    **({"wrt": self.wrt} if self.wrt != "theta" else {}))

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "CellConfig":
        """The configuration of a stored line (or a record: fields of the result are
        ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    @property
    def key(self) -> str:
        return cell_key(self.as_dict())

    def shared(self) -> dict[str, Any]:
        """The fields shared by every cell of one result (all but :data:`PER_CELL_FIELDS`)."""
        return {k: v for k, v in self.as_dict().items() if k not in PER_CELL_FIELDS}

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def planned_trials(self) -> int:
        """The most estimates the cell may compute: its cap when adaptive, else n_trials."""
        return self.max_trials or self.n_trials

    @property
    def inner_per_trial(self) -> int:
        """Inner trajectories per trial and task: N fresh ones at each of the K steps."""
        return self.n_inner * self.n_steps

    @property
    def call_options(self) -> dict[str, Any]:
        """The estimator's options as it is called: ``exact`` is told which truth it is, and
        every estimator what it differentiates when that is not theta (``wrt``)."""
        wrt = {"wrt": self.wrt} if self.wrt != "theta" else {}
        if self.estimator == "exact":
            return {"truth": self.truth, **self.options, **wrt}
        return {**self.options, **wrt}

    def call_keywords(self) -> dict[str, Any]:
        """The keywords of the estimator's call, beyond task, theta, n_trials and generator
        (``n_steps`` only when K > 1: a one-step plug-in need not accept it)."""
        return dict(n_inner=self.n_inner, inner_lr=self.inner_lr, n_outer=self.n_outer,
                    **self.call_options,
                    **({"n_steps": self.n_steps} if self.n_steps != 1 else {}))

    def stream_seed(self, stream: str) -> int:
        """The seed of one random stream of the cell: ``"truth"`` (the reference at this N,
        shared by every estimator) or the estimator's name (its estimates). One inner step
        keeps the seeds it had before K existed."""
        if self.n_steps == 1:
            return cell_seed(self.seed, stream, self.n_inner)
        return cell_seed(self.seed, stream, self.n_inner, self.n_steps)

    @property
    def bootstrap_seed(self) -> int:
        """The seed of the cell's bootstrap intervals."""
        return cell_seed(self.seed, "bootstrap", self.estimator, self.n_inner)
