"""Recent response times from every worker, for /diagnostics/performance percentiles.

Each worker keeps its latest samples in memory and a background thread writes them, once a
second when there are new ones, to ``<data dir>/latency/<pid>.bin`` (atomically, by rename).
A reader merges every file's samples from the last ``window_s`` seconds, so any worker
answers for all of them, at most a second behind.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections import deque
from pathlib import Path

from .forksafe import reset_after_fork

FLUSH_EVERY_S = 1.0


class LatencyWindow:
    def __init__(self, directory: Path, window_s: float = 300.0, max_samples: int = 5000):
        self.directory = directory
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._dirty = False
        self._forked()
        reset_after_fork(self, LatencyWindow._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._flushing = False  # one flusher thread per process, started by the first add()

    def add(self, seconds: float) -> None:
        self._samples.append((time.time(), seconds))  # deque.append is atomic
        self._dirty = True
        if not self._flushing:
            self._flushing = True
            threading.Thread(
                target=self._flush_forever, name="waygate-latency", daemon=True
            ).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            flat = array("d")
            for stamp, seconds in list(self._samples):
                flat.append(stamp)
                flat.append(seconds)
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                path = self.directory / f"{os.getpid()}.bin"
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(flat.tobytes())
                os.replace(tmp, path)
            except OSError:
                self._dirty = True  # a full or read-only disk: keep the samples for next time

    def percentiles(self, wanted=(50, 95, 99)) -> dict[str, int | None]:
        """Milliseconds at each percentile over the window, from every worker's file."""
        self.flush()
        cutoff = time.time() - self.window_s
        durations: list[float] = []
        for path in self.directory.glob("*.bin"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)  # an old worker's samples, all outside the window
                    continue
                flat = array("d")
                flat.frombytes(path.read_bytes())
            except (OSError, ValueError):
                continue
            durations.extend(flat[i + 1] for i in range(0, len(flat) - 1, 2) if flat[i] >= cutoff)
        durations.sort()
        result: dict[str, int | None] = {}
        for p in wanted:
            if not durations:
                result[f"p{p}_ms"] = None
                continue
            rank = max(0, min(len(durations) - 1, int(round(p / 100 * len(durations) + 0.5)) - 1))
            result[f"p{p}_ms"] = round(durations[rank] * 1000)
        result["samples"] = len(durations)
        return result
