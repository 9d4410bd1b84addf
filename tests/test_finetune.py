"""FSSL fine-tuning: the proximal step, gradients, pruning, training and the pipeline."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge import _fssl_ops as ops
from graphchallenge import compress, finetune, synthetic
from graphchallenge._fssl import _Edges, _gradient
from graphchallenge.cli import main as cli_main
from graphchallenge.engines.reference import apply_layer, forward_categories
from graphchallenge.errors import GraphChallengeError
from graphchallenge.network import Network
from graphchallenge.validate import validate

from conftest import random_inputs, random_layer

CPU = ops.Backend("cpu")


def _activations(layers, bias, inputs):
    y = sp.csr_matrix(inputs, dtype=np.float64)
    for weights in layers:
        y = apply_layer(y, weights, bias)
    return y.toarray()


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


def test_sampled_product_is_the_dense_product_on_the_pattern(rng):
    rows = rng.integers(0, 500, size=400)
    cols = rng.integers(0, 400, size=400)
    x, g = rng.random((30, 500)), rng.random((30, 400))
    np.testing.assert_allclose(ops.sampled_product(np, x, g, rows, cols, (500, 400)),
                               (x.T @ g)[rows, cols])


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
    pruned, kept = finetune.prune_network(network)
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
        finetune.prune_network(network)


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
    options = finetune.FsslOptions(lam=0.0, epochs=3, finetune_epochs=3, margin=0.0)
    result = finetune.train_fssl(network, train, options)
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
    result = finetune.train_fssl(network, train, finetune.FsslOptions(lam=0.003, epochs=40,
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
        finetune.train_fssl(network, inputs, finetune.FsslOptions(lam=-1.0))
    with pytest.raises(GraphChallengeError, match="negative bias"):
        finetune.train_fssl(Network(network.layers, 0.1), inputs)
    with pytest.raises(GraphChallengeError, match="features"):
        finetune.train_fssl(network, random_inputs(rng, 20, 30))


# ---------------------------------------------------------------- baselines

def test_magnitude_prune_keeps_the_budget_and_each_column_sum(rng):
    network = Network([random_layer(rng, 64, 64, 8, weight=1 / 16) for _ in range(3)], -0.3)
    budgets = [100, 64, 7]
    pruned = finetune.magnitude_prune(network, budgets, seed=3)
    assert [w.nnz for w in pruned.layers] == budgets
    for original, kept in zip(network.layers, pruned.layers):
        sums = np.asarray(kept.sum(axis=0)).ravel()
        touched = np.diff(kept.tocsc().indptr) > 0
        np.testing.assert_allclose(sums[touched], np.asarray(original.sum(axis=0)).ravel()[touched])
        assert (kept.multiply(original) != 0).nnz == kept.nnz  # a subset of the pattern
    again = finetune.magnitude_prune(network, budgets, seed=3)
    assert all((a != b).nnz == 0 for a, b in zip(pruned.layers, again.layers))


def test_stratified_split_keeps_the_share_of_categories():
    positive = np.zeros(1000, dtype=bool)
    positive[::50] = True
    train, held_out = finetune.stratified_split(positive, 0.5, seed=1)
    assert np.intersect1d(train, held_out).size == 0
    assert np.union1d(train, held_out).size == 1000
    assert positive[train].sum() == 10 and positive[held_out].sum() == 10
    with pytest.raises(GraphChallengeError, match="train-fraction"):
        finetune.stratified_split(positive, 1.0)


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_challenge(tmp_path_factory):
    """A generated neuron1024 x 8 challenge with 240 inputs."""
    root = tmp_path_factory.mktemp("tiny")
    synthetic.generate_challenge((1024, 8), 240, seed=5, data_dir=root, progress=False)
    return root


def test_a_tiny_run_writes_a_runnable_compact_network(tiny_challenge, tmp_path):
    from graphchallenge import catalog, network as network_mod

    cfg = catalog.config(1024, 8)
    experiment = finetune.FsslExperiment(cfg, tiny_challenge, generated_inputs=100,
                                         engine="reference", timing_tile=1, repeats=1)
    out = tmp_path / "fssl"
    report = experiment.run(finetune.FsslOptions(lam=0.01, epochs=8, finetune_epochs=4), out)
    assert report.edges <= report.compact_edges < report.original_edges
    assert report.heldout["n_truth"] > 0 and report.generated["n_truth"] > 0
    assert report.n_train + report.n_held_out == 240
    assert set(report.timing) == {"original", "compact", "fssl", "unstructured"}
    assert report.unstructured["edges"] == report.edges
    original = network_mod.load_network(cfg, tiny_challenge)
    loaded = compress.load_compact(out, original=original)
    assert loaded.origin is None and loaded.edges == report.edges
    assert compress.read_manifest(out)["kind"] == "fssl"
    # The saved network gives the categories the report scored.
    held_out = experiment.held_out
    got = forward_categories(loaded.layers, loaded.bias, held_out)
    assert got.size == report.heldout["n_categories"]
    json.dumps(report.to_dict())
    assert "layers" in report.text()


def test_starting_from_a_saved_compaction(tiny_challenge, tmp_path):
    from graphchallenge import catalog
    from graphchallenge.errors import DataError

    cfg = catalog.config(1024, 8)
    compact_dir = tmp_path / "compact"
    compress.compress_challenge(cfg, tiny_challenge, compact_dir)
    experiment = finetune.FsslExperiment(cfg, tiny_challenge, network_dir=compact_dir,
                                         generated_inputs=0, engine="reference", timing_tile=1,
                                         repeats=1)
    assert experiment.start.edges == compress.read_manifest(compact_dir)["edges"]
    out = tmp_path / "fssl"
    report = experiment.run(finetune.FsslOptions(lam=0.01, epochs=4, finetune_epochs=2), out)
    assert report.compact_edges == experiment.start.edges and report.generated is None
    # An approximate network is no start: its own activations are not the original's.
    with pytest.raises(DataError, match="not an exact compaction"):
        finetune.FsslExperiment(cfg, tiny_challenge, network_dir=out, generated_inputs=0,
                                engine="reference")


def test_cli_prints_one_json_object_and_bad_input_is_one_line(tiny_challenge, tmp_path, capsys):
    out = tmp_path / "cli"
    status = cli_main(["finetune", "--neurons", "1024", "--layers", "8", "--data-dir",
                       str(tiny_challenge), "--out", str(out), "--epochs", "4",
                       "--finetune-epochs", "2", "--generated-inputs", "0", "--engine", "reference",
                       "--timing-tile", "1", "--repeats", "1", "--json", "--quiet"])
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    for key in ("edges", "neurons", "compression_rate", "train_seconds", "precision", "recall",
                "f1", "speedup_vs_original", "speedup_vs_compact", "speedup_vs_unstructured"):
        assert key in payload
    assert status == (0 if payload["precision"] >= 0.99 and payload["recall"] >= 0.99 else 1)
    assert (out / "manifest.json").is_file()
    status = cli_main(["finetune", "--neurons", "1024", "--layers", "8", "--data-dir",
                       str(tiny_challenge), "--out", str(tmp_path / "bad"), "--train-fraction", "2"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "train-fraction" in err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["finetune", "--neurons", "1024", "--layers", "8", "--out", str(tmp_path / "bad"),
                   "--sweep", "0.001,lots"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "--sweep" in err


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
    results = {device: finetune.train_fssl(network, train, finetune.FsslOptions(
        lam=0.003, epochs=20, finetune_epochs=5, device=device)) for device in ("cpu", "gpu")}
    cpu, gpu = results["cpu"], results["gpu"]
    assert [k.tolist() for k in gpu.kept] == [k.tolist() for k in cpu.kept]
    for a, b in zip(cpu.network.layers, gpu.network.layers):
        np.testing.assert_allclose(b.toarray(), a.toarray(), rtol=1e-8, atol=1e-10)
