"""The results table: one child process per row, resumable, failures kept in their rows."""

import csv
import json

import pytest

from graphchallenge import catalog, runner, synthetic, table
from graphchallenge.cli import main
from graphchallenge.engines.base import Engine, InferenceResult
from graphchallenge.errors import DataError

import numpy as np

SMALL = [catalog.config(1024, 4), catalog.config(1024, 6)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """neuron1024 at depths 4 and 6, 64 inputs, generated in binary form (seed 4)."""
    root = tmp_path_factory.mktemp("tabledata")
    for cfg in SMALL:
        synthetic.generate_challenge(cfg, 64, seed=4, data_dir=root, progress=False,
                                     format="binary")
    return root


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_rows_are_measured_in_children_and_written_as_they_finish(data, tmp_path):
    out = tmp_path / "results.csv"
    report = table.run_table(SMALL, data, ["reference"], out_csv=out)
    assert report.ran == 2 and report.reused == 0 and report.passed
    for row, cfg in zip(report.rows, SMALL):
        assert (row.neurons, row.layers, row.edges, row.inputs) == (1024, cfg.layers, cfg.edges, 64)
        assert row.result == "PASS" and row.truth == "generated" and row.engine == "reference"
        # The child's own peak: a Python with numpy and scipy, well under a GB.
        assert 0.02 < row.peak_rss_gb < 2
        assert row.edges_per_second == pytest.approx(64 * cfg.edges / row.infer_seconds)
    written = _rows(out)
    assert [tuple(r) for r in written] == [table.COLUMNS] * 2
    assert [(r["layers"], r["result"]) for r in written] == [("4", "PASS"), ("6", "PASS")]
    assert table.read_csv(out) == report.rows


def test_a_second_call_resumes_and_runs_nothing(data, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    first = table.run_table(SMALL[:1], data, ["reference"], out_csv=out)
    calls = []
    real_run_child = table.run_child

    def counting(command, *args, **kwargs):
        calls.append(command)
        return real_run_child(command, *args, **kwargs)

    monkeypatch.setattr(table, "run_child", counting)
    second = table.run_table(SMALL, data, ["reference"], out_csv=out)
    # Only the configuration not yet in the file ran.
    assert len(calls) == 1 and "6" == calls[0][calls[0].index("--layers") + 1]
    assert second.ran == 1 and second.reused == 1
    assert second.rows[0] == first.rows[0]
    calls.clear()
    third = table.run_table(SMALL, data, ["reference"], out_csv=out)
    assert calls == [] and third.ran == 0 and third.reused == 2
    assert len(table.read_csv(out)) == 2
    # --rerun measures again and replaces the rows instead of adding to them.
    rerun = table.run_table(SMALL, data, ["reference"], out_csv=out, rerun=True)
    assert len(calls) == 2 and rerun.ran == 2 and len(table.read_csv(out)) == 2


def test_a_failing_configuration_is_an_error_row_and_the_others_survive(data, tmp_path):
    out = tmp_path / "results.csv"
    configs = [SMALL[0], catalog.config(1024, 9), catalog.config(4096, 4), SMALL[1]]
    report = table.run_table(configs, data, ["reference"], out_csv=out)
    results = [(row.layers, row.neurons, row.result) for row in report.rows]
    assert results == [(4, 1024, "PASS"), (9, 1024, "ERROR"), (4, 4096, "ERROR"), (6, 1024, "PASS")]
    # Each error says why, in one line: no truth of depth 9, no data at all for 4096.
    assert "truth" in report.rows[1].note and "\n" not in report.rows[1].note
    assert "neuron4096" in report.rows[2].note
    assert not report.passed
    assert [row["result"] for row in _rows(out)] == ["PASS", "ERROR", "ERROR", "PASS"]
    # A later call retries only the failed rows.
    again = table.run_table(configs, data, ["reference"], out_csv=out)
    assert again.reused == 2 and again.ran == 2 and len(table.read_csv(out)) == 4


def test_an_unavailable_engine_is_an_error_row(data):
    report = table.run_table(SMALL[:1], data, ["reference", "nonesuch"])
    assert [row.result for row in report.rows] == ["PASS", "ERROR"]
    assert "unknown engine" in report.rows[1].note


def test_a_run_over_the_memory_budget_is_killed_and_reported(data, tmp_path):
    # 20 MB: less than any Python with numpy imported holds.
    report = table.run_table(SMALL[:1], data, ["reference"], memory_budget_gb=0.02,
                             out_csv=tmp_path / "t.csv")
    row = report.rows[0]
    assert row.result == "ERROR" and "memory above the budget" in row.note
    assert row.infer_seconds is None and row.peak_rss_gb > 0.02


def test_missing_configurations_are_generated_first(tmp_path):
    root = tmp_path / "empty"
    cfg = catalog.config(1024, 5)
    report = table.run_table([cfg], root, ["reference"], generate=True, generate_inputs=48,
                             seed=2)
    row = report.rows[0]
    assert row.result == "PASS" and row.truth == "generated" and row.inputs == 48
    assert synthetic.is_generated(cfg, root, 48, seed=2, format="binary")


def test_truth_on_the_first_inputs_is_stated_in_the_row(data):
    report = table.run_table(SMALL[1:], data, ["cpu"], truth_inputs=40)
    row = report.rows[0]
    assert row.result == "PASS" and row.truth == "reference on first 40 inputs"
    assert row.inputs == 64


def test_cli_prints_markdown_json_and_writes_csv(data, tmp_path, capsys):
    out = tmp_path / "results.csv"
    args = ["table", "--neurons", "1024", "--layers", "4,6", "--engines", "reference",
            "--data-dir", str(data), "--csv", str(out), "-q"]
    assert main(args) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0].startswith("| neurons | layers | edges | inputs | engine |")
    assert len(markdown) == 4 and all("| PASS | generated |" in line for line in markdown[2:])
    assert main(args + ["--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ran"] == 0 and payload["reused"] == 2 and payload["passed"] is True
    assert [sorted(row) for row in payload["rows"]] == [sorted(table.COLUMNS)] * 2
    assert payload["csv"] == str(out)


def test_cli_bad_options_are_one_line(tmp_path, capsys):
    assert main(["table", "--neurons", "1024,x", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--neurons" in err
    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    assert main(["table", "--neurons", "1024", "--layers", "4", "--csv", str(foreign),
                 "--data-dir", str(tmp_path)]) == 2
    assert "not a table" in capsys.readouterr().err


def test_plot_of_the_table(data, tmp_path):
    pytest.importorskip("matplotlib")
    from graphchallenge.plot import plot_table

    report = table.run_table(SMALL, data, ["reference"])
    path = tmp_path / "rates.png"
    plot_table(report.rows, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# ---------------------------------------------------------------- truth on the first K inputs

class _WrongEngine(Engine):
    """Reports row 1 alive whatever happens: a fast engine must never be its own truth."""

    name = "wrong"

    def __init__(self, categories):
        self.categories = np.asarray(categories, dtype=np.int64)

    def infer(self, network, inputs, progress=False):
        return InferenceResult(categories=self.categories, infer_seconds=1.0, engine=self.name)


def test_truth_inputs_validates_against_the_reference_not_the_engine(data):
    cfg = SMALL[1]
    challenge, edges = runner.load(cfg, data)
    truth = challenge.truth
    k = 40
    exact = _WrongEngine(truth)
    report = runner.infer_and_validate(challenge, exact, truth_inputs=k, challenge_edges=edges)
    assert report.passed and report.truth_source == f"reference on first {k} inputs"
    assert report.n_truth == int((truth <= k).sum())
    # Rows beyond K are not checked; rows within K are.
    beyond = _WrongEngine(np.union1d(truth, [k + 1]))
    assert runner.infer_and_validate(challenge, beyond, truth_inputs=k).passed
    within = _WrongEngine(np.setdiff1d(truth, truth[:1])) if truth[0] <= k else None
    assert within is not None, "the fixture needs a category within the first K rows"
    failed = runner.infer_and_validate(challenge, within, truth_inputs=k)
    assert not failed.passed and failed.validation["missing"] == [int(truth[0])]


def test_truth_inputs_needs_no_truth_file(data, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(data, root)
    (root / catalog.config(1024, 6).truth_path).unlink()
    with pytest.raises(DataError, match="truth"):
        runner.run(catalog.config(1024, 6), root, engine="reference")
    report = runner.run(catalog.config(1024, 6), root, engine="cpu", truth_inputs=64)
    full = runner.run(catalog.config(1024, 6), data, engine="reference")
    assert report.passed and report.categories == full.categories


def test_truth_inputs_beyond_the_run_is_one_clear_error(data, capsys):
    code = main(["run", "--neurons", "1024", "--layers", "6", "--data-dir", str(data),
                 "--inputs", "10", "--truth-inputs", "11"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--truth-inputs" in err


def test_generation_for_a_subset_truth_writes_no_truth(tmp_path):
    root = tmp_path / "subset"
    cfg = catalog.config(1024, 5)
    report = table.run_table([cfg], root, ["reference"], generate=True, generate_inputs=48,
                             truth_inputs=20)
    row = report.rows[0]
    assert row.result == "PASS" and row.truth == "reference on first 20 inputs"
    assert not (root / cfg.truth_path).exists()
    assert not synthetic.is_generated(cfg, root, 48, format="binary")


def test_an_interrupted_table_keeps_its_finished_rows_and_resumes(data, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    real_run_child = table.run_child
    calls = []

    def interrupted_at_the_second(command, *args, **kwargs):
        calls.append(command)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_child(command, *args, **kwargs)

    monkeypatch.setattr(table, "run_child", interrupted_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        table.run_table(SMALL, data, ["reference"], out_csv=out)
    assert [(row.layers, row.result) for row in table.read_csv(out)] == [(4, "PASS")]
    assert not list(tmp_path.glob(".*.part")), "a temporary file was left behind"
    monkeypatch.setattr(table, "run_child", real_run_child)
    resumed = table.run_table(SMALL, data, ["reference"], out_csv=out)
    assert resumed.reused == 1 and resumed.ran == 1
    assert [(row.layers, row.result) for row in table.read_csv(out)] == [(4, "PASS"), (6, "PASS")]


def test_run_child_measures_the_childs_own_peak_memory():
    import sys

    big = table.run_child([sys.executable, "-c", "import time; b = bytearray(300 * 10**6); "
                           "time.sleep(0.3); print(len(b))"])
    # A bare Python: far below this test process, whose peak (hundreds of MB
    # after the suite's other tests) the kernel folds into ru_maxrss at exec.
    bulky = bytearray(200 * 10**6)
    small = table.run_child([sys.executable, "-c", "import time; time.sleep(0.3)"])
    del bulky
    assert big.returncode == 0 and big.stdout.strip() == str(300 * 10**6)
    assert big.peak_rss_gb > 0.3 and small.peak_rss_gb < 0.1
    failed = table.run_child([sys.executable, "-c",
                              "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert failed.returncode < 0 and "SIGKILL" in failed.reason


def test_the_truth_subset_split_over_processes_equals_one_process(data, monkeypatch):
    challenge, _ = runner.load(SMALL[1], data)
    monkeypatch.setattr(runner, "_MIN_TRUTH_ROWS_PER_WORKER", 8)
    one = runner.reference_truth(challenge.network, challenge.inputs, 60, workers=1)
    three = runner.reference_truth(challenge.network, challenge.inputs, 60, workers=3)
    assert one.tolist() == three.tolist() == challenge.truth[challenge.truth <= 60].tolist()
    assert one.size > 1 and one.dtype == np.int64
