"""``graphchallenge demo``: offline, from nothing to a validated run, then reused."""

import json
import os
import subprocess
import sys

from graphchallenge import catalog, synthetic
from graphchallenge.cli import main

from conftest import REPO


def demo(*args, env=None):
    """The real command in a subprocess, as a user runs it; (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "graphchallenge", "demo", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_demo_generates_runs_and_passes_then_reuses(tmp_path):
    code, out, err = demo("--inputs", 300, "--data-dir", tmp_path, "--json")
    assert code == 0, err
    report = json.loads(out)  # exactly one JSON object on stdout
    assert report["passed"] is True
    assert report["layers"] == 120 and report["neurons"] == 1024 and report["n_inputs"] == 300
    assert report["generated"]["n_categories"] == report["n_categories"]
    folder = synthetic.demo_folder(tmp_path, catalog.config(1024, 120), 300, 0)
    assert report["data_dir"] == str(folder)
    assert synthetic.is_generated(catalog.config(1024, 120), folder, 300, seed=0)

    code, out, err = demo("--inputs", 300, "--data-dir", tmp_path, "--engine", "reference")
    assert code == 0, err
    assert "reused" in out and "PASS" in out and "engine       reference" in out


def test_demo_data_folder_defaults_to_the_environment(tmp_path):
    code, out, err = demo("--inputs", 50, "--seed", 4, "--engine", "reference", "--quiet",
                          env={"GRAPHCHALLENGE_DATA": str(tmp_path)})
    assert code == 0, err
    assert (tmp_path / "generated" / "neuron1024-l120-s4-i50" / synthetic.RECORD_NAME).is_file()


def test_demo_fails_when_the_truth_is_wrong(tmp_path, capsys):
    assert main(["demo", "--inputs", "60", "--data-dir", str(tmp_path), "--engine", "reference",
                 "--json"]) == 0
    folder = synthetic.demo_folder(tmp_path, catalog.config(1024, 120), 60, 0)
    truth = folder / "dnn" / "neuron1024-l120-categories.tsv"
    truth.write_text("1\n")
    capsys.readouterr()
    assert main(["demo", "--inputs", "60", "--data-dir", str(tmp_path), "--engine", "reference",
                 "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False


def test_demo_bad_input_is_one_line(tmp_path):
    code, out, err = demo("--inputs", 0, "--data-dir", tmp_path)
    assert code == 2 and out == "" and err.count("\n") == 1 and "--inputs" in err
