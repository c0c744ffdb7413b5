"""One wrapper for progress bars, so the whole library can be silenced at once.

Bars go to stderr and disappear when it is not a terminal, unless CLUSTERGUIDE_PROGRESS=1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled: bool | None = None  # None: decide from the terminal and the environment


def set_progress(enabled: bool | None) -> None:
    """Force bars on (True), off (False), or back to automatic (None)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether bars are shown now (other libraries' bars follow this too)."""
    return _active()


def _active() -> bool:
    if _enabled is not None:
        return _enabled
    env = os.environ.get("CLUSTERGUIDE_PROGRESS")
    if env is not None:
        return env not in ("0", "", "false")
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it"
) -> Iterator[T]:
    if not _active():
        yield from iterable
        return
    yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


@contextmanager
def bar(total: int | None, desc: str = "", unit: str = "it"):
    """A manual bar: ``with bar(n) as b: b.update(k)``; a no-op object when silenced."""
    if not _active():

        class _Null:
            def update(self, n: int = 1) -> None: ...
            def set_postfix_str(self, s: str) -> None: ...

        yield _Null()
        return
    with tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True) as b:
        yield b
