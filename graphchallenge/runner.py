"""One challenge run: load, infer (timed), validate, report.

This is the library call behind ``graphchallenge run``::

    >>> from graphchallenge import catalog, runner
    >>> report = runner.run(catalog.config(1024, 120), data_dir="data")  # doctest: +SKIP
    >>> report.passed, report.edges_per_second                          # doctest: +SKIP
"""

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from . import derived, engines, io, network as network_mod
from .errors import GraphChallengeError
from .validate import validate

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """The outcome of a run; ``to_dict()`` is what ``--json`` prints."""

    neurons: int
    layers: int
    n_inputs: int
    edges: int
    engine: str
    infer_seconds: float
    edges_per_second: float
    n_categories: int
    passed: bool
    n_truth: int = None
    prepare_seconds: float = 0.0
    rechecked_rows: int = 0
    network: str = ""
    network_edges: int = None
    tile: int = 1
    validation: dict = None
    live_rows: list = None
    layer_seconds: list = None
    files: dict = field(default_factory=dict)
    ranks: int = 1
    rank_seconds: list = None
    categories: list = None
    truth_source: str = None
    truth_inputs: int = None

    def to_dict(self):
        return asdict(self)

    def text(self):
        """The human-readable report."""
        lines = [
            f"network      {self.network} ({self.layers} layers of {self.neurons} neurons)",
            f"edges        {self.edges:,}" + (f" (challenge count; this network runs "
                                              f"{self.network_edges:,})"
                                              if self.network_edges not in (None, self.edges) else ""),
            f"inputs       {self.n_inputs:,}" + (f" ({self.tile} tiles)" if self.tile > 1 else ""),
            f"engine       {self.engine}" + (f" on {self.ranks} MPI ranks (slowest rank timed)"
                                              if self.ranks > 1 else ""),
            f"inference    {self.infer_seconds:.4f} s  (+{self.prepare_seconds:.3f} s preparation, untimed)",
            f"rate         {self.edges_per_second:.4g} edges/s",
            f"categories   {self.n_categories}",
        ]
        if self.rechecked_rows:
            lines.append(f"rechecked    {self.rechecked_rows} rows near a threshold, in float64")
        if self.validation is None:
            lines.append("validation   no truth file: not validated")
        else:
            from .validate import Validation
            lines.append(f"validation   {Validation(**self.validation).summary()}"
                         + (f" against the {self.truth_source}" if self.truth_inputs else ""))
        return "\n".join(lines)


def tile_inputs(inputs, truth, tile):
    """Stack ``inputs`` ``tile`` times (row ``r + n*t``) and shift the truth the same way."""
    if tile == 1:
        return inputs, truth
    n = inputs.shape[0]
    tiled = sp.vstack([inputs] * tile, format="csr")
    if truth is not None:
        truth = (truth[None, :] + n * np.arange(tile)[:, None]).ravel()
    return tiled, truth


#: Rows below which a truth subset is not worth splitting over processes.
_MIN_TRUTH_ROWS_PER_WORKER = 256

# What forked truth workers read: set before the pool forks, inherited
# copy-on-write, so no worker receives a pickled copy of the network.
_TRUTH_JOB = {}


def _truth_block(start, stop):
    from .engines.reference import ReferenceEngine

    network, inputs = _TRUTH_JOB["job"]
    return ReferenceEngine().infer(network, io.row_block(inputs, start, stop)).categories + start


def reference_truth(network, inputs, n_rows, progress=False, workers=None):
    """The float64 reference's categories of the first ``n_rows`` of ``inputs``.

    The truth of a run too large for the plain reference on every input:
    rows are independent, so the categories of the first ``n_rows`` are
    those of the whole run restricted to rows ``<= n_rows``. The reference
    runs on ``network.exact_reference``, so a derived network is checked
    against its original, and a fast engine never against itself.

    ``workers`` processes (default: every CPU this process may use, at most
    one per 256 rows) take a contiguous block of rows each; they are forked,
    so they share the loaded network instead of copying it. Where the
    platform cannot fork, one process does it all.
    """
    import multiprocessing

    from tqdm import tqdm

    from .engines.reference import ReferenceEngine

    n_rows = int(n_rows)
    if not 1 <= n_rows <= inputs.shape[0]:
        raise GraphChallengeError(f"--truth-inputs must be in 1..{inputs.shape[0]} (the inputs "
                                  f"of the run; got {n_rows})")
    exact, rows = network.exact_reference, io.row_block(inputs, 0, n_rows)
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    workers = max(1, min(int(workers), n_rows // _MIN_TRUTH_ROWS_PER_WORKER))
    if "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    log.info("computing the truth: the reference on the first %d inputs, %d processes",
             n_rows, workers)
    if workers == 1:
        return ReferenceEngine().infer(exact, rows, progress=progress).categories
    from concurrent.futures import ProcessPoolExecutor

    bounds = np.linspace(0, n_rows, workers + 1).astype(int)
    _TRUTH_JOB["job"] = (exact, rows)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_truth_block, int(a), int(b))
                       for a, b in zip(bounds[:-1], bounds[1:])]
            parts = [future.result() for future in tqdm(
                futures, desc="truth (reference)", unit="block", disable=not progress,
                leave=False)]
    finally:
        _TRUTH_JOB.clear()
    return np.concatenate(parts).astype(np.int64)


def categories_to_check(categories, truth_inputs=None):
    """The categories a truth covers: all of them, or with ``truth_inputs`` K those ``<= K``."""
    return categories if truth_inputs is None else categories[categories <= truth_inputs]


def make_report(challenge, inputs, truth, result, tile=1, challenge_edges=None,
                truth_inputs=None):
    """Build the RunReport of ``result`` (an InferenceResult on ``inputs``).

    With ``truth_inputs`` K, ``truth`` holds the categories of the first K
    inputs only and the run is validated on those rows.
    """
    cfg = challenge.config
    if challenge_edges is None:
        challenge_edges = challenge.network.exact_reference.edges
    checked = categories_to_check(result.categories, truth_inputs)
    validation = validate(checked, truth) if truth is not None else None
    if truth is None:
        truth_source = None
    elif truth_inputs is not None:
        truth_source = f"reference on first {truth_inputs} inputs"
    else:
        truth_source = "file"
    n_inputs = inputs.shape[0]
    return RunReport(
        neurons=cfg.neurons, layers=cfg.layers, n_inputs=n_inputs, edges=challenge_edges,
        engine=result.engine, infer_seconds=result.infer_seconds,
        edges_per_second=n_inputs * challenge_edges / result.infer_seconds
        if result.infer_seconds > 0 else float("inf"),
        n_categories=int(result.categories.size),
        passed=bool(validation.passed) if validation else False,
        n_truth=validation.n_truth if validation else None,
        prepare_seconds=result.prepare_seconds, rechecked_rows=result.rechecked_rows,
        network=challenge.network.name, network_edges=challenge.network.edges, tile=tile,
        validation=validation.to_dict() if validation else None,
        live_rows=result.live_rows, layer_seconds=result.layer_seconds, files=challenge.files,
        categories=result.categories.tolist(), ranks=result.details.get("ranks", 1),
        rank_seconds=result.details.get("rank_seconds"), truth_source=truth_source,
        truth_inputs=truth_inputs)


def infer_and_validate(challenge, engine="auto", tile=1, progress=False, engine_options=None,
                       challenge_edges=None, truth_inputs=None):
    """Run an already loaded :class:`~graphchallenge.network.Challenge`; returns a RunReport.

    ``engine`` is a name or an :class:`~graphchallenge.engines.base.Engine`.
    ``challenge_edges`` is the edge count of the original challenge network
    (the rate's numerator); by default that of ``network.exact_reference``.
    With ``truth_inputs`` K, the truth is :func:`reference_truth` of the
    first K inputs run (after tiling) instead of ``challenge.truth``.
    """
    engine_obj = (engine if isinstance(engine, engines.Engine)
                  else engines.get_engine(engine, **(engine_options or {})))
    inputs, truth = tile_inputs(challenge.inputs, challenge.truth, tile)
    if truth_inputs is not None:
        # Before the timed run: a bad K is reported before minutes of inference.
        truth = reference_truth(challenge.network, inputs, truth_inputs, progress)
    result = engine_obj.infer(challenge.network, inputs, progress=progress)
    return make_report(challenge, inputs, truth, result, tile, challenge_edges, truth_inputs)


def load(cfg, data_dir=None, n_inputs=None, network_dir=None, need_truth=True, progress=False):
    """Load challenge ``cfg`` and, with ``network_dir``, swap in that derived network.

    Returns ``(challenge, challenge_edges)``: the edge count of the original
    network, which the challenge rate is always quoted against.
    """
    challenge = network_mod.load_challenge(cfg, data_dir, n_inputs=n_inputs,
                                           need_truth=need_truth, progress=progress)
    challenge_edges = challenge.network.edges
    if network_dir is not None:
        challenge.network = derived.load(network_dir, original=challenge.network)
        challenge.files["compact_network"] = str(network_dir)
    return challenge, challenge_edges


def run(cfg, data_dir=None, engine="auto", n_inputs=None, tile=1, network_dir=None,
        progress=False, engine_options=None, truth_inputs=None):
    """Load challenge ``cfg`` from ``data_dir``, run it on ``engine`` and validate it.

    Parameters
    ----------
    cfg : catalog.Config
    data_dir : path-like, optional
        See :func:`graphchallenge.layout.data_dir`.
    engine : str
        ``auto``, ``reference``, ``cpu``, ``gpu`` or ``gpu-cusparse``.
    n_inputs : int, optional
        Use only the first ``n_inputs`` images (and truth rows <= n_inputs).
    tile : int
        Repeat the inputs ``tile`` times (to reach 60,000 from a subset).
    network_dir : path-like, optional
        Run a derived network (see :mod:`graphchallenge.derived`) instead of
        the original; validation is still against the original truth.
    truth_inputs : int, optional
        Validate against the float64 reference's categories of the first
        ``truth_inputs`` inputs (computed here, see :func:`reference_truth`)
        instead of the truth file, which is then not needed: for sizes and
        depths where the plain reference on every input is too slow.

    Returns
    -------
    RunReport
    """
    # The engine first: a missing GPU is reported before minutes of loading.
    engine_obj = engines.get_engine(engine, **(engine_options or {}))
    challenge, challenge_edges = load(cfg, data_dir, n_inputs, network_dir,
                                      need_truth=truth_inputs is None, progress=progress)
    if truth_inputs is not None:
        challenge.truth = None  # the reference's subset truth replaces the file's
    return infer_and_validate(challenge, engine_obj, tile, progress,
                              challenge_edges=challenge_edges, truth_inputs=truth_inputs)
