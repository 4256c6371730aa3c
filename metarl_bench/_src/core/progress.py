"""Progress on stderr with an ETA (tqdm), for anything that may run more than a few seconds.

Commands show it when stderr is a terminal and ``--quiet`` is not given; the API shows it
only when asked (``progress=True``). Work is counted in its natural unit (trajectories,
cells, samples), so a single huge cell still moves the bar.
"""

from __future__ import annotations

import sys
from typing import Any, Callable


def wanted(quiet: bool = False) -> bool:
    """The commands' rule: a bar when stderr is a terminal, unless --quiet."""
    return not quiet and sys.stderr.isatty()


class Progress:
    """A tqdm bar (or nothing when disabled); ``advance(n)`` adds ``n`` units of work."""

    def __init__(self, total: float | None, desc: str, *, enabled: bool, unit: str = "it",
                 initial: float = 0, unit_scale: bool = True):
        """``initial``: work already done before (e.g. by a resumed run): shown as done,
        but not counted in the rate that the ETA is computed from."""
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                            file=sys.stderr, dynamic_ncols=True, leave=False, initial=initial)

    def advance(self, n: float = 1, **postfix: Any) -> None:
        """Add ``n`` units; ``postfix`` (e.g. the latest return) is shown after the bar."""
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def set(self, done: float, total: float) -> None:
        """Jump to ``done`` of ``total`` (for work counted elsewhere, e.g. a child process)."""
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def as_advance(progress: Any, total: float, desc: str, unit: str
               ) -> tuple[Callable[[float], None], Progress | None]:
    """An API ``progress=`` argument (False/None, True, or a callable taking the units done
    since the last call) as a function to call per chunk, and the bar to close if any."""
    if progress is None or progress is False:
        return (lambda n: None), None
    if progress is True:
        bar = Progress(total, desc, enabled=True, unit=unit)
        return bar.advance, bar
    if callable(progress):
        return progress, None
    from metarl_bench._src.core.errors import ParameterError

    raise ParameterError(f"progress must be True, False, None or a callable, got "
                         f"{type(progress).__name__}")
