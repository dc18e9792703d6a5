"""How the input pipeline keeps up: batches per second, the share of time spent waiting for data, memory.

MonitoredLoader wraps any iterable of batches and times each `next()`. Between
two calls of `step_fields()` (the engine makes one per optimizer step) it reports

    data_wait_share        time blocked in next() / wall time since the previous call (0: data is never
                           the bottleneck; near 1: the model waits for the loader)
    data_batches_per_second  batches delivered / wall time
    data_rss_mb            resident memory of this process plus its DataLoader workers (shared pages
                           count once per process), refreshed at most every RSS_REFRESH_SECONDS
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

RSS_REFRESH_SECONDS = 5.0  # listing child processes costs milliseconds; not every step


def loader_rss_mb() -> float:
    """Resident memory of this process and its children (DataLoader workers), in MiB."""
    import psutil

    process = psutil.Process()
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # a worker that just exited
            continue
    return total / 2**20


class MonitoredLoader:
    """Iterates `loader` and measures the wait for each batch; `step_fields()` reports since its last call."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self._wait = 0.0
        self._batches = 0
        self._since = time.perf_counter()
        self._rss: tuple[float, float] | None = None  # (measured at, MiB)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.loader)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self._wait += time.perf_counter() - started
            self._batches += 1
            yield batch

    def step_fields(self) -> dict[str, float]:
        """Wait share, batches/s and memory since the previous call; the counters restart."""
        now = time.perf_counter()
        elapsed = max(now - self._since, 1e-9)
        if self._rss is None or now - self._rss[0] >= RSS_REFRESH_SECONDS:
            self._rss = (now, loader_rss_mb())
        fields = {"data_wait_share": round(min(self._wait / elapsed, 1.0), 4),
                  "data_batches_per_second": round(self._batches / elapsed, 3), "data_rss_mb": round(self._rss[1], 1)}
        self._wait, self._batches, self._since = 0.0, 0, now
        return fields
