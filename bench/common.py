"""Shared helpers for benchmarks: timing loops and the printed result line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline_value: float
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def line(self) -> str:
        return "%-44s %12.1f %-8s = %6.3f x %s (%.1f %s)" % (
            self.name, self.value, self.unit, self.ratio, self.baseline_name,
            self.baseline_value, self.unit)


def rate(fn: Callable[[], object], seconds: float = 1.0) -> float:
    """Calls per second of ``fn``, measured for about ``seconds``."""
    n, start = 0, time.perf_counter()
    batch = 1
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed
        batch = min(batch * 2, 10_000)
