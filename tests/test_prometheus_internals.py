"""omni_mev/prometheus_internals.py against the installed prometheus_client: a release that changed the private
attributes it uses fails here, by name, before a worker writes wrong metrics."""
from __future__ import annotations

import inspect
from importlib.metadata import version

from packaging.specifiers import SpecifierSet
from prometheus_client import CollectorRegistry, Gauge, Histogram, values

from omni_mev import prometheus_internals

BUCKETS = (0.1, 0.5, 1.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples
            if not s.name.endswith("_created")}


def test_the_installed_release_is_one_the_adapter_was_tested_with():
    installed = version("prometheus-client")
    assert installed in SpecifierSet(prometheus_internals.TESTED_RELEASES), (
        f"prometheus-client {installed} is outside {prometheus_internals.TESTED_RELEASES}: check "
        "omni_mev/prometheus_internals.py against it, then widen the range in setup.cfg and the module")


def test_bulk_observations_equal_observe():
    observed, added = CollectorRegistry(), CollectorRegistry()
    one = Histogram("h", "by observe", buckets=BUCKETS, registry=observed)
    bulk = Histogram("h", "in bulk", buckets=BUCKETS, registry=added)
    readings = [0.05, 0.1, 0.3, 0.7, 2.0, 9.0]
    for reading in readings:
        one.observe(reading)
    bounds = prometheus_internals.bucket_bounds(bulk)
    assert bounds == [0.1, 0.5, 1.0, float("inf")]
    counts = [sum(1 for r in readings if (i == 0 or r > bounds[i - 1]) and r <= bound) for i, bound in enumerate(bounds)]
    prometheus_internals.add_observations(bulk, sum(readings), counts)
    assert _samples(added) == _samples(observed)


def test_a_gauge_is_set_through_its_private_value():
    """(The timestamp is kept only by the multiprocess value class, which this test does not read.)"""
    gauge = Gauge("g", "latest", registry=CollectorRegistry())
    prometheus_internals.set_with_timestamp(gauge, 0.42, 1_700_000_000.0)
    (sample,) = [s for m in gauge.collect() for s in m.samples]
    assert sample.value == 0.42


def test_multiprocess_values_take_a_process_identifier():
    assert "process_identifier" in inspect.signature(values.MultiProcessValue).parameters
