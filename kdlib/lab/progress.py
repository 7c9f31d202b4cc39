"""Progress reporting that reads well both in JupyterLab and in headless runs.

Under papermill a tqdm bar is frozen into the saved notebook at whatever state
it was last drawn (often 0%), so headless runs print a few plain lines instead.
The runner sets ``KDLIB_HEADLESS=1``; interactive sessions get tqdm.auto.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def is_headless() -> bool:
    return os.environ.get("KDLIB_HEADLESS", "") not in ("", "0")


def track(iterable: Iterable[T], desc: str = "", total: int | None = None,
          min_interval_s: float = 30.0) -> Iterator[T]:
    """Iterate with progress: a tqdm bar interactively; headless, a line at most every `min_interval_s` and,
    with a known total, only after another tenth of it (at most ten lines however long the loop runs)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not is_headless():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=desc, total=total)
        return
    start = last = time.monotonic()
    count, step = 0, max(1, -(-total // 10)) if total else 1
    next_mark = step
    for count, item in enumerate(iterable, 1):  # noqa: B007 - count is used after the loop
        yield item
        now = time.monotonic()
        if now - last >= min_interval_s and count >= next_mark:
            last, next_mark = now, count + step
            of = f"/{total}" if total else ""
            print(f"{desc}: {count}{of} ({now - start:.0f} s)", file=sys.stderr, flush=True)
    of = f"/{total}" if total else ""
    print(f"{desc}: done {count}{of} in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
