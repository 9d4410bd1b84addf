"""``graphchallenge bench``: engines side by side on the same data."""

import json

import numpy as np
import pytest

from graphchallenge import bench, engines, synthetic
from graphchallenge.cli import main
from graphchallenge.engines.reference import forward_categories
from graphchallenge.errors import EngineUnavailable
from graphchallenge.network import Challenge, Network

from conftest import random_inputs, random_layer


@pytest.fixture(scope="module")
def small_challenge():
    rng = np.random.default_rng(5)
    network = Network([random_layer(rng, 64, 64, 4) for _ in range(10)], -0.2, name="small")
    inputs = random_inputs(rng, 150, 64, density=0.15)
    truth = forward_categories(network.layers, network.bias, inputs)
    assert 0 < truth.size < 150
    return Challenge(None, network, inputs, truth)


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory):
    """A small generated challenge in the server layout (no real data needed)."""
    root = tmp_path_factory.mktemp("generated")
    synthetic.generate_challenge((1024, 8), n_inputs=120, seed=3, data_dir=root, progress=False)
    return root


def _available_peers():
    return [name for name in bench.PEERS if engines.availability(name)[0]]


def test_every_engine_gets_a_row_that_passes(small_challenge):
    names = ["cpu", "reference", "graphblas"]
    report = bench.bench(small_challenge, names, repeat=3, tile=2)
    assert [row.engine for row in report.rows] == names
    assert report.n_inputs == 300 and report.passed
    edges = small_challenge.network.edges
    fastest = report.fastest_peer
    assert fastest is not None and fastest.engine in _available_peers()
    for row in report.rows:
        if not engines.availability(row.engine)[0]:
            assert row.seconds is None and row.note
            continue
        assert row.passed is True and len(row.times) == 3
        assert row.min_seconds <= row.seconds == sorted(row.times)[1]
        assert row.edges_per_second == pytest.approx(300 * edges / row.seconds)
        assert row.ratio == pytest.approx(fastest.seconds / row.seconds)
        assert row.n_categories == 2 * small_challenge.truth.size
    assert fastest.ratio == 1.0
    peers = [row for row in report.rows if row.engine in bench.PEERS and row.seconds is not None]
    assert all(row.ratio <= 1.0 for row in peers)


def test_a_wrong_truth_fails(small_challenge):
    wrong = Challenge(None, small_challenge.network, small_challenge.inputs,
                      small_challenge.truth[1:])
    report = bench.bench(wrong, ["reference"], repeat=1)
    assert report.rows[0].passed is False and not report.passed
    assert "FAIL" in report.text()


def test_unavailable_engines_are_listed_not_run(small_challenge, monkeypatch):
    real = engines.availability
    monkeypatch.setattr(engines, "availability",
                        lambda name: (False, "not here") if name == "graphblas" else real(name))
    report = bench.bench(small_challenge, ["reference", "graphblas"], repeat=1)
    skipped = report.rows[1]
    assert skipped.engine == "graphblas" and skipped.seconds is None and skipped.note == "not here"
    assert "skipped: not here" in report.text()
    assert report.passed
    with pytest.raises(EngineUnavailable, match="graphblas: not here"):
        bench.bench(small_challenge, ["graphblas"], repeat=1)
    with pytest.raises(EngineUnavailable, match="unknown engine 'fastest'"):
        bench.bench(small_challenge, ["reference", "fastest"], repeat=1)


def test_cli_json_is_one_object(generated_dir, capsys):
    code = main(["bench", "--neurons", "1024", "--layers", "8", "--data-dir", str(generated_dir),
                 "--engines", "cpu,reference", "--repeat", "2", "--tile", "2", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert out.count("\n") == 1
    assert report["passed"] is True and report["n_inputs"] == 240
    assert [row["engine"] for row in report["rows"]] == ["cpu", "reference"]
    assert report["fastest_peer"] == "reference"
    assert report["edges"] == 8 * 32768 and report["machine"]["cpus"] >= 1


def test_cli_table_and_plot(generated_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "bench.png"
    code = main(["bench", "--neurons", "1024", "--layers", "8", "--data-dir", str(generated_dir),
                 "--engines", "reference,cpu", "--repeat", "1", "--inputs", "50",
                 "--plot", str(figure)])
    out = capsys.readouterr().out
    assert code == 0
    assert "PASS" in out and "vs peer" in out and "inputs    50" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_engine_is_one_line(generated_dir, capsys):
    code = main(["bench", "--neurons", "1024", "--layers", "8", "--data-dir", str(generated_dir),
                 "--engines", "nope"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unknown engine 'nope'" in err


def test_truth_from_the_reference_on_the_first_rows(small_challenge, monkeypatch):
    # No truth file: the reference decides the first 60 rows, untimed, and
    # every engine's categories among them must match it.
    untruthful = Challenge(None, small_challenge.network, small_challenge.inputs, None)
    report = bench.bench(untruthful, ["cpu", "reference"], repeat=1, truth_inputs=60)
    assert report.passed and report.truth_source == "reference on first 60 inputs"
    assert "reference on first 60 inputs" in report.text()
    # An engine wrong on one of those rows fails; a wrong row beyond them is not seen.
    cpu = engines.get_engine("cpu")
    truth = set(small_challenge.truth.tolist())
    inside = min(set(range(1, 61)) - truth)
    outside = min(set(range(61, 151)) - truth)

    class OneRowWrong:
        name = "cpu"

        def __init__(self, row):
            self.row = row

        def infer(self, network, inputs, progress=False):
            result = cpu.infer(network, inputs)
            result.categories = np.union1d(result.categories, [self.row])
            return result

    for row, passed in ((inside, False), (outside, True)):
        report = bench.bench(untruthful, ["cpu"], repeat=1, truth_inputs=60,
                             make_engine=lambda name, row=row: OneRowWrong(row))
        assert report.passed is passed


def test_cli_truth_inputs_needs_no_truth_file(generated_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "no-truth"
    shutil.copytree(generated_dir, folder)
    for truth in folder.rglob("*categories*"):
        truth.unlink()
    code = main(["bench", "--neurons", "1024", "--layers", "8", "--data-dir", str(folder),
                 "--engines", "cpu", "--repeat", "1", "--truth-inputs", "50", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"] is True
    assert report["truth_source"] == "reference on first 50 inputs"
