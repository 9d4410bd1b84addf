"""The same checks on every engine available here (GPU engines carry the gpu marker)."""

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge.engines.reference import forward_categories
from graphchallenge.network import Network
from graphchallenge.validate import validate

from conftest import random_inputs, random_layer


def test_real_data_passes(engine, real_challenge):
    result = engine.infer(real_challenge.network, real_challenge.inputs)
    assert validate(result.categories, real_challenge.truth).passed
    assert result.categories.size == 19
    assert result.infer_seconds > 0


@pytest.mark.parametrize("n, layers, per_column, bias", [
    (64, 5, 4, -0.3), (128, 12, 8, -0.2), (32, 30, 3, -0.3), (64, 30, 4, -0.1), (256, 40, 16, -0.05)])
def test_random_networks_match_the_reference(engine, rng, n, layers, per_column, bias):
    network = Network([random_layer(rng, n, n, per_column) for _ in range(layers)], bias)
    inputs = random_inputs(rng, 300, n, density=0.15)
    expected = forward_categories(network.layers, bias, inputs)
    assert 0 < expected.size < 300  # the case must discriminate
    assert engine.infer(network, inputs).categories.tolist() == expected.tolist()


def test_rectangular_layers(engine, rng):
    shapes = [(48, 20), (20, 33), (33, 5)]
    network = Network([random_layer(rng, a, b, 4) for a, b in shapes], -0.2)
    inputs = random_inputs(rng, 200, 48, density=0.2)
    expected = forward_categories(network.layers, -0.2, inputs)
    assert engine.infer(network, inputs).categories.tolist() == expected.tolist()


def test_all_rows_die(engine, rng):
    network = Network([random_layer(rng, 16, 16, 2, weight=1 / 64) for _ in range(4)], -0.3)
    inputs = random_inputs(rng, 50, 16, density=0.3)
    result = engine.infer(network, inputs)
    assert result.categories.size == 0


def test_rows_saturate_at_32(engine, rng):
    network = Network([random_layer(rng, 16, 16, 4, weight=1.0) for _ in range(40)], -0.3)
    inputs = random_inputs(rng, 50, 16, density=0.5)
    expected = forward_categories(network.layers, -0.3, inputs)
    assert expected.size > 0
    assert engine.infer(network, inputs).categories.tolist() == expected.tolist()


def test_empty_input_rows_are_not_categories(engine, rng):
    network = Network([random_layer(rng, 16, 16, 4, weight=0.5)], -0.1)
    inputs = sp.csr_matrix((3, 16))
    assert engine.infer(network, inputs).categories.size == 0


# Cases a review's differential fuzzing found (each once gave the wrong answer on the cpu
# engine's gather path; the first and the last on its scatter path too, or on others).

@pytest.mark.parametrize("first_layer", ["scatter", "gather"])
def test_inputs_far_above_32_get_a_bound_that_covers_them(engine, monkeypatch, first_layer):
    # scipy sums 1e16 + 1 - 1e16 + 1 = 1 in order; four terms paired give 0. A bound
    # that takes inputs to be at most 32 would trust either answer.
    from graphchallenge.engines import cpu

    monkeypatch.setattr(cpu, "_scatter_pays", lambda *args: first_layer == "scatter")
    network = Network([sp.csr_matrix(np.ones((4, 1)))], -0.5)
    inputs = sp.csr_matrix(np.array([[1e16, 1.0, -1e16, 1.0], [3e3, 0.0, 0.0, 0.0]]))
    assert forward_categories(network.layers, -0.5, inputs).tolist() == [1, 2]
    assert engine.infer(network, inputs).categories.tolist() == [1, 2]


@pytest.mark.parametrize("first_layer", ["scatter", "gather"])
def test_inputs_read_with_their_one_value_stored_once(engine, rng, tmp_path, monkeypatch,
                                                      first_layer):
    # A binary input file whose pixels all hold 1 is read as a stride-0 view of one number.
    from graphchallenge import io
    from graphchallenge.engines import cpu

    monkeypatch.setattr(cpu, "_scatter_pays", lambda *args: first_layer == "scatter")
    network = Network([random_layer(rng, 64, 64, 4) for _ in range(8)], -0.3)
    inputs = random_inputs(rng, 300, 64, density=0.15)
    inputs.data[:] = 1.0
    path = tmp_path / "sparse-images-64.csr"
    io.save_csr(path, inputs)
    read = io.read_inputs(path, 64)
    assert read.data.strides == (0,) and read.nnz == inputs.nnz
    expected = forward_categories(network.layers, -0.3, inputs)
    assert 0 < expected.size < 300
    assert engine.infer(network, read).categories.tolist() == expected.tolist()
    assert engine.infer(network, read[:150]).categories.tolist() == \
        expected[expected <= 150].tolist()


@pytest.mark.parametrize("first_layer", ["scatter", "gather"])
def test_an_input_entry_given_twice_counts_twice(engine, monkeypatch, first_layer):
    from graphchallenge.engines import cpu

    monkeypatch.setattr(cpu, "_scatter_pays", lambda *args: first_layer == "scatter")
    network = Network([sp.csr_matrix(np.ones((2, 1)))], -0.75)
    # Row 1 holds 0.5 twice at column 0 (so 1.0, as MATLAB's sparse() would add them).
    inputs = sp.csr_matrix((np.array([0.5, 0.5, 0.5]), np.array([0, 0, 1]), np.array([0, 2, 3])),
                           shape=(2, 2))
    assert not inputs.has_canonical_format
    before = inputs.data.copy()
    assert forward_categories(network.layers, -0.75, inputs).tolist() == [1]
    assert engine.infer(network, inputs).categories.tolist() == [1]
    assert (inputs.data == before).all() and not inputs.has_canonical_format  # not mutated


def test_subnormal_weights_and_bias_are_covered(engine):
    # With fused multiply-adds u * 0.5 + u rounds to 2u, in scipy's two steps to u:
    # z + bias is u or 0. Relative rounding alone is no bound in the subnormal range.
    tiny = 2.0**-1074
    network = Network([sp.csr_matrix(np.array([[tiny], [tiny]]))], -tiny)
    inputs = sp.csr_matrix(np.array([[1.0, 0.5]]))
    assert forward_categories(network.layers, -tiny, inputs).tolist() == []
    assert engine.infer(network, inputs).categories.tolist() == []
