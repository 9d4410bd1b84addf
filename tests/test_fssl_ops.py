"""FSSL array kernels (graphchallenge.fssl.ops): the proximal step, residuals, products."""

import numpy as np

from graphchallenge.fssl import ops


# ---------------------------------------------------------------- the proximal step

def test_proximal_step_zeroes_a_group_exactly_when_its_norm_is_below_the_threshold():
    # Groups 0..3 with norms 5, 0.5, 2 (= the threshold) and 2.5.
    values = np.array([3.0, 4.0, 0.3, 0.4, 2.0, 1.5, 2.0])
    groups = np.array([0, 0, 1, 1, 2, 3, 3])
    out = ops.proximal_group_step(np, values, groups, 4, 2.0, nonnegative=False)
    # Norm 5 > 2: scaled by 1 - 2/5 = 0.6; norm 2.5: by 1 - 2/2.5 = 0.2.
    np.testing.assert_allclose(out, [1.8, 2.4, 0.0, 0.0, 0.0, 0.3, 0.4])
    assert out[2] == 0.0 and out[3] == 0.0 and out[4] == 0.0  # exactly, not nearly
    # Per-group thresholds, and the non-negativity projection before the shrink.
    out = ops.proximal_group_step(np, np.array([-1.0, 3.0, 4.0]), np.array([0, 1, 1]), 2,
                                  np.array([0.0, 6.0]))
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])
    out = ops.proximal_group_step(np, np.array([-1.0, 3.0, 4.0]), np.array([0, 1, 1]), 2,
                                  np.array([0.0, 2.5]))
    np.testing.assert_allclose(out, [0.0, 1.5, 2.0])


def test_set_residual_asks_only_for_the_right_side_of_a_threshold():
    z = np.array([-1.0, 0.5, 10.0, 12.0, 40.0, 31.0])
    t = np.array([0.0, 0.0, 10.5, 12.0, 32.0, 32.0])
    r = ops.set_residual(np, z, t, margin=0.25)
    # dead: z <= -0.25 asked; middle: z = t; saturated: z >= 32.25 asked.
    np.testing.assert_allclose(r, [0.0, 0.75, -0.5, 0.0, 0.0, -1.25])


# ---------------------------------------------------------------- products

def test_sampled_product_is_the_dense_product_on_the_pattern(rng):
    rows = rng.integers(0, 500, size=400)
    cols = rng.integers(0, 400, size=400)
    x, g = rng.random((30, 500)), rng.random((30, 400))
    np.testing.assert_allclose(ops.sampled_product(np, x, g, rows, cols, (500, 400)),
                               (x.T @ g)[rows, cols])
