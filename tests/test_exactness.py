"""The exactness machinery: the rounding-band arithmetic every fast engine relies on."""

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge.catalog import YMAX
from graphchallenge.engines import exactness
from graphchallenge.network import Network

from conftest import random_inputs, random_layer


def test_constants_of_a_challenge_like_layer():
    layer = sp.csr_matrix(np.kron(np.ones((2, 2)), np.eye(16)) / 16)  # 2 terms of 1/16 a column
    assert exactness.layer_constants(layer) == (pytest.approx(2 / 16), 2)
    negative = sp.csr_matrix(np.array([[0.5, 0.0], [-1.5, 0.25]]))
    assert exactness.layer_constants(negative) == (pytest.approx(2.0), 2)


def test_error_recursion_matches_the_formula():
    u = 2.0 ** -53
    g = 33 * u / (1 - 33 * u)
    expected = 2.0 * 1e-12 + g * (2.0 * (YMAX + 1e-12) + 0.3)
    assert exactness.next_error(1e-12, 2.0, 32, -0.3) == pytest.approx(expected, rel=1e-15)
    assert exactness.band(0.0, 2.0, 32, -0.3) == pytest.approx(
        2 * exactness.next_error(0.0, 2.0, 32, -0.3))
    # float32 rounds 2**29 times coarser
    assert (exactness.next_error(0.0, 2.0, 32, -0.3, np.float32)
            / exactness.next_error(0.0, 2.0, 32, -0.3)) == pytest.approx(2.0 ** 29, rel=1e-5)


def test_the_band_covers_a_real_reassociation():
    # Sum the same terms in two orders: the difference stays inside the band.
    rng = np.random.default_rng(3)
    terms = rng.uniform(0, YMAX, 32) / 16
    forward, backward = 0.0, 0.0
    for t in terms:
        forward += t
    for t in terms[::-1]:
        backward += t
    assert abs(forward - backward) <= exactness.band(0.0, 2.0, 32, 0.0)


def test_derived_networks_take_the_larger_constants(rng):
    original = Network([random_layer(rng, 12, 12, per_column=8) for _ in range(2)], -0.3)
    small = Network([random_layer(rng, 12, 12, per_column=2, column_sum=1.0) for _ in range(2)],
                    -0.3, origin=original)
    assert exactness.original_constants(original) == [None, None]
    assert [c[1] for c in exactness.original_constants(small)] == [8, 8]
    for _, growth, max_terms in exactness.paired_constants(small):
        assert max_terms == 8 and growth == pytest.approx(2.0)
    other_depth = Network(small.layers[:1], -0.3, origin=original)
    assert exactness.original_constants(other_depth) == [None]
    assert exactness.widen(1.0, 2, None) == (1.0, 2)
    assert exactness.widen(1.0, 2, (0.5, 9)) == (1.0, 9)


def test_recheck_decides_the_flagged_rows_with_the_reference_on_the_original(rng):
    original = Network([random_layer(rng, 12, 12, per_column=4) for _ in range(3)], -0.3)
    inputs = random_inputs(rng, 40, 12, density=0.3)
    truth = exactness.forward_categories(original.layers, -0.3, inputs)
    assert 3 < truth.size < 37
    # A derived network whose own layers would give no category at all.
    derived = Network([layer * 0.0 for layer in original.layers], -0.3, origin=original)
    wrong = np.setxor1d(truth, [1, 2, 3])  # a fast engine wrong about rows 0, 1 and 2
    fixed = exactness.recheck(derived, inputs, wrong, [2, 0, 1, 2])
    assert fixed.tolist() == truth.tolist() and fixed.dtype == np.int64
    # Rows not flagged keep the fast engine's verdict.
    only_first = exactness.recheck(derived, inputs, wrong, [0])
    assert only_first.tolist() == np.setxor1d(truth, [2, 3]).tolist()
    assert exactness.recheck(derived, inputs, wrong, []).tolist() == wrong.tolist()


def test_rows_at_32_for_good_leave_the_reference_early(rng):
    class Counted:
        """A layer that notes how many rows it multiplies."""

        def __init__(self, weights, seen):
            self.weights, self.seen = weights, seen

        def __rmatmul__(self, y):
            self.seen.append(y.shape[0])
            return y @ self.weights

    strong = [random_layer(rng, 30, 30, 4, weight=1.0) for _ in range(12)]
    inputs = random_inputs(rng, 80, 30, density=0.3)
    expected = exactness.forward_categories(strong, -0.3, inputs)
    assert 10 < expected.size < 80
    seen = []
    counted = [Counted(weights, seen) for weights in strong]
    settled = exactness.forward_categories(counted, -0.3, inputs, settled_after=[True] * 12)
    assert settled.tolist() == expected.tolist()
    assert seen[-1] < seen[0]  # rows at 32 stopped being computed
    # Told nothing, every live row goes through every layer.
    seen.clear()
    assert exactness.forward_categories(counted, -0.3, inputs).tolist() == expected.tolist()
    assert len(seen) == 12
