"""The roofline: the CPU engine's counted work per group of layers against the machine's roofs."""

import numpy as np
import pytest

from graphchallenge import roofline
from graphchallenge.engines import cpu
from graphchallenge.network import Network

from conftest import random_inputs, random_layer

pytestmark = pytest.mark.skipif(not cpu.CpuEngine.availability()[0],
                                reason="numba is not installed")


def test_groups_cover_every_layer_once():
    for n_layers in (1, 6, 7, 20, 21, 120):
        groups = roofline._groups(n_layers)
        covered = [k for start, stop in groups for k in range(start, stop)]
        assert covered == list(range(n_layers))


def test_rows_add_up_to_the_engines_own_counts(rng):
    network = Network([random_layer(rng, 64, 64, 4) for _ in range(25)], -0.3)
    inputs = random_inputs(rng, 400, 64, density=0.2)
    limits = roofline.MachineLimits(threads=2, multiply_adds_per_second=2e10,
                                    bytes_per_second=2e10)
    engine = cpu.CpuEngine()
    report = roofline.roofline(network, inputs, engine=engine, limits=limits, repeat=1)
    assert [row.layers for row in report.rows] == ["1", "2", "3", "4", "5", "6", "7-20", "21-25"]
    counted = engine.infer(network, inputs).details["multiply_adds"]
    assert sum(row.multiply_adds for row in report.rows) == sum(counted)
    for row in report.rows:
        if row.seconds > 0:
            assert row.peak_fraction == pytest.approx(
                row.multiply_adds / row.seconds / limits.per_core_multiply_adds)
    assert "| 7-20 |" in report.text()


def test_the_machine_roofs_are_measured_and_positive():
    limits = roofline.measure_machine(threads=1, triad_bytes=8 * 2**20, repeat=1)
    assert limits.threads == 1
    assert np.isfinite(limits.multiply_adds_per_second) and limits.multiply_adds_per_second > 1e8
    assert np.isfinite(limits.bytes_per_second) and limits.bytes_per_second > 1e8
