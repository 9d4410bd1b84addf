"""The FSSL experiment (graphchallenge.fssl.experiment): baselines, splits, end to end, the CLI."""

import json

import numpy as np
import pytest

from graphchallenge import compress, derived, fssl, synthetic
from graphchallenge.cli import main as cli_main
from graphchallenge.engines.exactness import forward_categories
from graphchallenge.errors import GraphChallengeError
from graphchallenge.network import Network

from conftest import random_layer


# ---------------------------------------------------------------- baselines

def test_magnitude_prune_keeps_the_budget_and_each_column_sum(rng):
    network = Network([random_layer(rng, 64, 64, 8, weight=1 / 16) for _ in range(3)], -0.3)
    budgets = [100, 64, 7]
    pruned = fssl.magnitude_prune(network, budgets, seed=3)
    assert [w.nnz for w in pruned.layers] == budgets
    for original, kept in zip(network.layers, pruned.layers):
        sums = np.asarray(kept.sum(axis=0)).ravel()
        touched = np.diff(kept.tocsc().indptr) > 0
        np.testing.assert_allclose(sums[touched], np.asarray(original.sum(axis=0)).ravel()[touched])
        assert (kept.multiply(original) != 0).nnz == kept.nnz  # a subset of the pattern
    again = fssl.magnitude_prune(network, budgets, seed=3)
    assert all((a != b).nnz == 0 for a, b in zip(pruned.layers, again.layers))


def test_stratified_split_keeps_the_share_of_categories():
    positive = np.zeros(1000, dtype=bool)
    positive[::50] = True
    train, held_out = fssl.stratified_split(positive, 0.5, seed=1)
    assert np.intersect1d(train, held_out).size == 0
    assert np.union1d(train, held_out).size == 1000
    assert positive[train].sum() == 10 and positive[held_out].sum() == 10
    with pytest.raises(GraphChallengeError, match="train-fraction"):
        fssl.stratified_split(positive, 1.0)


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
    experiment = fssl.FsslExperiment(cfg, tiny_challenge, generated_inputs=100,
                                         engine="reference", timing_tile=1, repeats=1)
    out = tmp_path / "fssl"
    report = experiment.run(fssl.FsslOptions(lam=0.01, epochs=8, finetune_epochs=4), out)
    assert report.edges <= report.compact_edges < report.original_edges
    assert report.heldout["n_truth"] > 0 and report.generated["n_truth"] > 0
    assert report.n_train + report.n_held_out == 240
    assert set(report.timing) == {"original", "compact", "fssl", "unstructured"}
    assert report.unstructured["edges"] == report.edges
    original = network_mod.load_network(cfg, tiny_challenge)
    loaded = derived.load(out, original=original)
    assert loaded.origin is None and loaded.edges == report.edges
    assert derived.read_manifest(out)["kind"] == "fssl"
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
    experiment = fssl.FsslExperiment(cfg, tiny_challenge, network_dir=compact_dir,
                                         generated_inputs=0, engine="reference", timing_tile=1,
                                         repeats=1)
    assert experiment.start.edges == derived.read_manifest(compact_dir)["edges"]
    out = tmp_path / "fssl"
    report = experiment.run(fssl.FsslOptions(lam=0.01, epochs=4, finetune_epochs=2), out)
    assert report.compact_edges == experiment.start.edges and report.generated is None
    # An approximate network is no start: its own activations are not the original's.
    with pytest.raises(DataError, match="not an exact compaction"):
        fssl.FsslExperiment(cfg, tiny_challenge, network_dir=out, generated_inputs=0,
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
