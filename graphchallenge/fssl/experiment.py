"""The FSSL experiment: fine-tuning a challenge network, measured end to end.

This is the library behind ``graphchallenge finetune``. It loads a
challenge, starts from its exact compaction (or a saved one), trains with
:func:`~graphchallenge.fssl.training.train_fssl` (group lasso, pruning,
fine-tuning; the method and its choices are described in
:mod:`graphchallenge.fssl.training`) on a training split of the real
inputs, and reports on inputs it never saw:

* precision, recall and F1 of the categories against the original
  network's, on the held-out real inputs and on generated MNIST-like ones;
* neurons and edges kept per layer, compression rate, training time;
* inference time, with one engine in one process, of the original network,
  its exact compaction, the fine-tuned network and an unstructured
  magnitude pruning of the original to the same edges per layer.

The fine-tuned network is written in the derived-network format
(``kind: "fssl"``, see :mod:`graphchallenge.derived`), runnable with
``graphchallenge run --network DIR``.

>>> from graphchallenge import catalog, fssl
>>> experiment = fssl.FsslExperiment(catalog.config(1024, 120), "data")       # doctest: +SKIP
>>> report = experiment.run(fssl.FsslOptions(lam=0.003), "fssl-out")          # doctest: +SKIP
>>> report.compression_rate, report.f1, report.speedup_vs_unstructured        # doctest: +SKIP
"""

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .. import compress, derived, engines, network as network_mod, synthetic
from ..errors import DataError, GraphChallengeError
from ..network import Network
from ..validate import validate
from .ops import Backend
from .training import FsslOptions, NothingLeft, train_fssl

__all__ = ["FsslExperiment", "FinetuneReport", "SweepReport", "finetune_challenge",
           "magnitude_prune", "meets_target", "plot_finetune", "plot_sweep", "reachable_neurons",
           "stratified_split", "time_networks"]

#: Seed of the generated held-out inputs; training never draws from it.
GENERATED_SEED = 1_000_003
#: Seed of the optional generated training inputs.
TRAIN_GENERATED_SEED = 2_000_003


# ---------------------------------------------------------------- baselines and splits

def stratified_split(positive, train_fraction, seed=0):
    """Split rows into training and held-out sets, positives and negatives alike.

    With 19 categories in 1200 real inputs, a plain random split could put
    nearly all of them on one side; splitting each class separately keeps
    ``train_fraction`` of both in training.

    Parameters
    ----------
    positive : array of bool
        Per row, whether it is a category of the original network.
    train_fraction : float
        In (0, 1).
    seed : int

    Returns
    -------
    (ndarray, ndarray)
        Sorted 0-based training rows and held-out rows.
    """
    if not 0.0 < train_fraction < 1.0:
        raise GraphChallengeError(f"--train-fraction must be between 0 and 1 (got {train_fraction})")
    positive = np.asarray(positive, dtype=bool)
    rng = np.random.default_rng(seed)
    train = []
    for rows in (np.flatnonzero(positive), np.flatnonzero(~positive)):
        rows = rng.permutation(rows)
        train.append(rows[:int(round(train_fraction * rows.size))])
    train = np.sort(np.concatenate(train))
    held_out = np.setdiff1d(np.arange(positive.size), train)
    if train.size == 0 or held_out.size == 0:
        raise GraphChallengeError(f"--train-fraction {train_fraction} leaves no training or no "
                                  f"held-out input among {positive.size}")
    return train, held_out


def magnitude_prune(network, edges_per_layer, seed=0):
    """Unstructured pruning: keep the largest weights of each layer, up to a budget.

    Every weight of a challenge network is 1/16, so magnitude alone decides
    nothing: ties are broken by a seeded random permutation of each layer's
    edges (deterministic for a seed). Each column's surviving weights are
    scaled to keep the column's weight sum, so that a neuron's activation
    keeps its scale (plain pruning of 1/16 weights would kill every row in
    the first layers and time an empty network).

    Parameters
    ----------
    network : Network
    edges_per_layer : sequence of int
        Edges to keep in each layer.
    seed : int

    Returns
    -------
    Network
        Same shapes, ``origin=None`` (an approximate network, its own reference).
    """
    network = network.in_memory()
    if len(edges_per_layer) != network.n_layers:
        raise ValueError("one edge budget per layer")
    rng = np.random.default_rng(seed)
    layers = []
    for weights, budget in zip(network.layers, edges_per_layer):
        coo = sp.coo_matrix(weights)
        order = np.lexsort((rng.permutation(coo.nnz), -np.abs(coo.data)))[:int(budget)]
        kept = np.zeros(coo.nnz, dtype=bool)
        kept[order] = True
        totals = np.bincount(coo.col, weights=coo.data, minlength=weights.shape[1])
        kept_totals = np.bincount(coo.col[kept], weights=coo.data[kept], minlength=weights.shape[1])
        scale = np.divide(totals, kept_totals, out=np.ones_like(totals), where=kept_totals != 0)
        values = coo.data[kept] * scale[coo.col[kept]]
        layers.append(sp.csr_matrix((values, (coo.row[kept], coo.col[kept])), shape=weights.shape))
    return Network(layers, network.bias, name=f"{network.name}-unstructured", config=network.config)


def reachable_neurons(network):
    """Per layer, how many output neurons some input can reach along nonzero edges.

    A neuron no path reaches is 0 on every input; where a layer has none,
    every category is empty, whatever the weights.
    """
    reached = np.ones(network.n_features, dtype=bool)
    counts = []
    for weights in network.layers:
        coo = sp.coo_matrix(weights)
        live = coo.data != 0
        nxt = np.zeros(weights.shape[1], dtype=bool)
        nxt[coo.col[live & reached[coo.row]]] = True
        reached = nxt
        counts.append(int(reached.sum()))
    return counts


def time_networks(networks, inputs, engine="auto", repeats=3):
    """Median inference time of several networks on the same inputs, with one engine.

    Each network runs once untimed (preparation, JIT), then ``repeats``
    rounds visit the networks in turn so that a slow spell of a shared
    machine hits all of them alike.

    Parameters
    ----------
    networks : dict of str to Network
    inputs : scipy.sparse matrix
    engine : str
        Engine name (see :func:`graphchallenge.engines.get_engine`).
    repeats : int

    Returns
    -------
    dict of str to dict
        ``{name: {"seconds": median, "all_seconds": [...], "categories": count}}``.
    """
    if repeats < 1:
        raise GraphChallengeError("--repeats must be at least 1")
    engine_obj = engines.get_engine(engine)
    counts = {name: engine_obj.infer(net, inputs).categories.size for name, net in networks.items()}
    seconds = {name: [] for name in networks}
    for _ in range(repeats):
        for name, net in networks.items():
            seconds[name].append(engine_obj.infer(net, inputs).infer_seconds)
    return {name: {"seconds": float(np.median(values)), "all_seconds": values,
                   "categories": int(counts[name])} for name, values in seconds.items()}


def _ratio(numerator, denominator):
    return numerator / denominator if denominator > 0 else math.inf


# ---------------------------------------------------------------- reports

@dataclass
class FinetuneReport:
    """One trained network, measured; ``to_dict()`` is what ``--json`` prints.

    ``precision``, ``recall`` and ``f1`` are on the held-out real inputs;
    ``generated`` holds the same on generated inputs and ``train_fit`` on
    the training inputs. ``timing`` holds median seconds of each network
    with ``engine`` on ``timing_inputs`` inputs.
    """

    network: str
    lam: float
    out_dir: str
    edges: int
    neurons: int
    compression_rate: float
    compression_vs_compact: float
    train_seconds: float
    epochs: int
    finetune_epochs: int
    precision: float
    recall: float
    f1: float
    speedup_vs_original: float
    speedup_vs_compact: float
    speedup_vs_unstructured: float
    original_edges: int
    compact_edges: int
    edges_per_layer: list
    neurons_per_layer: list
    compact_edges_per_layer: list
    compact_neurons_per_layer: list
    sparsify_seconds: float
    finetune_seconds: float
    device: str
    engine: str
    n_train: int
    n_held_out: int
    heldout: dict
    generated: dict
    train_fit: dict
    timing: dict
    timing_inputs: int
    unstructured: dict
    options: dict
    open_units: list
    history: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)

    def layer_table(self):
        """Neurons and edges kept per layer; runs of identical layers share one line."""
        lines = ["layers        neurons   edges"]
        runs = []
        for k, pair in enumerate(zip(self.neurons_per_layer, self.edges_per_layer), 1):
            if runs and runs[-1][2] == pair:
                runs[-1][1] = k
            else:
                runs.append([k, k, pair])
        for first, last, (neurons, edges) in runs:
            span = f"{first}" if first == last else f"{first}-{last}"
            lines.append(f"{span:<12} {neurons:>8} {edges:>7}")
        return "\n".join(lines)

    def text(self):
        """The human-readable report."""
        def quality(record):
            if not record:
                return "not measured"
            return (f"precision {record['precision']:.4f}, recall {record['recall']:.4f}, "
                    f"F1 {record['f1']:.4f} ({record['n_categories']} categories, "
                    f"{record['n_truth']} in the truth)")

        unstructured = self.unstructured
        dead = ("every input dies in it" if unstructured["reachable_neurons"][-1] == 0
                else f"held-out F1 {unstructured['heldout']['f1']:.4f}")
        lines = [
            f"network      {self.network}, lambda {self.lam:g} -> {self.out_dir}",
            f"kept         {self.neurons:,} neurons, {self.edges:,} edges: "
            f"{self.compression_rate:.1f}x fewer than the original ({self.original_edges:,}), "
            f"{self.compression_vs_compact:.2f}x fewer than its exact compaction "
            f"({self.compact_edges:,})",
            f"training     {self.train_seconds:.1f} s on {self.device} ({self.epochs} group-lasso "
            f"+ {self.finetune_epochs} fine-tuning epochs, {self.n_train} inputs)",
            f"held-out     {quality(self.heldout)} [{self.n_held_out} real inputs]",
            f"generated    {quality(self.generated)}",
            f"training fit {quality(self.train_fit)}",
            f"inference    {self.engine} engine, {self.timing_inputs:,} inputs, median seconds: "
            + ", ".join(f"{name} {entry['seconds']:.4f}" for name, entry in self.timing.items()),
            f"speedup      {self.speedup_vs_original:.1f}x vs original, "
            f"{self.speedup_vs_compact:.2f}x vs exact compaction, "
            f"{self.speedup_vs_unstructured:.2f}x vs unstructured pruning to the same edges per "
            f"layer ({dead})",
            "",
            self.layer_table(),
        ]
        return "\n".join(lines)


@dataclass
class SweepReport:
    """One :class:`FinetuneReport` per lambda; ``best`` is the most compressed
    point whose held-out precision and recall (real and generated) are all
    at least ``target``, or None; ``emptied`` lists the lambdas that pruned
    a whole layer away (no network)."""

    points: list
    best: float = None
    target: float = 0.99
    emptied: list = field(default_factory=list)

    def to_dict(self):
        return {"best": self.best, "target": self.target, "emptied": self.emptied,
                "points": [point.to_dict() for point in self.points]}

    def text(self):
        lines = ["lambda      edges  x orig  x compact  P(real) R(real) F1(real)  P(gen)  R(gen) "
                 "F1(gen)  train s  vs unstr."]
        for p in self.points:
            gen = p.generated or {"precision": math.nan, "recall": math.nan, "f1": math.nan}
            lines.append(f"{p.lam:<9g} {p.edges:>8,} {p.compression_rate:>7.1f} "
                         f"{p.compression_vs_compact:>10.2f} {p.precision:>8.4f} {p.recall:>7.4f} "
                         f"{p.f1:>8.4f} {gen['precision']:>7.4f} {gen['recall']:>7.4f} "
                         f"{gen['f1']:>7.4f} {p.train_seconds:>8.1f} "
                         f"{p.speedup_vs_unstructured:>9.2f}")
        for lam in self.emptied:
            lines.append(f"{lam:<9g} every neuron of some layer pruned: no network")
        lines.append(f"best (precision and recall >= {self.target} held-out, real and generated): "
                     + (f"lambda {self.best:g}" if self.best is not None else "none"))
        return "\n".join(lines)


def _quality(categories, truth):
    v = validate(categories, truth)
    return {"precision": v.precision, "recall": v.recall, "f1": v.f1, "passed": v.passed,
            "n_categories": v.n_categories, "n_truth": v.n_truth, "n_missing": v.n_missing,
            "n_extra": v.n_extra}


# ---------------------------------------------------------------- the experiment

class FsslExperiment:
    """What one or several trainings share: data, split, start network, truths, timing inputs.

    Parameters
    ----------
    cfg : catalog.Config
    data_dir : path-like, optional
        Data folder holding the challenge (see :mod:`graphchallenge.layout`).
    network_dir : path-like, optional
        Start from this saved exact compaction (``graphchallenge compress``)
        instead of compacting the original here.
    train_fraction : float
        Share of the real inputs (of the categories and of the others alike)
        used for training; the rest is held out.
    split_seed : int
    generated_inputs : int
        Generated MNIST-like inputs to evaluate on (held out; 0 for none).
    train_generated : int
        Generated inputs added to the training set (another seed; 0 for none).
    engine : str
        The engine of every inference here (truths, scores, timings).
    timing_tile : int
        The real inputs are tiled this many times for the timings.
    repeats : int
        Timed runs per network (the median is reported).
    progress : bool
    """

    def __init__(self, cfg, data_dir=None, network_dir=None, train_fraction=0.5, split_seed=0,
                 generated_inputs=3000, train_generated=0, engine="auto", timing_tile=50,
                 repeats=5, progress=False):
        for name, value, minimum in (("--generated-inputs", generated_inputs, 0),
                                     ("--train-generated", train_generated, 0),
                                     ("--timing-tile", timing_tile, 1), ("--repeats", repeats, 1)):
            if value < minimum:
                raise GraphChallengeError(f"{name} must be at least {minimum} (got {value})")
        self.cfg, self.progress, self.repeats = cfg, progress, repeats
        challenge = network_mod.load_challenge(cfg, data_dir)
        self.files = challenge.files
        self.original = challenge.network.in_memory()
        self.engine = engines.resolve(engine)
        self.start, self.groups = self._start_network(network_dir)
        self.representatives = [np.array([group[0] for group in layer], dtype=np.int64)
                                for layer in self.groups]

        inputs = challenge.inputs
        positive = np.zeros(inputs.shape[0], dtype=bool)
        positive[challenge.truth - 1] = True
        self.train_rows, self.held_out_rows = stratified_split(positive, train_fraction, split_seed)
        self.train_inputs = inputs[self.train_rows]
        if train_generated:
            extra = synthetic.mnist_like_inputs(cfg.neurons, train_generated, TRAIN_GENERATED_SEED)
            self.train_inputs = sp.vstack([self.train_inputs, extra], format="csr")
        self.held_out = inputs[self.held_out_rows]
        self.held_out_truth = np.flatnonzero(positive[self.held_out_rows]) + 1
        self.train_truth = np.flatnonzero(positive[self.train_rows]) + 1
        self.train_real = inputs[self.train_rows]
        self.generated = self.generated_truth = None
        if generated_inputs:
            self.generated = synthetic.mnist_like_inputs(cfg.neurons, generated_inputs, GENERATED_SEED)
            self.generated_truth = self._categories(self.original, self.generated)
        self.timing_inputs = sp.vstack([inputs] * timing_tile, format="csr")

    def _start_network(self, network_dir):
        if network_dir is None:
            compaction = compress.compact(self.original, progress=self.progress)
            return compaction.network, compaction.groups
        start = derived.load(network_dir, original=self.original)
        manifest = derived.read_manifest(network_dir)
        if start.origin is None:
            raise DataError(f"{network_dir} holds a {manifest['kind']!r} network, not an exact "
                            "compaction; fine-tuning starts from the original network or from "
                            "`graphchallenge compress` output")
        groups = [entry.get("neurons") for entry in manifest["layers"]]
        if any(layer is None for layer in groups):
            raise DataError(f"{network_dir}: the manifest does not say which original neurons each "
                            "compact neuron stands for; compress the network again")
        return start, groups

    def _categories(self, net, inputs):
        return engines.get_engine(self.engine).infer(net, inputs).categories

    def _scores(self, net):
        scores = {"heldout": _quality(self._categories(net, self.held_out), self.held_out_truth),
                  "train_fit": _quality(self._categories(net, self.train_real), self.train_truth),
                  "generated": None}
        if self.generated is not None:
            scores["generated"] = _quality(self._categories(net, self.generated),
                                           self.generated_truth)
        return scores

    def run(self, options, out_dir):
        """Train with ``options``, write the network to ``out_dir``, measure it.

        Returns
        -------
        FinetuneReport
        """
        result = train_fssl(self.start, self.train_inputs, options, teacher=self.original,
                            representatives=self.representatives, progress=self.progress)
        student = result.network
        student.name = f"{self.cfg.name}-fssl"
        scores = self._scores(student)
        edges_per_layer = [int(w.nnz) for w in student.layers]
        unstructured = magnitude_prune(self.original, edges_per_layer, seed=options.seed)
        timing = time_networks({"original": self.original, "compact": self.start, "fssl": student,
                                "unstructured": unstructured}, self.timing_inputs, self.engine,
                               self.repeats)
        fssl_seconds = timing["fssl"]["seconds"]
        report = FinetuneReport(
            network=self.cfg.name, lam=options.lam, out_dir=str(out_dir), edges=student.edges,
            neurons=int(sum(w.shape[1] for w in student.layers)),
            compression_rate=_ratio(self.original.edges, student.edges),
            compression_vs_compact=_ratio(self.start.edges, student.edges),
            train_seconds=result.train_seconds, epochs=options.epochs,
            finetune_epochs=options.finetune_epochs,
            precision=scores["heldout"]["precision"], recall=scores["heldout"]["recall"],
            f1=scores["heldout"]["f1"],
            speedup_vs_original=_ratio(timing["original"]["seconds"], fssl_seconds),
            speedup_vs_compact=_ratio(timing["compact"]["seconds"], fssl_seconds),
            speedup_vs_unstructured=_ratio(timing["unstructured"]["seconds"], fssl_seconds),
            original_edges=self.original.edges, compact_edges=self.start.edges,
            edges_per_layer=edges_per_layer,
            neurons_per_layer=[int(w.shape[1]) for w in student.layers],
            compact_edges_per_layer=[int(w.nnz) for w in self.start.layers],
            compact_neurons_per_layer=[int(w.shape[1]) for w in self.start.layers],
            sparsify_seconds=result.sparsify_seconds, finetune_seconds=result.finetune_seconds,
            device=options.device, engine=self.engine, n_train=self.train_inputs.shape[0],
            n_held_out=self.held_out.shape[0], heldout=scores["heldout"],
            generated=scores["generated"], train_fit=scores["train_fit"], timing=timing,
            timing_inputs=self.timing_inputs.shape[0],
            unstructured=dict(edges=unstructured.edges,
                              reachable_neurons=reachable_neurons(unstructured),
                              **self._scores(unstructured)),
            options=options.to_dict(), open_units=result.open_units,
            history=[asdict(entry) for entry in result.history])
        groups = [[self.groups[k][j] for j in kept] for k, kept in enumerate(result.kept)]
        summary = {key: value for key, value in report.to_dict().items() if key != "history"}
        derived.save(student, out_dir, source_cfg=self.cfg, source_files=self.files, kind="fssl",
                     groups=groups, extra={"fssl": summary}, source_network=self.original)
        return report

    def sweep(self, lambdas, options, out_dir, target=0.99):
        """Train one network per lambda into ``out_dir/lambda-<value>/``.

        Returns
        -------
        SweepReport
        """
        if not lambdas:
            raise GraphChallengeError("--sweep needs at least one lambda")
        points, emptied = [], []
        for lam in lambdas:
            point_options = FsslOptions(**dict(options.to_dict(), lam=float(lam)))
            try:
                points.append(self.run(point_options, Path(out_dir) / f"lambda-{lam:g}"))
            except NothingLeft:
                emptied.append(float(lam))
        good = [p for p in points if meets_target(p, target)]
        best = min(good, key=lambda p: p.edges).lam if good else None
        return SweepReport(points, best, target, emptied)


def meets_target(report, target=0.99):
    """True when held-out precision and recall, real and generated, are all at least ``target``."""
    records = [report.heldout] + ([report.generated] if report.generated else [])
    return all(r["precision"] >= target and r["recall"] >= target for r in records)


def finetune_challenge(cfg, out_dir, data_dir=None, network_dir=None, options=None, lambdas=None,
                       **experiment_options):
    """Train, write and measure one FSSL network, or one per lambda of ``lambdas``.

    The one call behind ``graphchallenge finetune``; ``experiment_options``
    go to :class:`FsslExperiment`.

    Returns
    -------
    FinetuneReport, or SweepReport when ``lambdas`` is given
    """
    options = options or FsslOptions()
    options.check()
    # Fail on a missing GPU before minutes of loading and compaction.
    Backend(options.device)
    experiment = FsslExperiment(cfg, data_dir, network_dir, **experiment_options)
    if lambdas is not None:
        return experiment.sweep(lambdas, options, out_dir)
    return experiment.run(options, out_dir)


# ---------------------------------------------------------------- figures

def plot_finetune(report, path):
    """Draw a run: neurons and edges kept per layer, the training curve, inference times.

    Parameters
    ----------
    report : FinetuneReport
    path : path-like
        Image file (PNG, SVG or PDF, by suffix).
    """
    from ..plot import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    figure.suptitle(f"{report.network}: FSSL, lambda {report.lam:g}, "
                    f"{report.compression_rate:.0f}x fewer edges, held-out F1 {report.f1:.3f}")
    layers = np.arange(1, len(report.edges_per_layer) + 1)
    for axis, values, label, compact in (
            (axes[0, 0], report.neurons_per_layer, "output neurons", report.compact_neurons_per_layer),
            (axes[0, 1], report.edges_per_layer, "edges", report.compact_edges_per_layer)):
        axis.step(layers, compact, where="mid", label="exact compaction")
        axis.step(layers, values, where="mid", label="fine-tuned")
        axis.set_yscale("log")
        axis.set_xlabel("layer")
        axis.set_ylabel(label)
        axis.legend()
    history = report.history
    epochs = np.arange(1, len(history) + 1)
    curve = axes[1, 0]
    curve.plot(epochs, [h["fidelity"] for h in history], label="fidelity (relative residual)")
    curve.set_yscale("log")
    curve.set_xlabel(f"epoch ({report.epochs} group lasso, then fine-tuning)")
    curve.set_ylabel("fidelity")
    sparsity = curve.twinx()
    sparsity.plot(epochs, [h["sparsity"] for h in history], color="tab:orange",
                  label="group sparsity")
    sparsity.set_ylabel("group sparsity (neurons removed)")
    curve.axvline(report.epochs + 0.5, color="grey", linestyle=":")
    names = list(report.timing)
    bars = axes[1, 1]
    bars.bar(names, [report.timing[name]["seconds"] for name in names])
    bars.set_ylabel(f"seconds ({report.engine}, {report.timing_inputs:,} inputs, median)")
    bars.set_yscale("log")
    figure.tight_layout()
    save_figure(plt, figure, path)


def plot_sweep(sweep, path):
    """Draw the compression-versus-F1 curve of a lambda sweep (held-out real and generated)."""
    from ..plot import pyplot, save_figure

    if not sweep.points:
        raise GraphChallengeError("no lambda of the sweep left a network to draw")
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    points = sorted(sweep.points, key=lambda p: p.compression_rate)
    rates = [p.compression_rate for p in points]
    axis.plot(rates, [p.f1 for p in points], marker="o", label="held-out real inputs")
    if all(p.generated for p in points):
        axis.plot(rates, [p.generated["f1"] for p in points], marker="s",
                  label="generated inputs")
    for index, p in enumerate(points):
        axis.annotate(f"{p.lam:g}", (p.compression_rate, p.f1), textcoords="offset points",
                      xytext=(4, 4 if index % 2 else -12), fontsize=8)
    axis.axvline(points[0].original_edges / points[0].compact_edges, color="grey", linestyle=":",
                 label="exact compaction")
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(plt.NullFormatter())
    axis.xaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}x"))
    axis.set_xlabel("compression rate (original edges / kept edges)")
    axis.set_ylabel("F1 of the categories")
    axis.set_title(f"{points[0].network}: FSSL lambda sweep")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure(plt, figure, path)
