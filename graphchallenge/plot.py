"""Figures: a run's live rows and time per layer, survival curves, the results table's rates.

matplotlib is optional (``pip install graphchallenge[plot]``); it is
imported only when a figure is asked for, with the non-interactive Agg
backend, and figures are written atomically (a temporary file renamed
into place), so an interrupted plot never leaves half a PNG.
"""

import os
import tempfile
from pathlib import Path

from .errors import GraphChallengeError


def pyplot():
    """matplotlib's pyplot on the Agg backend, or a GraphChallengeError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise GraphChallengeError(
            "matplotlib is needed for --plot: pip install graphchallenge[plot]") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, figure, path):
    """Save ``figure`` to ``path`` through a temporary file beside it; the format follows the suffix."""
    path = Path(path)
    suffix = path.suffix.lstrip(".").lower() or "png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            figure.savefig(tmp, format=suffix, dpi=120)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except ValueError as exc:  # an image format matplotlib does not know
        raise GraphChallengeError(f"cannot draw {path}: {exc}") from None
    except OSError as exc:
        raise GraphChallengeError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)


def plot_run(report, path):
    """Draw live rows per layer and time per layer of a run.

    Parameters
    ----------
    report : graphchallenge.runner.RunReport
        Uses ``live_rows`` and ``layer_seconds``; a panel whose data the
        engine did not record says so instead.
    path : path-like
        Image file (PNG, SVG or PDF, by suffix).

    Raises
    ------
    GraphChallengeError
        matplotlib is missing, or the file cannot be written.
    """
    plt = pyplot()
    figure, (rows_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 4))
    figure.suptitle(f"{report.network}: {report.n_inputs:,} inputs on {report.engine}")
    series = (
        (rows_axis, report.live_rows, "live rows (any nonzero)", 1),
        (time_axis, [s * 1e3 for s in report.layer_seconds] if report.layer_seconds else None,
         "time per layer (ms)", None),
    )
    for axis, values, label, floor in series:
        axis.set_xlabel("layer")
        axis.set_ylabel(label)
        if not values:
            axis.text(0.5, 0.5, f"the {report.engine} engine does not record this",
                      ha="center", va="center", transform=axis.transAxes)
            continue
        axis.plot(range(1, len(values) + 1), values, drawstyle="steps-mid")
        if floor is not None and min(values) >= floor:
            axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    save_figure(plt, figure, path)


def plot_survival(curves, path, n_inputs=None):
    """Draw survival curves (live rows per layer) of several runs on one axis.

    Parameters
    ----------
    curves : dict of str to list of int
        Label -> live rows after each layer.
    path : path-like
        Image file.
    n_inputs : dict of str to int, optional
        Label -> number of inputs; when given, the curves are drawn as
        fractions of the inputs so that runs of different sizes compare.
    """
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, live in curves.items():
        values = list(live)
        if n_inputs:
            values = [v / n_inputs[label] for v in values]
        axis.plot(range(1, len(values) + 1), values, drawstyle="steps-mid", label=label)
    axis.set_xlabel("layer")
    axis.set_ylabel("fraction of inputs alive" if n_inputs else "live rows")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure(plt, figure, path)


def plot_table(rows, path):
    """Draw the results table as the challenge papers do: rate against problem size.

    Parameters
    ----------
    rows : list of graphchallenge.table.TableRow
        Rows without a measured time (errors) are left out.
    path : path-like
        Image file.

    Notes
    -----
    Log-log, edges/s against ``edges * inputs`` (the work of a
    configuration), one line per engine, each point labelled with its
    configuration.
    """
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    by_engine = {}
    for row in rows:
        if row.edges_per_second and row.inputs:
            by_engine.setdefault(row.engine, []).append(row)
    for engine, engine_rows in by_engine.items():
        engine_rows.sort(key=lambda row: row.edges * row.inputs)
        work = [row.edges * row.inputs for row in engine_rows]
        rates = [row.edges_per_second for row in engine_rows]
        axis.plot(work, rates, marker="o", label=engine)
        for row, x, y in zip(engine_rows, work, rates):
            axis.annotate(f"{row.neurons}x{row.layers}", (x, y), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)
    if not by_engine:
        axis.text(0.5, 0.5, "no row with a measured time", ha="center", va="center",
                  transform=axis.transAxes)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("edges x inputs")
    axis.set_ylabel("edges/s (inference only)")
    axis.set_title("Sparse DNN Graph Challenge: inference rate")
    axis.grid(True, which="both", alpha=0.3)
    if by_engine:
        axis.legend()
    figure.tight_layout()
    save_figure(plt, figure, path)
