"""Engines side by side on one loaded challenge: the library call behind ``graphchallenge bench``.

Every engine runs the same inputs in the same process: each prepares once
(format conversion, compilation: untimed, reported apart), then the
engines take turns, ``repeat`` rounds of one timed run each, so a change
in the machine's load falls on all of them alike. The table reports the
median and the fastest of each engine's runs, the challenge rate
(``n_inputs * edges / seconds``, edges of the original network), whether
the categories PASS, and the speed relative to the fastest *peer*: the
independent implementations of the same computation (:data:`PEERS`).

>>> from graphchallenge import bench, catalog, network
>>> challenge = network.load_challenge(catalog.config(1024, 120), "data")  # doctest: +SKIP
>>> print(bench.bench(challenge, tile=50).text())                         # doctest: +SKIP
"""

import os
import platform
import statistics
from dataclasses import asdict, dataclass, field

from . import engines as engines_mod
from .engines.base import Timer
from .errors import EngineUnavailable
from .runner import categories_to_check, reference_truth, tile_inputs
from .validate import validate

#: The baselines: scipy.sparse (the reference) and SuiteSparse:GraphBLAS.
PEERS = ("reference", "graphblas")


@dataclass
class BenchRow:
    """One engine's line of the table; ``seconds`` is None for an engine that could not run."""

    engine: str
    seconds: float = None
    min_seconds: float = None
    edges_per_second: float = None
    ratio: float = None
    passed: bool = None
    n_categories: int = None
    prepare_seconds: float = None
    rechecked_rows: int = None
    times: list = field(default_factory=list)
    note: str = ""


@dataclass
class BenchReport:
    """The outcome of :func:`bench`; ``to_dict()`` is what ``--json`` prints.

    ``ratio`` of a row is the fastest peer's median time over the row's
    median time: how many times faster than the best baseline (1.0 for
    that baseline itself; None when no peer ran).
    """

    network: str
    neurons: int
    layers: int
    n_inputs: int
    tile: int
    edges: int
    repeat: int
    rows: list
    machine: dict
    ranks: int = 1
    truth_source: str = None  # "file", "reference on first K inputs", or None

    @property
    def fastest_peer(self):
        """The row of the peer with the smallest median time, or None."""
        peers = [row for row in self.rows if row.engine in PEERS and row.seconds is not None]
        return min(peers, key=lambda row: row.seconds) if peers else None

    @property
    def passed(self):
        """True when every engine that ran passed validation."""
        ran = [row for row in self.rows if row.seconds is not None]
        return bool(ran) and all(row.passed for row in ran)

    def to_dict(self):
        return dict(asdict(self), passed=self.passed,
                    fastest_peer=self.fastest_peer.engine if self.fastest_peer else None)

    def text(self):
        """The human-readable table."""
        machine = self.machine
        lines = [
            f"network   {self.network} ({self.layers} layers of {self.neurons} neurons, "
            f"{self.edges:,} edges)",
            f"inputs    {self.n_inputs:,}" + (f" ({self.tile} tiles)" if self.tile > 1 else ""),
            f"machine   {machine['processor']}, {machine['cpus']} CPUs, load average "
            f"{machine['load_average']} at the start",
            f"timing    median of {self.repeat} runs each, engines in turn; preparation untimed"
            + (f"; {self.ranks} MPI ranks, slowest rank timed" if self.ranks > 1 else ""),
        ] + ([f"truth     {self.truth_source}"] if self.truth_source else []) + [
            "",
            f"{'engine':<12}{'seconds':>10}{'min':>10}{'edges/s':>11}{'vs peer':>10}  result",
        ]
        for row in self.rows:
            if row.seconds is None:
                lines.append(f"{row.engine:<12}{'-':>10}{'-':>10}{'-':>11}{'-':>10}  "
                             f"skipped: {row.note}")
                continue
            ratio = f"{row.ratio:.1f}x" if row.ratio is not None else "-"
            result = {True: "PASS", False: "FAIL", None: "not validated"}[row.passed]
            lines.append(f"{row.engine:<12}{row.seconds:>10.4f}{row.min_seconds:>10.4f}"
                         f"{row.edges_per_second:>11.3g}{ratio:>10}  {result}")
        if self.fastest_peer is not None:
            fastest = self.fastest_peer
            lines.append(f"\nvs peer: speed relative to the fastest peer ({fastest.engine}, "
                         f"{fastest.seconds:.4f} s)")
        return "\n".join(lines)


def _machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # The CPUs this process may run on (``taskset`` narrows them), not the machine's.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"processor": model, "cpus": cpus, "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": round(load, 2) if load is not None else None}


def _available(names, make_engine):
    """Engine objects for ``names``, and notes for those that cannot run here."""
    chosen, notes = {}, {}
    for name in names:
        if name not in engines_mod.ENGINE_NAMES:
            raise EngineUnavailable(f"unknown engine {name!r}; choose from "
                                    f"{', '.join(engines_mod.ENGINE_NAMES)}")
        available, reason = engines_mod.availability(name)
        if available:
            chosen[name] = make_engine(name)
        else:
            notes[name] = reason
    if not chosen:
        raise EngineUnavailable("no engine to benchmark can run here: " + "; ".join(
            f"{name}: {reason}" for name, reason in notes.items()))
    return chosen, notes


def bench(challenge, engines=("cpu", "reference", "graphblas"), repeat=3, tile=1,
          progress=False, challenge_edges=None, make_engine=None, truth_inputs=None):
    """Time ``engines`` on ``challenge``; returns a :class:`BenchReport`.

    Parameters
    ----------
    challenge : graphchallenge.network.Challenge
        Loaded once; every engine runs on the same network and inputs.
    engines : sequence of str
        Engine names. One that cannot run here (missing library or device)
        gets a row saying why, unless none can run.
    repeat : int
        Timed runs per engine; the table reports their median.
    tile : int
        Repeat the inputs ``tile`` times (1,200 real images x 50 = 60,000).
    progress : bool
        Progress bars on stderr.
    challenge_edges : int, optional
        Edges of the original challenge network, for the rate when
        ``challenge.network`` is a compact one; by default those of
        ``network.exact_reference``.
    make_engine : callable, optional
        ``name -> Engine`` for the engines that can run here (default
        :func:`graphchallenge.engines.get_engine`); the MPI driver passes
        one that spreads each engine's inputs over the ranks.
    truth_inputs : int, optional
        Validate against the float64 reference run here, untimed, on the
        first ``truth_inputs`` inputs (no truth file needed): every
        engine's categories among those rows must equal it.

    Raises
    ------
    EngineUnavailable
        An unknown engine name, or no requested engine can run here.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    names = list(dict.fromkeys(engines))
    chosen, notes = _available(names, make_engine or engines_mod.get_engine)
    network = challenge.network
    inputs, truth = tile_inputs(challenge.inputs, challenge.truth, tile)
    truth_source = "file" if truth is not None else None
    if truth_inputs is not None:
        truth = reference_truth(network, inputs, truth_inputs, progress=progress)
        truth_source = f"reference on first {min(truth_inputs, inputs.shape[0])} inputs"
    edges = challenge_edges or network.exact_reference.edges
    machine = _machine()
    prepare_seconds = {}
    for name, engine in chosen.items():
        prepare = getattr(engine, "prepare", None)
        with Timer() as timer:
            if prepare is not None:
                prepare(network)
        prepare_seconds[name] = timer.seconds
    results = {name: [] for name in chosen}
    for _ in range(repeat):
        for name, engine in chosen.items():
            results[name].append(engine.infer(network, inputs, progress=progress))
    rows = []
    for name in names:
        if name in notes:
            rows.append(BenchRow(name, note=notes[name]))
            continue
        runs = results[name]
        times = [result.infer_seconds for result in runs]
        median = statistics.median(times)
        verdicts = [validate(categories_to_check(result.categories, truth_inputs), truth).passed
                    for result in runs] if truth is not None else None
        rows.append(BenchRow(
            engine=name, seconds=median, min_seconds=min(times),
            edges_per_second=inputs.shape[0] * edges / median if median > 0 else float("inf"),
            passed=all(verdicts) if verdicts is not None else None,
            n_categories=int(runs[-1].categories.size),
            prepare_seconds=prepare_seconds[name] + runs[0].prepare_seconds,
            rechecked_rows=runs[-1].rechecked_rows, times=times))
    report = BenchReport(network=network.name, neurons=network.n_features,
                         layers=network.n_layers, n_inputs=inputs.shape[0], tile=tile,
                         edges=edges, repeat=repeat, rows=rows, machine=machine,
                         truth_source=truth_source)
    fastest = report.fastest_peer
    if fastest is not None:
        for row in rows:
            if row.seconds is not None:
                row.ratio = fastest.seconds / row.seconds if row.seconds > 0 else float("inf")
    return report


def plot_bench(report, path):
    """Draw each engine's rate (bars, log scale), labelled with its speed relative to the peers.

    Parameters
    ----------
    report : BenchReport
    path : path-like
        Image file (PNG, SVG or PDF, by suffix).

    Raises
    ------
    GraphChallengeError
        matplotlib is missing, or the file cannot be written.
    """
    from .plot import pyplot, save_figure

    plt = pyplot()
    rows = [row for row in report.rows if row.seconds is not None]
    figure, axis = plt.subplots(figsize=(7, 4))
    colors = ["tab:gray" if row.engine in PEERS else "tab:blue" for row in rows]
    bars = axis.bar([row.engine for row in rows], [row.edges_per_second for row in rows],
                    color=colors)
    axis.set_yscale("log")
    rates = [row.edges_per_second for row in rows]
    axis.set_ylim(min(rates) / 3, 3 * max(rates))  # every bar visible, room for the labels
    axis.set_ylabel("edges per second (median run)")
    axis.set_title(f"{report.network}, {report.n_inputs:,} inputs, {report.machine['cpus']} CPUs")
    for bar, row in zip(bars, rows):
        label = (f"{row.ratio:.1f}x" if row.ratio is not None else "") + \
            ("" if row.passed in (True, None) else " FAIL")
        axis.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom")
    save_figure(plt, figure, path)
