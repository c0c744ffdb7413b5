"""One wrapper for progress reports, so the whole library can be silenced at once.

On a terminal, stages show tqdm bars on stderr. When stderr is not a terminal (output redirected
to a log, a CI job), each stage prints one line when it starts, a line at most every
``LINE_INTERVAL`` seconds while it runs, and one when it ends -- so a long job in a log is never
silent. ``CLUSTERGUIDE_PROGRESS=1`` forces bars, ``=0`` silences everything, as do ``-q`` and
``set_progress(False)``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LINE_INTERVAL = 30.0  # seconds between progress lines of one stage without a terminal
_enabled: bool | None = None  # None: decide from the terminal and the environment


def set_progress(enabled: bool | None) -> None:
    """Force bars on (True), off (False), or back to automatic (None)."""
    global _enabled
    _enabled = enabled


def _mode() -> str:
    """ "bars", "lines" or "off"."""
    if _enabled is not None:
        return "bars" if _enabled else "off"
    env = os.environ.get("CLUSTERGUIDE_PROGRESS")
    if env is not None:
        return "off" if env in ("0", "", "false") else "bars"
    return "bars" if sys.stderr.isatty() else "lines"


def _active() -> bool:
    return _mode() != "off"


def enabled() -> bool:
    """Whether progress is reported now (other libraries' bars follow this too)."""
    return _active()


class _Lines:
    """A stage reported as lines on stderr: started, now and then how far, done with its time."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc or "working", unit
        self.n = 0
        self.start = self.last = time.monotonic()
        self.postfix = ""
        of = f" ({total:,} {unit})" if total is not None else ""
        self._say(f"{self.desc}: started{of}")

    def _say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _count(self) -> str:
        return f"{self.n:,}/{self.total:,} {self.unit}" if self.total else f"{self.n:,} {self.unit}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= LINE_INTERVAL:
            self.last = now
            extra = f", {self.postfix}" if self.postfix else ""
            self._say(f"{self.desc}: {self._count()}, {now - self.start:.0f}s{extra}")

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self, failed: bool = False) -> None:
        seconds = time.monotonic() - self.start
        if failed:
            self._say(f"{self.desc}: stopped after {seconds:.1f}s ({self._count()})")
        else:
            self._say(f"{self.desc}: done in {seconds:.1f}s ({self._count()})")


class _Null:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it"
) -> Iterator[T]:
    mode = _mode()
    if mode == "off":
        yield from iterable
    elif mode == "lines":
        with bar(total, desc, unit) as b:
            for item in iterable:
                yield item
                b.update(1)
    else:
        yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


@contextmanager
def bar(total: int | None, desc: str = "", unit: str = "it", show: bool = True) -> Iterator[Any]:
    """A manual bar: ``with bar(n) as b: b.update(k)``; lines without a terminal, a no-op when
    silenced (or ``show`` is false: small jobs that would only add noise)."""
    mode = _mode() if show else "off"
    if mode == "off":
        yield _Null()
    elif mode == "lines":
        lines = _Lines(total, desc, unit)
        try:
            yield lines
        except BaseException:
            lines.close(failed=True)
            raise
        lines.close()
    else:
        with tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True) as b:
            yield b
