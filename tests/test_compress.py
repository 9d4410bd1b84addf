"""Exact structural compaction (graphchallenge.compress)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge import compress
from graphchallenge.cli import main
from graphchallenge.engines.reference import ReferenceEngine, forward_categories
from graphchallenge.errors import DataError
from graphchallenge.network import Network
from graphchallenge.validate import validate

from conftest import REPO, dense, radix_like, random_inputs, random_layer


# ---------------------------------------------------------------- small hand-built networks

def test_duplicate_outputs_merge_and_their_rows_fold():
    # Layer 1: outputs 0, 2, 4 share a column, so do 1 and 3; output 5 is alone.
    first = np.zeros((3, 6))
    first[0, [0, 2, 4]] = 0.5
    first[1, [0, 2, 4]] = 0.25
    first[2, [1, 3]] = 1.0
    first[[0, 2], 5] = [0.5, 0.75]
    second = np.array([[0.25, 0.0],
                       [0.5, 0.125],
                       [0.25, 0.0],
                       [0.0, 0.5],
                       [0.125, 0.0],
                       [0.0, 1.0]])
    network = Network([sp.csr_matrix(first), sp.csr_matrix(second)], -0.3)
    result = compress.compact(network)
    assert result.kind == "exact"
    assert result.groups == [[[0, 2, 4], [1, 3], [5]], [[0], [1]]]
    # the surviving columns, representatives in order of their smallest member
    assert dense(result.network.layers[0]).tolist() == first[:, [0, 1, 5]].tolist()
    # rows 0+2+4 and 1+3 of layer 2 summed; row 5 unchanged
    assert dense(result.network.layers[1]).tolist() == [[0.625, 0.0], [0.5, 0.625], [0.0, 1.0]]
    assert result.network.shapes == [(3, 3), (3, 2)]
    assert result.network.origin is network
    changes = result.report.layers
    assert [c.merged for c in changes] == [3, 0]
    assert result.report.original_edges == 10 + 7 and result.report.compact_edges == 5 + 4
    assert result.report.compression_rate == pytest.approx(17 / 9)


def test_folding_reveals_duplicates_in_the_next_layer():
    # Layer 1 outputs 0 and 1 are twins; in layer 2, column 0 reads output 0 and
    # column 1 reads output 1: different columns until the twins' rows are summed.
    first = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    second = sp.csr_matrix(np.array([[0.5, 0.0, 0.0],
                                     [0.0, 0.5, 0.0],
                                     [0.25, 0.25, 1.0]]))
    third = sp.csr_matrix(np.array([[1.0], [1.0], [1.0]]))
    result = compress.compact(Network([first, second, third], -0.3))
    assert result.groups[1] == [[0, 1], [2]]
    assert dense(result.network.layers[1]).tolist() == [[0.5, 0.0], [0.25, 1.0]]
    assert dense(result.network.layers[2]).tolist() == [[2.0], [1.0]]


def test_the_last_layer_merges_and_the_input_width_stays():
    first = sp.csr_matrix(np.array([[1.0, 1.0, 1.0], [0.5, 0.5, 0.0]]))
    result = compress.compact(Network([first], -0.3))
    assert result.groups == [[[0, 1], [2]]]
    assert result.network.n_features == 2 and result.network.n_outputs == 2


@pytest.mark.parametrize("bias", [-0.3, 0.0, 0.5])
def test_never_nonzero_and_dead_end_neurons_go(rng, bias):
    # Layer 1: output 3 has an empty column (always exactly 0, even with a
    # positive bias: the bias lands on structural nonzeros only).
    # Layer 2: output 1 reads only layer-1 output 3, so it is never nonzero either;
    # output 2 has no row in layer 3 (a dead end), and layer-1 output 2 feeds only it.
    first = np.array([[0.5, 0.0, 0.25, 0.0],
                      [0.25, 0.75, 0.0, 0.0],
                      [0.0, 0.5, 0.5, 0.0]])
    second = np.array([[1.0, 0.0, 0.0],
                       [0.5, 0.0, 0.0],
                       [0.0, 0.0, 1.0],
                       [0.0, 2.0, 0.0]])
    third = np.array([[0.5, 0.25], [0.25, 0.0], [0.0, 0.0]])
    network = Network([sp.csr_matrix(m) for m in (first, second, third)], bias)
    result = compress.compact(network)
    assert result.groups == [[[0], [1]], [[0]], [[0], [1]]]
    changes = result.report.layers
    assert [c.never_nonzero for c in changes] == [1, 1, 0]
    assert [c.dead_ends for c in changes] == [1, 1, 0]
    assert dense(result.network.layers[0]).tolist() == first[:, :2].tolist()
    assert dense(result.network.layers[1]).tolist() == [[1.0], [0.5]]
    assert dense(result.network.layers[2]).tolist() == [[0.5, 0.25]]
    inputs = random_inputs(rng, 200, 3, density=0.5)
    expected = forward_categories(network.layers, bias, inputs)
    assert 0 < expected.size
    # removals are bitwise exact: no recheck needed even without the origin
    assert forward_categories(result.network.layers, bias, inputs).tolist() == expected.tolist()


def test_groups_whose_folded_weights_would_round_stay_apart():
    # Outputs 0 and 1 of layer 1 are twins, and so are 2 and 3; but 0.1 + 0.2 is
    # not a double, and 0.75 + -0.75 cancels: neither pair may be merged.
    first = sp.csr_matrix(np.array([[1.0, 1.0, 0.5, 0.5]]))
    second = sp.csr_matrix(np.array([[0.1, 1.0], [0.2, 1.0], [0.75, 1.0], [-0.75, 1.0]]))
    result = compress.compact(Network([first, second], -0.3))
    assert result.groups[0] == [[0], [1], [2], [3]]
    assert result.report.layers[0].left_unmerged == 2
    assert "left unmerged" in result.report.text()


def test_error_free_sums_accept_exact_and_reject_rounded():
    values = np.array([0.1, 0.2, 0.25, 0.5, 1e16, 1.0, -1e16, 3.0])
    starts, lengths = np.array([0, 2, 4, 7]), np.array([2, 2, 3, 1])
    sums, exact = compress._exact_segment_sums(values, starts, lengths)
    assert exact.tolist() == [False, True, True, True]
    # 1e16 + 1 rounds in order, but the exact sum, 1.0, is found by fsum
    assert sums[1:].tolist() == [0.75, 1.0, 3.0]


def test_identical_columns_survive_hash_collisions(monkeypatch):
    matrix = sp.csc_matrix(np.array([[1.0, 1.0, 2.0, 0.0, 1.0],
                                     [0.5, 0.5, 0.5, 0.5, 0.5],
                                     [0.0, 0.0, 0.0, 1.0, 0.0]]))
    expected = [0, 0, 2, 3, 0]
    assert compress._identical_columns(matrix).tolist() == expected
    # every column hashing alike must not merge different columns
    monkeypatch.setattr(compress, "_mix", lambda values: np.zeros_like(values))
    assert compress._identical_columns(matrix).tolist() == expected


def test_a_network_without_duplicates_is_left_unchanged(rng):
    # 10 inputs per column: an empty row (a dead end) is too unlikely to occur
    layers = [random_layer(rng, 40, 40, 10) for _ in range(6)]
    network = Network(layers, -0.3)
    result = compress.compact(network)
    assert result.groups == [[[j] for j in range(40)]] * 6
    for original, compacted in zip(layers, result.network.layers):
        assert compacted.shape == original.shape
        assert (abs(compacted - original) != 0).nnz == 0
    assert result.report.compression_rate == 1.0


def test_nothing_left_is_a_clear_error():
    dead = sp.csr_matrix((4, 3))  # every output of the last layer is always 0
    network = Network([sp.csr_matrix(np.ones((4, 4))), dead], -0.3)
    with pytest.raises(DataError, match="no output .* can be nonzero"):
        compress.compact(network)


# ---------------------------------------------------------------- exactness on generated networks

@pytest.mark.parametrize("width, copies, n_layers, block, values, bias, density", [
    (8, 4, 12, 3, (1.0,), -0.3, 0.12),
    (16, 8, 20, 4, (0.5, 1.0, 1.5), -0.3, 0.12),
    (16, 16, 30, 4, (1.0,), -0.3, 0.2),
    (32, 4, 16, 5, (0.25, 1.0, 1.75), -0.2, 0.12),
])
def test_compacted_radix_networks_give_the_reference_categories(engine, rng, width, copies,
                                                                n_layers, block, values, bias,
                                                                density):
    network = Network(radix_like(rng, width, copies, n_layers, block, values), bias)
    inputs = random_inputs(rng, 400, width * copies, density=density)
    expected = forward_categories(network.layers, bias, inputs)
    assert 0 < expected.size < 400  # the case must discriminate
    result = compress.compact(network)
    assert all(shape[1] <= width for shape in result.network.shapes)
    assert result.report.compression_rate > 2
    assert engine.infer(result.network, inputs).categories.tolist() == expected.tolist()


def test_a_rounding_trap_is_rechecked_against_the_original(engine):
    # Three twins in layer 1 hold fl(0.5 - 0.3) = 0.2 - 2.8e-17; layer 2 adds
    # 0.25, 0.625 and 0.625 of them (1.5 once merged) and subtracts 0.3. The
    # real value is +2.8e-17; the reference's three-term sum rounds it to <= 0
    # (no category) while the merged single term gives > 0.
    inputs = sp.csr_matrix(np.array([[1.0]]))
    network = Network([sp.csr_matrix(np.array([[0.5, 0.5, 0.5]])),
                       sp.csr_matrix(np.array([[0.25], [0.625], [0.625]]))], -0.3)
    assert forward_categories(network.layers, -0.3, inputs).tolist() == []
    result = compress.compact(network)
    assert dense(result.network.layers[1]).tolist() == [[1.5]]
    assert forward_categories(result.network.layers, -0.3, inputs).tolist() == [1]
    answer = engine.infer(result.network, inputs)
    assert answer.categories.tolist() == []
    assert answer.rechecked_rows == 1


# ---------------------------------------------------------------- inputs-aware

def test_inputs_aware_drops_inactive_neurons_and_is_exact_on_its_inputs(rng):
    network = Network([random_layer(rng, 60, 60, 3) for _ in range(8)], -0.3)
    # the images use only the first 30 pixels: what only the others feed stays 0
    inputs = sp.hstack([random_inputs(rng, 150, 30, density=0.2), sp.csr_matrix((150, 30))],
                       format="csr")
    exact = compress.compact(network)
    aware = compress.compact(network, inputs, inputs_aware=True)
    assert aware.kind == "inputs-aware"
    assert aware.network.edges < exact.network.edges
    assert sum(c.inactive for c in aware.report.layers) > 0
    assert aware.exact_only_on == {"count": 150, "inputs_sha256": compress.layer_digest(inputs)}
    expected = forward_categories(network.layers, -0.3, inputs)
    assert ReferenceEngine().infer(aware.network, inputs).categories.tolist() == expected.tolist()
    with pytest.raises(ValueError, match="needs the inputs"):
        compress.compact(network, inputs_aware=True)
    with pytest.raises(DataError, match="features"):
        compress.compact(network, inputs[:, :30], inputs_aware=True)


# ---------------------------------------------------------------- the real network

@pytest.fixture(scope="module")
def real_compaction(real_challenge):
    return compress.compact(real_challenge.network)


def test_real_network_compacts_20x_to_at_most_64_neurons(real_compaction):
    report = real_compaction.report
    assert all(shape[1] <= 64 for shape in real_compaction.network.shapes)
    assert real_compaction.network.n_features == 1024
    assert report.original_edges == 120 * 32768
    assert report.compression_rate >= 20
    # SPEC.md section 3: 64 (or 32) distinct neurons per layer, groups of 16 (or 32)
    for groups in real_compaction.groups:
        assert {len(g) for g in groups} in ({16}, {32})
        assert sorted(m for g in groups for m in g) == list(range(1024))


def test_real_compact_network_passes_on_every_engine(engine, real_compaction, real_challenge):
    result = engine.infer(real_compaction.network, real_challenge.inputs)
    assert validate(result.categories, real_challenge.truth).passed


def test_compress_then_run_on_the_real_challenge(real_data_dir, tmp_path, capsys):
    out = tmp_path / "n1024-compact"
    plot = tmp_path / "compact.png"
    code = main(["compress", "--neurons", "1024", "--layers", "120", "--data-dir",
                 str(real_data_dir), "--out", str(out), "--json", "--plot", str(plot)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("original_edges", "compact_edges", "compression_rate", "seconds", "layers"):
        assert key in report
    assert report["original_edges"] == 3932160 and report["compression_rate"] >= 20
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = main(["run", "--neurons", "1024", "--layers", "120", "--data-dir", str(real_data_dir),
                 "--network", str(out), "--engine", "reference", "--tile", "2", "--json"])
    run = json.loads(capsys.readouterr().out)
    assert code == 0 and run["passed"] is True and run["n_categories"] == 38
    assert run["edges"] == 3932160 and run["network_edges"] == report["compact_edges"]


def test_inputs_aware_cli_is_labelled(real_data_dir, tmp_path):
    out = tmp_path / "aware"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "graphchallenge", "compress", "--neurons", "1024",
                           "--layers", "120", "--data-dir", str(real_data_dir), "--out", str(out),
                           "--inputs-aware", "--inputs", "600"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "exact ONLY on the 600 inputs" in proc.stderr and "exact ONLY" in proc.stdout
    manifest = compress.read_manifest(out)
    assert manifest["kind"] == "inputs-aware"
    assert manifest["exact_only_on"]["count"] == 600
    assert manifest["exact_only_on"]["file"] == "sparse-images-1024.tsv.gz"


def test_cli_errors_are_one_line(real_data_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "graphchallenge", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.returncode, proc.stderr

    base = ["--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir]
    code, err = cli("compress", *base, "--out", tmp_path / "c", "--inputs", 10)
    assert code == 2 and "--inputs needs --inputs-aware" in err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, err = cli("compress", *base, "--out", tmp_path / "taken")
    assert code == 2 and "not a compact-network folder" in err
    code, err = cli("compress", "--neurons", 1024, "--layers", 120, "--data-dir", tmp_path / "none",
                    "--out", tmp_path / "c")
    assert code == 2 and "does not exist" in err
    code, err = cli("run", *base, "--network", tmp_path / "taken")
    assert code == 2 and "no manifest.json" in err
