"""Progress of a long data job: a bar on a terminal, a log line now and then elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0


class Progress:
    """Pairs done and the share of the input read: pairs/s and the time left.

    ``fraction`` is how much of the input is read (0..1): byte offsets, so the time
    left is known before the lines are counted.
    """

    def __init__(self, what: str, bar: bool | None = None) -> None:
        self.what = what
        self.start = self.last_log = time.perf_counter()
        self.pairs = 0
        self.bar: Any = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=what, unit="%", leave=False,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} "
                                       "[{elapsed}<{remaining}]")

    def update(self, pairs: int, fraction: float) -> None:
        self.pairs += pairs
        now = time.perf_counter()
        rate = self.pairs / max(now - self.start, 1e-9)
        if self.bar is not None:
            self.bar.n = round(100 * min(fraction, 1.0), 1)
            self.bar.set_postfix_str(f"{self.pairs:,} pairs, {rate:,.0f} pairs/s", refresh=True)
        elif now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            left = (now - self.start) * (1 - fraction) / fraction if fraction > 0 else 0.0
            log.info("%s: %d pairs, %.0f pairs/s, %.0f%% read, about %.0f s left", self.what,
                     self.pairs, rate, 100 * fraction, left)

    def close(self) -> float:
        """Seconds since the start."""
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.start
