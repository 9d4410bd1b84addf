"""The same checks on every engine available here (GPU engines carry the gpu marker)."""

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
