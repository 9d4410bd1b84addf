"""Figures: ``run --plot`` and the survival comparison."""

import sys

import pytest

from graphchallenge import catalog, runner, synthetic
from graphchallenge.cli import main
from graphchallenge.errors import GraphChallengeError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_challenge(tmp_path_factory):
    root = tmp_path_factory.mktemp("plotdata")
    synthetic.generate_challenge((1024, 12), 100, seed=2, data_dir=root, progress=False)
    return root


@pytest.fixture(scope="module")
def report(small_challenge):
    return runner.run(catalog.config(1024, 12), small_challenge, engine="reference")


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert not list(path.parent.glob(".*.part")), "a temporary file was left behind"


def test_plot_run_writes_a_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    from graphchallenge.plot import plot_run

    path = tmp_path / "figures" / "run.png"  # a missing folder is made
    plot_run(report, path)
    _assert_png(path)


def test_plot_run_without_layer_times(report, tmp_path):
    pytest.importorskip("matplotlib")
    from graphchallenge.plot import plot_run

    report = runner.RunReport(**dict(report.to_dict(), layer_seconds=None))
    plot_run(report, tmp_path / "run.png")
    _assert_png(tmp_path / "run.png")


def test_plot_survival_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from graphchallenge.plot import plot_survival

    curves = {"real": [1098, 786, 415, 196, 98, 56, 31, 22, 19, 19],
              "generated": [2800, 1900, 1000, 500, 250, 150, 100, 90, 0, 0]}
    plot_survival(curves, tmp_path / "s.png", n_inputs={"real": 1200, "generated": 3000})
    _assert_png(tmp_path / "s.png")


def test_run_plot_option(small_challenge, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "cli.png"
    code = main(["run", "--neurons", "1024", "--layers", "12", "--data-dir", str(small_challenge),
                 "--engine", "reference", "--plot", str(path), "--json"])
    assert code == 0
    _assert_png(path)


def test_unknown_image_format_is_one_clear_error(report, tmp_path):
    pytest.importorskip("matplotlib")
    from graphchallenge.plot import plot_run

    with pytest.raises(GraphChallengeError, match="cannot draw"):
        plot_run(report, tmp_path / "run.notaformat")
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_says_how_to_install_it(report, tmp_path, monkeypatch):
    from graphchallenge.plot import plot_run

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    with pytest.raises(GraphChallengeError, match=r"pip install graphchallenge\[plot\]"):
        plot_run(report, tmp_path / "run.png")
    assert not (tmp_path / "run.png").exists()
