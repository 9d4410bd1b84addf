"""MPI data-parallel runs (``mpiexec -n 2``, oversubscribed on a 2-core machine)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphchallenge import parallel

from conftest import REPO

REQUIRE_MPI = os.environ.get("GRAPHCHALLENGE_REQUIRE_MPI") == "1"


def _mpiexec():
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if found and parallel.mpi_available():
        return found
    message = "mpiexec or mpi4py not installed (pip install graphchallenge[mpi])"
    if REQUIRE_MPI:
        pytest.fail(message + "; GRAPHCHALLENGE_REQUIRE_MPI=1 makes this a failure")
    pytest.skip(message)


def _run_mpi(*programs, timeout=180):
    """``mpiexec -n 1 PROGRAM_0 : -n 1 PROGRAM_1 ...`` (one rank per argument list)."""
    command = [_mpiexec()]
    for i, args in enumerate(programs):
        if i:
            command.append(":")
        command += ["-n", "1", sys.executable, "-m", "graphchallenge", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("n_items, size", [(10, 3), (1200, 2), (2, 5), (0, 2)])
def test_blocks_cover_the_inputs_once(n_items, size):
    blocks = [parallel.block(n_items, rank, size) for rank in range(size)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n_items
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_serial_without_a_launcher(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.world() == (None, 0, 1)
    assert parallel.launched_rank() == 0


@pytest.mark.mpi
def test_two_ranks_give_the_serial_categories(real_data_dir, tmp_path):
    args = ["run", "--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir, "--tile", 2]
    serial = subprocess.run([sys.executable, "-m", "graphchallenge", *map(str, args),
                             "--categories-out", tmp_path / "serial.tsv"],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert serial.returncode == 0, serial.stderr
    mpi = _run_mpi(*[args + ["--categories-out", tmp_path / "mpi.tsv", "--json"]] * 2)
    assert mpi.returncode == 0, mpi.stderr
    report = json.loads(mpi.stdout)  # exactly one JSON object: rank 0 reports alone
    assert report["passed"] and report["ranks"] == 2 and report["n_categories"] == 38
    assert len(report["rank_seconds"]) == 2
    assert (tmp_path / "mpi.tsv").read_bytes() == (tmp_path / "serial.tsv").read_bytes()


@pytest.mark.mpi
def test_a_failing_rank_ends_every_rank_with_one_message(real_data_dir, tmp_path):
    good = ["run", "--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir]
    bad = ["run", "--neurons", 1024, "--layers", 120, "--data-dir", tmp_path / "missing"]
    result = _run_mpi(good, bad, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "rank 1 failed while loading the data" in lines[0]


@pytest.mark.mpi
def test_ranks_with_different_options_are_refused(real_data_dir):
    args = ["run", "--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir]
    result = _run_mpi(args, args + ["--tile", 2], timeout=60)
    assert result.returncode == 2 and "ranks disagree" in result.stderr


@pytest.mark.mpi
def test_bench_under_two_ranks_reports_once_and_passes(real_data_dir):
    args = ["bench", "--neurons", 1024, "--layers", 120, "--data-dir", real_data_dir,
            "--engines", "reference", "--repeat", 1, "--json"]
    result = _run_mpi(args, args)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ranks"] == 2 and report["passed"] is True
    assert report["rows"][0]["n_categories"] == 19
