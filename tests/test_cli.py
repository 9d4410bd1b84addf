import json
import os
import shutil
import subprocess
import sys

import pytest

from graphchallenge.cli import main

from conftest import REPO


def cli(*args):
    """Run the real command in a subprocess; returns (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "graphchallenge", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_run_real_data_passes_with_json(real_data_dir):
    code, out, err = cli("run", "--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir,
                         "--engine", "reference", "--json")
    assert code == 0, err
    report = json.loads(out)
    for key in ("neurons", "layers", "n_inputs", "edges", "engine", "infer_seconds",
                "edges_per_second", "n_categories", "passed"):
        assert key in report
    assert report["passed"] is True and report["n_categories"] == 19
    assert report["n_inputs"] == 1200 and report["edges"] == 120 * 32768
    assert report["edges_per_second"] == pytest.approx(1200 * 120 * 32768 / report["infer_seconds"])


def test_run_readable_report_and_inputs_subset(real_data_dir, capsys):
    code = main(["run", "--neurons", "1024", "--layers", "120", "--data-dir", str(real_data_dir),
                 "--inputs", "500"])
    out = capsys.readouterr().out
    assert code == 0
    assert "PASS" in out and "inputs       500" in out
    # rows <= 500 of the real truth: 287, 295, 386, 427, 428
    assert "categories   5" in out


def test_run_fails_against_a_wrong_truth(real_data_dir, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(real_data_dir, root, symlinks=True)
    truth = root / "dnn" / "neuron1024-l120-categories.tsv"
    truth.unlink()
    truth.write_text("287\n300\n")
    code = main(["run", "--neurons", "1024", "--layers", "120", "--data-dir", str(root),
                 "--inputs", "300", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["passed"] is False
    assert report["validation"]["missing"] == [300] and report["validation"]["extra"] == [295]


def test_validate_command(tmp_path, capsys):
    (tmp_path / "c.tsv").write_text("1\n5\n")
    (tmp_path / "t.tsv").write_text("1\n5\n")
    assert main(["validate", "--categories", str(tmp_path / "c.tsv"),
                 "--truth", str(tmp_path / "t.tsv")]) == 0
    (tmp_path / "t.tsv").write_text("1\n6\n")
    assert main(["validate", "--categories", str(tmp_path / "c.tsv"),
                 "--truth", str(tmp_path / "t.tsv"), "--json"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["missing"] == [6]


def _challenge_copy(real_data_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(real_data_dir, root, symlinks=True)
    return root


@pytest.mark.parametrize("damage, message", [
    (lambda root: shutil.rmtree(root / "dnn" / "neuron1024"), "no network folder"),
    (lambda root: (root / "dnn" / "neuron1024" / "n1024-l60.tsv").unlink(), "n1024-l60.tsv"),
    (lambda root: (root / "dnn" / "neuron1024" / "n1024-l3.tsv").write_text("1\t1\t0.0625\n2\t2\n"),
     "n1024-l3.tsv:2: expected 3 fields"),
    (lambda root: (root / "dnn" / "neuron1024" / "n1024-l3.tsv").write_text("1\t1025\t0.0625\n"),
     "n1024-l3.tsv:1: column index 1025"),
    (lambda root: (root / "dnn" / "neuron1024" / "n1024-l3.tsv").write_text("1\tabc\t0.0625\n"),
     "n1024-l3.tsv:1: not a number"),
    (lambda root: _replace(root / "mnist" / "sparse-images-1024.tsv.gz", b""), "sparse-images-1024"),
    (lambda root: _replace(root / "dnn" / "neuron1024-l120-categories.tsv", b"12\nxx\n"),
     "categories.tsv:2: not a row number"),
])
def test_bad_input_is_one_line_and_exit_2(real_data_dir, tmp_path, damage, message):
    root = _challenge_copy(real_data_dir, tmp_path)
    damage(root)
    code, out, err = cli("run", "--neurons", 1024, "--layers", 120, "--data-dir", root,
                         "--engine", "reference")
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err


def _replace(path, content):
    path.unlink()
    path.write_bytes(content)


def test_missing_data_folder_and_bad_options(tmp_path):
    code, _, err = cli("run", "--neurons", 1024, "--layers", 120, "--data-dir", tmp_path / "none")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = cli("run", "--neurons", 1000, "--layers", 120)
    assert code == 2 and "--neurons must be one of" in err
    code, _, err = cli("run", "--neurons", 1024)
    assert code == 2 and "--layers" in err
    code, _, err = cli("run", "--neurons", 1024, "--layers", 120, "--engine", "warp-drive",
                       "--data-dir", tmp_path)
    assert code == 2


def test_unknown_engine_is_a_clear_error(real_data_dir):
    code, _, err = cli("run", "--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir,
                       "--engine", "warp-drive")
    assert code == 2 and "unknown engine 'warp-drive'" in err


def test_info_json(real_data_dir):
    code, out, err = cli("info", "--data-dir", real_data_dir, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["engines"]["reference"]["available"] is True
    assert info["auto_engine"] in info["engines"]
    ready = [entry for entry in info["data"] if entry["config"] == "neuron1024-l120"]
    assert ready and ready[0]["runnable"] is True


def test_no_command_prints_help_and_exits_2():
    code, _, err = cli()
    assert code == 2 and "COMMAND" in err


def test_a_closed_stdout_pipe_is_not_a_traceback():
    # Like `graphchallenge info | head -1`: the reader is gone before the report is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "graphchallenge", "info", "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 141


def test_unwritable_categories_out_is_one_line(real_data_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file" / "sub.tsv", tmp_path):
        code, _, err = cli("run", "--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir,
                           "--inputs", 50, "--categories-out", target)
        assert code == 2 and "Traceback" not in err and "cannot write" in err
    assert not list(tmp_path.glob(".*.part"))


def test_device_with_a_cpu_engine_is_ignored_with_a_warning(real_data_dir):
    code, out, err = cli("run", "--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir,
                         "--engine", "reference", "--inputs", 300, "--device", 0, "--json")
    assert code == 0, err
    assert "--device applies to the GPU engines only" in err
    assert json.loads(out)["passed"] is True


def test_info_says_when_the_data_folder_is_missing(tmp_path):
    code, out, _ = cli("info", "--data-dir", tmp_path / "nowhere")
    assert code == 0 and "the folder does not exist" in out
