"""The reference engine against hand-computed answers (MATLAB inferenceReLUvec semantics)."""

import numpy as np
import scipy.sparse as sp

from graphchallenge.engines.reference import ReferenceEngine, apply_layer, forward_categories
from graphchallenge.network import Network

from conftest import random_inputs, random_layer


def test_bias_relu_clamp_and_1_based_categories():
    inputs = sp.csr_matrix(np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]]))
    w1 = sp.csr_matrix(np.array([[40.0, 0, 0], [0, -1.0, 0.25], [0, 0, 0]]))
    w2 = sp.identity(3, format="csr")
    bias = 0.5  # positive on purpose: a dense "add to everything" would wake row 3
    y1 = apply_layer(sp.csr_matrix(inputs), w1, bias)
    assert y1.toarray().tolist() == [[32.0, 0, 0], [0, 0, 0.75], [0, 0, 0]]
    y2 = apply_layer(y1, w2, bias)
    assert y2.toarray().tolist() == [[32.0, 0, 0], [0, 0, 1.25], [0, 0, 0]]
    result = ReferenceEngine().infer(Network([w1, w2], bias), inputs)
    assert result.categories.tolist() == [1, 2]
    assert result.live_rows == [2, 2]


def test_values_that_cancel_get_no_bias():
    # Y @ W = 1 - 1 = 0: MATLAB's logical(Z) is false there, so no bias is added.
    inputs = sp.csr_matrix(np.array([[1.0, 1.0]]))
    weights = sp.csr_matrix(np.array([[1.0], [-1.0]]))
    assert forward_categories([weights], 0.5, inputs).tolist() == []
    assert forward_categories([weights], 0.5, sp.csr_matrix(np.array([[1.0, 0.0]]))).tolist() == [1]


def test_real_challenge_passes_with_the_published_survival_curve(real_challenge):
    from graphchallenge.validate import validate

    result = ReferenceEngine().infer(real_challenge.network, real_challenge.inputs)
    assert validate(result.categories, real_challenge.truth).passed
    assert result.categories.size == 19
    # SPEC.md section 3: live rows per layer on the first 1200 real images.
    assert result.live_rows[:6] == [1098, 786, 415, 196, 98, 56]
    assert result.live_rows[7] == 22 and set(result.live_rows[15:]) == {19}


def test_the_reference_stops_once_every_row_is_zero(rng):
    class Unreadable:
        """A layer that must not be reached."""

        def __rmatmul__(self, other):
            raise AssertionError("a layer after every row died was computed")

    dying = random_layer(rng, 20, 20, 2, weight=0.01)
    inputs = random_inputs(rng, 30, 20)
    assert forward_categories([dying, Unreadable(), Unreadable()], -0.3, inputs).size == 0
