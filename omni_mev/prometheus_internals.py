"""Every use of prometheus_client's private internals, in one place.

The hot path writes histograms in bulk, stamps "mostrecent" gauges with the
prediction's time, and avoids a getpid() per metric write in multiprocess
mode (docs/benchmarks.md measured each). The public API offers none of these,
so they reach into prometheus_client's objects: `Histogram._upper_bounds`,
`._sum`, `._buckets`, a gauge's `._value.set(value, timestamp=...)`, and the
module-level `values.ValueClass` swapped for a MultiProcessValue with a
cheaper process identifier. setup.cfg pins the releases this was tested with
(`prometheus-client>=0.26,<0.27`), and tests/test_prometheus_internals.py fails
loudly, naming the attribute, on a release that changed them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import values

TESTED_RELEASES = ">=0.26,<0.27"


def use_multiprocess_values(process_identifier: Callable[[], int]) -> None:
    """Metric values created from now on write to the multiprocess files, asking `process_identifier` which
    process they are in (instead of os.getpid(), a system call per write)."""
    values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)


def bucket_bounds(histogram: Any) -> list[float]:
    """A histogram's upper bounds, +Inf last."""
    return histogram._upper_bounds


def add_observations(histogram: Any, total: float, counts: Sequence[int]) -> None:
    """Add observations to a histogram as observe() would: `total` to its sum, counts[i] to bucket i (the
    first bucket whose bound is >= the value)."""
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, counts):
        if count:
            bucket.inc(count)


def set_with_timestamp(gauge: Any, value: float, timestamp: float) -> None:
    """A "mostrecent" gauge's value, as of `timestamp` (the moment it describes, not the moment it is written)."""
    gauge._value.set(value, timestamp=timestamp)
