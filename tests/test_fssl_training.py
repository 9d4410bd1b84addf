"""FSSL training (graphchallenge.fssl.training): gradients, pruning, training, CPU and GPU."""

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge import fssl
from graphchallenge.engines.exactness import apply_layer, forward_categories
from graphchallenge.errors import GraphChallengeError
from graphchallenge.fssl import ops
from graphchallenge.fssl.training import _Edges, _gradient
from graphchallenge.network import Network
from graphchallenge.validate import validate

from conftest import random_inputs, random_layer

CPU = ops.Backend("cpu")


def _activations(layers, bias, inputs):
    y = sp.csr_matrix(inputs, dtype=np.float64)
    for weights in layers:
        y = apply_layer(y, weights, bias)
    return y.toarray()


# ---------------------------------------------------------------- gradients on the pattern

def _loss(layer, values, inputs, targets, bias, margin):
    z = inputs @ ops.densify(np, layer.rows, layer.cols, values, layer.shape) + bias
    r = ops.set_residual(np, z, targets, margin)
    return float((r * r).sum()) / inputs.shape[0]


@pytest.mark.parametrize("shape, per_column", [((12, 7), 3), ((300, 300), 1)],
                         ids=["dense-path", "sparse-path"])
def test_gradients_on_the_pattern_match_finite_differences(rng, shape, per_column):
    layer = _Edges(CPU, random_layer(rng, *shape, per_column))
    assert ops.is_dense_friendly(shape, layer.values.size) == (shape[0] < 100)
    inputs = rng.uniform(0.0, 3.0, size=(9, shape[0])) * (rng.random((9, shape[0])) < 0.5)
    # Targets of all three kinds: dead (0), saturated (32) and in between.
    targets = rng.choice([0.0, 32.0, 0.7, 1.9], size=(9, shape[1]))
    bias, margin = -0.3, 0.1
    fidelity, gradient = _gradient(CPU, layer, layer.values, inputs, targets, None, bias, margin, 9)
    assert fidelity == pytest.approx(_loss(layer, layer.values, inputs, targets, bias, margin))
    # The loss is piecewise quadratic: central differences are exact up to
    # rounding wherever no unit crosses a threshold within the step.
    step = 1e-4
    for e in rng.choice(layer.values.size, size=min(40, layer.values.size), replace=False):
        up, down = layer.values.copy(), layer.values.copy()
        up[e] += step
        down[e] -= step
        numeric = (_loss(layer, up, inputs, targets, bias, margin)
                   - _loss(layer, down, inputs, targets, bias, margin)) / (2 * step)
        assert gradient[e] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


# ---------------------------------------------------------------- pruning

def test_pruning_a_zero_group_leaves_outputs_unchanged(rng):
    layers = [random_layer(rng, 40, 30, 4), random_layer(rng, 30, 25, 4), random_layer(rng, 25, 20, 4)]
    # Zero neuron 3's incoming column in layer 1, and neuron 7's outgoing row in layer 3.
    first = layers[0].tocsc()
    first.data[first.indptr[3]:first.indptr[4]] = 0.0
    layers[0] = first.tocsr()
    third = layers[2].tolil()
    third[7, :] = 0.0
    layers[2] = third.tocsr()
    network = Network(layers, -0.3)
    inputs = random_inputs(rng, 200, 40, density=0.2)
    before = _activations(network.layers, -0.3, inputs)
    pruned, kept = fssl.prune_network(network)
    assert 3 not in kept[0] and 7 not in kept[1]
    assert pruned.shapes[0][1] < 30 and pruned.shapes[1][1] < 25
    after = _activations(pruned.layers, -0.3, inputs)
    np.testing.assert_array_equal(after, before[:, kept[-1]])
    assert forward_categories(pruned.layers, -0.3, inputs).tolist() == \
        forward_categories(network.layers, -0.3, inputs).tolist()


def test_pruning_everything_is_a_clear_error(rng):
    layer = random_layer(rng, 10, 6, 2)
    network = Network([layer, random_layer(rng, 6, 4, 2) * 0.0], -0.3)
    with pytest.raises(GraphChallengeError, match="every neuron of layer"):
        fssl.prune_network(network)


# ---------------------------------------------------------------- training

def _small_network(rng, n=48, depth=8):
    return Network([random_layer(rng, n, n, 6) for _ in range(depth)], -0.3, name="small")


def test_lambda_zero_without_pruning_reproduces_the_teacher(rng):
    network = _small_network(rng)
    train = random_inputs(rng, 300, 48, density=0.15)
    fresh = random_inputs(rng, 300, 48, density=0.15)
    expected_train = forward_categories(network.layers, -0.3, train)
    assert 0 < expected_train.size < 300
    # With no margin the teacher's own weights fit their targets exactly, so
    # nothing may move, be pruned or change a category.
    options = fssl.FsslOptions(lam=0.0, epochs=3, finetune_epochs=3, margin=0.0)
    result = fssl.train_fssl(network, train, options)
    assert result.network.shapes == network.shapes
    assert result.network.edges == network.edges
    for inputs in (train, fresh):
        assert forward_categories(result.network.layers, -0.3, inputs).tolist() == \
            forward_categories(network.layers, -0.3, inputs).tolist()


def test_training_prunes_saturated_neurons_and_keeps_the_categories(rng):
    # Column sums of 2.5 make most live rows saturate at 32 within a few
    # layers, as in the real network: deep neurons then hold identical values
    # and most of them are redundant.
    network = Network([random_layer(rng, 32, 32, 4, column_sum=2.5) for _ in range(12)], -0.3)
    train = random_inputs(rng, 300, 32, density=0.15)
    fresh = random_inputs(rng, 300, 32, density=0.15)
    result = fssl.train_fssl(network, train, fssl.FsslOptions(lam=0.003, epochs=40,
                                                                       finetune_epochs=10))
    assert result.network.edges < 0.75 * network.edges
    assert result.history[-1].sparsity > 0.2
    assert result.network.shapes[-1][1] < 16
    assert all(w.data.min() >= 0 for w in result.network.layers)
    for inputs in (train, fresh):
        expected = forward_categories(network.layers, -0.3, inputs)
        assert 50 < expected.size < 280
        quality = validate(forward_categories(result.network.layers, -0.3, inputs), expected)
        assert quality.precision >= 0.97 and quality.recall >= 0.97


def test_bad_training_settings_are_clear_errors(rng):
    network = _small_network(rng, depth=2)
    inputs = random_inputs(rng, 20, 48)
    with pytest.raises(GraphChallengeError, match="lambda"):
        fssl.train_fssl(network, inputs, fssl.FsslOptions(lam=-1.0))
    with pytest.raises(GraphChallengeError, match="negative bias"):
        fssl.train_fssl(Network(network.layers, 0.1), inputs)
    with pytest.raises(GraphChallengeError, match="features"):
        fssl.train_fssl(network, random_inputs(rng, 20, 30))


# ---------------------------------------------------------------- the GPU

@pytest.mark.gpu
def test_gpu_gradients_match_the_cpu(rng):
    try:
        gpu = ops.Backend("gpu")
    except GraphChallengeError as exc:
        pytest.skip(str(exc))
    for shape, per_column in (((12, 7), 3), ((300, 300), 1)):
        weights = random_layer(rng, *shape, per_column)
        inputs = rng.uniform(0.0, 3.0, size=(9, shape[0]))
        targets = rng.choice([0.0, 32.0, 0.7, 1.9], size=(9, shape[1]))
        cpu_layer, gpu_layer = _Edges(CPU, weights), _Edges(gpu, weights)
        cpu_fid, cpu_grad = _gradient(CPU, cpu_layer, cpu_layer.values, inputs, targets, None,
                                      -0.3, 0.1, 9)
        gpu_fid, gpu_grad = _gradient(gpu, gpu_layer, gpu_layer.values, gpu.asarray(inputs),
                                      gpu.asarray(targets), None, -0.3, 0.1, 9)
        assert gpu_fid == pytest.approx(cpu_fid)
        np.testing.assert_allclose(gpu.to_host(gpu_grad), cpu_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
def test_gpu_training_matches_the_cpu(rng):
    try:
        ops.Backend("gpu")
    except GraphChallengeError as exc:
        pytest.skip(str(exc))
    network = Network([random_layer(rng, 32, 32, 4, column_sum=2.5) for _ in range(8)], -0.3)
    train = random_inputs(rng, 200, 32, density=0.15)
    results = {device: fssl.train_fssl(network, train, fssl.FsslOptions(
        lam=0.003, epochs=20, finetune_epochs=5, device=device)) for device in ("cpu", "gpu")}
    cpu, gpu = results["cpu"], results["gpu"]
    assert [k.tolist() for k in gpu.kept] == [k.tolist() for k in cpu.kept]
    for a, b in zip(cpu.network.layers, gpu.network.layers):
        np.testing.assert_allclose(b.toarray(), a.toarray(), rtol=1e-8, atol=1e-10)
