"""Synthetic challenges: RadiX-Net layers (:mod:`graphchallenge.radixnet`), MNIST-like inputs, reference truth.

The challenge's networks are RadiX-Nets (Robinett & Kepner, arXiv
1905.00416). With ``N = 16 * 2**m`` neurons, ``M = N / 16`` and blocks of
``m`` layers, base layer ``b`` (1..m) is ``kron(ones(16, 16), I + S**s)``
with ``s = 2**(b - 1)`` and ``S`` the cyclic shift over ``M`` neurons::

    W[r, c] != 0  exactly when  ((r - c) mod N) mod M  is 0 or s     (0-based)

every weight 1/16, 32 nonzeros per row and column. Layer ``k`` is base
layer ``((k - 1) mod m) + 1`` with its rows permuted by the permutation of
its block ``(k - 1) // m``; block 0 is not permuted and every later block
has one permutation shared by its ``m`` layers. Without permutations the
neuron1024 generator reproduces the real layers 1..6 exactly; the real
permutations are unknown, so permuted layers share the real ones'
structure, not their values.

The inputs imitate the real images: pen strokes on a 28 x 28 canvas,
upsampled to ``sqrt(N) x sqrt(N)``, binarised and flattened column-major.

Examples
--------
>>> from graphchallenge import synthetic
>>> synthetic.radixnet_layer(1024, 1).nnz
32768
>>> synthetic.radixnet_column_indices(65536, 7).shape
(32, 65536)
"""

import collections
import functools
import gzip
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tqdm import tqdm

from . import catalog, io, layout, radixnet
from .engines.base import Timer
from .engines.reference import apply_layer
from .errors import DataError, GraphChallengeError
from .network import Network
# The RadiX-Net names are found here too (synthetic.radixnet_layer, ...), as they always were.
from .radixnet import (GENERATOR_VERSION, RECORD_NAME, WEIGHT, RadixNetLayers,  # noqa: F401
                       _STREAM_IMAGES, _check_seed, block_length, radixnet_column_indices,
                       radixnet_layer, read_record)

_CANVAS = 28  # MNIST's image side; images are drawn here, then upsampled



def radixnet_network(neurons, n_layers, seed=0, permute=True):
    """A streamed :class:`~graphchallenge.network.Network` of RadiX-Net layers with the challenge bias."""
    cfg = catalog.config(neurons, int(n_layers))
    return Network(RadixNetLayers(neurons, n_layers, seed, permute), cfg.bias,
                   name=f"{cfg.name}-generated", config=cfg)


# ---------------------------------------------------------------- MNIST-like inputs

# Shape of the drawn digits, tuned so that the pixel counts and the
# survival curve on a generated network resemble the real data's (see
# docs/synthetic.md for the measured comparison).
_STROKE_COUNT_P = (0.2, 0.3, 0.5)  # P(1, 2, 3 strokes)
_RADIUS_MEDIAN = 0.95  # pen radius in canvas pixels, lognormal
_RADIUS_SIGMA = 0.25
_ASPECT_RANGE = (0.4, 1.0)  # the digit's width over its height, uniform
_BOX = 18.0  # longer side of the strokes' centre lines, in canvas pixels

_CHUNK = 256  # images drawn per seeded chunk, so image i depends only on (seed, i)
_SAMPLES = 48  # points along a stroke; spacing stays about a pixel for MNIST-sized strokes
_RENDER_BATCH = 64  # images per distance computation (bounds its memory to ~20 MB)


def _draw_strokes(rng, n_images):
    """Pen strokes of ``n_images`` digits: sample points and one pen radius per image.

    Returns ``points`` (n_images, strokes * samples, 2) as (y, x) canvas
    coordinates (unused strokes are moved far off the canvas) and
    ``radius`` (n_images,).
    """
    max_strokes = len(_STROKE_COUNT_P)
    n_strokes = rng.choice(np.arange(1, max_strokes + 1), size=n_images, p=_STROKE_COUNT_P)
    # Cubic Bezier strokes in a box as tall as a digit and as wide as this one (a "1" is narrow).
    aspect = rng.uniform(*_ASPECT_RANGE, size=(n_images, 1, 1))
    control = np.stack([rng.uniform(-1.0, 1.0, size=(n_images, max_strokes, 4)),
                        aspect * rng.uniform(-1.0, 1.0, size=(n_images, max_strokes, 4))],
                       axis=-1)
    radius = rng.lognormal(math.log(_RADIUS_MEDIAN), _RADIUS_SIGMA, size=n_images)
    t = np.linspace(0.0, 1.0, _SAMPLES)
    basis = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], axis=1)
    points = np.einsum("sk,nckd->ncsd", basis, control)
    used = np.broadcast_to((np.arange(max_strokes)[None, :] < n_strokes[:, None])[:, :, None],
                           points.shape[:3])
    # Size-normalise as MNIST does: the longer side of the digit's box
    # becomes _BOX pixels, the box centred on the canvas.
    low = np.where(used[..., None], points, np.inf).min(axis=(1, 2))
    high = np.where(used[..., None], points, -np.inf).max(axis=(1, 2))
    scale = _BOX / np.maximum((high - low).max(axis=1), 1e-9)
    points = (points - ((low + high) / 2)[:, None, None, :]) * scale[:, None, None, None] + _CANVAS / 2
    points[~used] = -1e3
    return points.reshape(n_images, -1, 2), radius


def _render(points, radius):
    """Grey-level canvases (n, 28, 28): full ink within the pen radius, a one-pixel soft edge."""
    centres = np.stack(np.meshgrid(np.arange(_CANVAS), np.arange(_CANVAS), indexing="ij"),
                       axis=-1).reshape(-1, 2).astype(np.float32) + 0.5
    canvases = np.empty((points.shape[0], _CANVAS * _CANVAS), dtype=np.float32)
    for start in range(0, points.shape[0], _RENDER_BATCH):
        batch = points[start:start + _RENDER_BATCH].astype(np.float32)
        # |c - p|^2 = |c|^2 - 2 c.p + |p|^2, the cross term as one matrix product.
        cross = np.matmul(batch, centres.T)  # (n, samples, pixels)
        squared = (np.einsum("nsd,nsd->ns", batch, batch)[:, :, None] - 2.0 * cross
                   + np.einsum("pd,pd->p", centres, centres)[None, None, :])
        distance = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
        ink = radius[start:start + _RENDER_BATCH, None] + 0.5 - distance
        canvases[start:start + _RENDER_BATCH] = np.clip(ink, 0.0, 1.0)
    return canvases.reshape(-1, _CANVAS, _CANVAS)  # [image, y, x]


@functools.lru_cache(maxsize=4)
def _upsampling(side):
    """Bilinear interpolation matrix (side x 28), pixel centres aligned."""
    source = (np.arange(side) + 0.5) * (_CANVAS / side) - 0.5
    low = np.clip(np.floor(source), 0, _CANVAS - 1).astype(int)
    high = np.minimum(low + 1, _CANVAS - 1)
    frac = np.clip(source - low, 0.0, 1.0)
    matrix = np.zeros((side, _CANVAS), dtype=np.float32)
    np.add.at(matrix, (np.arange(side), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(side), high), frac)
    return matrix


def _images(neurons, n_images, rng):
    """``n_images`` binary images flattened column-major, as a CSR matrix."""
    side = math.isqrt(neurons)
    canvases = _render(*_draw_strokes(rng, n_images))
    upsample = _upsampling(side)
    # [image, y, x] -> [image, x, y]: pixel index x * side + y is column-major.
    lit = np.einsum("yi,nij,xj->nxy", upsample, canvases, upsample, optimize=True) >= 0.5
    lit = lit.reshape(n_images, neurons)
    indptr = np.concatenate([[0], np.cumsum(lit.sum(axis=1))])
    pixels = np.nonzero(lit)[1].astype(np.int32)  # row-major: already grouped by image
    return sp.csr_matrix((np.ones(pixels.size), pixels, indptr), shape=(n_images, neurons))


def _check_square(neurons, n_inputs, seed):
    side = math.isqrt(int(neurons))
    if side * side != neurons:
        raise GraphChallengeError(f"images need a square number of neurons (got {neurons})")
    if int(n_inputs) < 1:
        raise GraphChallengeError(f"--inputs must be at least 1 (got {n_inputs})")
    return int(neurons), int(n_inputs), _check_seed(seed)


def mnist_like_inputs(neurons, n_inputs, seed=0, workers=1):
    """Binary MNIST-like images: pen-stroke digits, upsampled and binarised like the real inputs.

    Every image is drawn with strokes of a random pen on MNIST's 28 x 28
    canvas, upsampled bilinearly to ``sqrt(N) x sqrt(N)``, thresholded at
    half ink and flattened column-major (pixel index ``x * sqrt(N) + y``).
    The same seed draws the same digits at every size, so pixel counts grow
    4x per size step (about 100 at N = 1024); image ``i`` depends only on
    ``(seed, i)``, so a longer set starts with a shorter one.

    Parameters
    ----------
    neurons : int
        A perfect square (1024, 4096, 16384, 65536).
    n_inputs : int
    seed : int
    workers : int
        Processes drawing the images (chunks of 256 images are seeded
        independently, so the images do not depend on ``workers``).

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_inputs, neurons)
        Values 1.0.
    """
    neurons, n_inputs, seed = _check_square(neurons, n_inputs, seed)
    blocks = list(_generated_blocks(neurons, n_inputs, seed, workers=workers))
    return _assemble_inputs(blocks, neurons)


def _image_chunk(neurons, seed, chunk, n_inputs):
    """Images ``256 * chunk ...`` (at most up to ``n_inputs``): seeded by ``(seed, chunk)`` alone."""
    rng = np.random.default_rng([seed, _STREAM_IMAGES, chunk])
    return _images(neurons, _CHUNK, rng)[:n_inputs - chunk * _CHUNK]


@dataclass
class _Block:
    """Consecutive image chunks drawn by one task: the images, their categories, their TSV."""

    first_row: int
    row_nnz: np.ndarray  # pixels per image
    pixels: np.ndarray  # 0-based columns, int32, image after image
    categories: np.ndarray = None  # 1-based rows (whole-set numbering) alive after every layer
    members: list = None  # gzip members of the images' TSV lines, one per chunk


def _generate_block(neurons, n_inputs, seed, chunks, n_layers=0, bias=0.0, permute=True,
                    tsv=False):
    """One task of a generation: draw image chunks ``chunks`` and, with ``n_layers``, their truth.

    The truth is the float64 reference through the first ``n_layers``
    RadiX-Net layers; rows are independent, so a block's categories are
    those of the whole set restricted to its rows. With ``tsv``, the images'
    challenge-format text is compressed here, one gzip member per chunk (a
    gzip file may hold several members; every reader concatenates them),
    so that the bytes written do not depend on how chunks are grouped.
    """
    images = [_image_chunk(neurons, seed, chunk, n_inputs) for chunk in chunks]
    first_row = chunks[0] * _CHUNK
    members = None
    if tsv:
        members = [gzip.compress(io.inputs_text(block, chunk * _CHUNK), compresslevel=6, mtime=0)
                   for chunk, block in zip(chunks, images)]
    inputs = sp.vstack(images, format="csr")
    categories = None
    if n_layers:
        activations = inputs
        for k in range(1, n_layers + 1):
            activations = apply_layer(activations, radixnet_layer(neurons, k, seed, permute), bias)
        categories = np.flatnonzero(np.diff(activations.indptr)).astype(np.int64) + first_row + 1
    return _Block(first_row, np.diff(inputs.indptr), inputs.indices.astype(np.int32, copy=False),
                  categories, members)


def _worker_count(workers):
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    if int(workers) < 1:
        raise GraphChallengeError(f"workers must be at least 1 (got {workers})")
    return int(workers)


def _generated_blocks(neurons, n_inputs, seed, workers=1, n_layers=0, bias=0.0, permute=True,
                      tsv=False, pool=None):
    """:func:`_generate_block` over every chunk of ``n_inputs`` images, blocks in row order.

    With several workers, about four tasks per worker balance the load; in
    one process a task is one chunk, so only one chunk's activations are
    held at a time. How chunks are grouped never changes what is drawn.
    ``pool`` is an executor to use (else one is made when ``workers > 1``).
    """
    n_chunks = math.ceil(n_inputs / _CHUNK)
    workers = _worker_count(workers)
    per_task = 1 if workers == 1 else max(1, math.ceil(n_chunks / (4 * workers)))
    tasks = [list(range(start, min(start + per_task, n_chunks)))
             for start in range(0, n_chunks, per_task)]
    arguments = (neurons, n_inputs, seed)
    options = {"n_layers": n_layers, "bias": bias, "permute": permute, "tsv": tsv}
    if workers == 1 and pool is None:
        for chunks in tasks:
            yield _generate_block(*arguments, chunks, **options)
        return
    own_pool = pool is None
    if own_pool:
        pool = _process_pool(workers)
    try:
        # A window of tasks in flight, results dropped once yielded: the
        # finished blocks waiting for the consumer stay few, whatever the size.
        pending = collections.deque()
        for chunks in tasks:
            pending.append(pool.submit(_generate_block, *arguments, chunks, **options))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        if own_pool:
            pool.shutdown(cancel_futures=True)


def _process_pool(workers):
    """Worker processes for generation (forked where the platform allows: no re-import)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(workers, mp_context=context)


def _assemble_inputs(blocks, neurons):
    """The CSR input matrix of ``blocks`` (in row order); every value 1."""
    row_nnz = np.concatenate([block.row_nnz for block in blocks])
    indptr = np.zeros(row_nnz.size + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=indptr[1:])
    index = np.int32 if indptr[-1] < 2**31 else np.int64
    pixels = np.concatenate([block.pixels for block in blocks]).astype(index, copy=False)
    return sp.csr_matrix((np.ones(pixels.size), pixels, indptr.astype(index, copy=False)),
                         shape=(row_nnz.size, neurons))


# ---------------------------------------------------------------- whole challenges

#: How a generated challenge is stored: the challenge's TSV files, or binary (see generate_challenge).
FORMATS = ("tsv", "binary")


@dataclass
class GeneratedChallenge:
    """What :func:`generate_challenge` wrote; ``to_dict()`` is what ``--json`` prints."""

    neurons: int
    layers: int
    n_inputs: int
    seed: int
    permute: bool
    data_dir: str
    n_categories: int
    input_nnz: int
    edges: int
    seconds: float
    generator_version: int = GENERATOR_VERSION
    format: str = "tsv"
    workers: int = 1

    def to_dict(self):
        return asdict(self)

    def text(self):
        """The human-readable summary."""
        stored = ("challenge TSV files" if self.format == "tsv"
                  else "binary: CSR inputs, layers rebuilt from the record")
        return "\n".join([
            f"generated    neuron{self.neurons}-l{self.layers} (seed {self.seed}"
            + ("" if self.permute else ", no permutations") + ")",
            f"data folder  {self.data_dir} ({stored})",
            f"edges        {self.edges:,}",
            f"inputs       {self.n_inputs:,} ({self.input_nnz / self.n_inputs:.1f} pixels per image)",
            (f"categories   {self.n_categories} ({self.n_categories / self.n_inputs:.1%} of the "
             "inputs), from the float64 reference" if self.n_categories is not None
             else "categories   no truth computed (validate with run --truth-inputs K)"),
            f"time         {self.seconds:.1f} s on {self.workers} "
            + ("process" if self.workers == 1 else "processes"),
        ])


def _as_config(cfg):
    if isinstance(cfg, catalog.Config):
        return cfg
    neurons, layers = cfg
    return catalog.config(int(neurons), int(layers))


def _check_format(fmt):
    if fmt not in FORMATS:
        raise GraphChallengeError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    return fmt


def _write_record(data_dir, record):
    text = json.dumps(record, indent=1, sort_keys=True).encode()
    io._write_atomic(Path(data_dir) / RECORD_NAME, lambda handle: handle.write(text))


def _parameters(n_inputs, seed, permute, fmt="tsv"):
    return {"inputs": int(n_inputs), "seed": int(seed), "permute": bool(permute),
            "generator_version": GENERATOR_VERSION, "format": fmt}


def _entry_parameters(entry, keys):
    return {key: radixnet.entry_format(entry) if key == "format" else entry.get(key) for key in keys}


def is_generated(cfg, data_dir, n_inputs, seed=0, permute=True, format="tsv"):
    """True when ``data_dir`` holds challenge ``cfg`` generated with exactly these parameters."""
    cfg = _as_config(cfg)
    root = Path(data_dir)
    if not root.is_dir():
        return False
    entry = read_record(root)["neurons"].get(str(cfg.neurons))
    wanted = _parameters(n_inputs, seed, permute, _check_format(format))
    if not entry or cfg.layers not in entry.get("layers", []):
        return False
    if _entry_parameters(entry, wanted) != wanted:
        return False
    paths = layout.server_paths(cfg, root)
    if format == "binary":
        return layout.binary_inputs(cfg, root).is_file() and paths.truth.is_file()
    return (paths.inputs.is_file() and paths.truth.is_file()
            and all((paths.network_dir / cfg.layer_name(k)).is_file()
                    for k in range(1, cfg.layers + 1)))


def generated_network(cfg, data_dir):
    """The network of ``cfg`` in a binary generated folder, rebuilt from its record; else None.

    See :func:`graphchallenge.network.generated_network`.
    """
    from .network import generated_network

    return generated_network(_as_config(cfg), data_dir)


def _generated_files(cfg, root, fmt):
    """The files a generation of ``cfg.neurons`` in format ``fmt`` writes (any depth's truth aside)."""
    paths = layout.server_paths(cfg, root)
    if fmt == "binary":
        return [layout.binary_inputs(cfg, root)]
    layers = sorted(paths.network_dir.glob(f"n{cfg.neurons}-l*.tsv")) if paths.network_dir.is_dir() else []
    return [paths.inputs] + layers


def _claim_folder(cfg, root, parameters):
    """Check that generating ``cfg`` in ``root`` overwrites only generated files.

    Records the folder as being generated with ``parameters`` before any
    file is written, listing no finished depth for ``cfg.neurons`` but those
    still valid, so that an interrupted generation never looks finished and
    may be repeated. Files of the other format, if the folder held it, are
    removed (they were generated, the record says so). Returns the record.
    """
    record = read_record(root)
    key = str(cfg.neurons)
    entry = record["neurons"].get(key)
    paths = layout.server_paths(cfg, root)
    if entry is None:
        existing = [p for p in (paths.inputs, layout.binary_inputs(cfg, root), paths.truth,
                                paths.network_dir) if p.exists()]
        if existing:
            raise DataError(f"{existing[0]} exists and was not generated; generate into another "
                            "--data-dir rather than overwrite challenge files")
        entry = {"layers": []}
    same = _entry_parameters(entry, parameters) == parameters
    kept = []
    for depth in entry.get("layers", []):
        # The truth of another depth stays valid only for the same inputs and network.
        if same and depth != cfg.layers:
            kept.append(depth)
        else:
            (root / catalog.config(cfg.neurons, depth).truth_path).unlink(missing_ok=True)
    record["neurons"][key] = dict(parameters, layers=kept)
    _write_record(root, record)
    old_format = radixnet.entry_format(entry)
    if "generator_version" in entry and old_format != parameters["format"]:
        for path in _generated_files(cfg, root, old_format):
            path.unlink(missing_ok=True)
    return record


def _write_layer_file(path, neurons, k, seed, permute):
    io.write_layer(path, radixnet_layer(neurons, k, seed, permute))


def generate_challenge(cfg, n_inputs, seed=0, data_dir=None, progress=True, permute=True,
                       format="tsv", workers=None, truth=True):
    """Write a generated challenge (inputs, truth and, as TSV, layers) in the server's layout.

    The images are drawn in independently seeded chunks of 256, and each
    chunk is run through the float64 reference, layer by layer, in worker
    processes: the truth is what the reference gives, and neither it nor
    the files depend on the number of workers. No process holds more than
    one layer and a block of rows' activations. ``generated.json`` in the
    data folder records the parameters, so that a folder is reused only
    when it holds exactly what is asked for (see :func:`is_generated`).

    Parameters
    ----------
    cfg : catalog.Config or (neurons, layers)
    n_inputs : int
    seed : int
        Seeds the images and the network's permutations.
    data_dir : path-like, optional
        See :func:`graphchallenge.layout.data_dir`.
    progress : bool
        Draw a progress bar on stderr.
    permute : bool
        See :func:`radixnet_column_indices`.
    format : {"tsv", "binary"}
        ``tsv``: the challenge's own files (layer TSVs, gzipped input TSV),
        which any challenge tool reads. ``binary``: the inputs in the binary
        CSR format (``mnist/sparse-images-{N}.csr``), no layer files at all
        (:func:`graphchallenge.network.load_network` rebuilds them from the
        record), the truth as TSV: 65536 x 1920 as TSV would take about
        100 GB of text and hours to write; binary takes the inputs' size.
    workers : int, optional
        Processes to use; by default every CPU this process may use.
    truth : bool
        Run the reference and write the truth. Without it only the network
        and the inputs are written (no depth is recorded as finished), for
        runs that validate on a subset (``run --truth-inputs K``) at sizes
        where the reference on every input would take hours.

    Returns
    -------
    GeneratedChallenge

    Raises
    ------
    DataError
        The folder holds challenge files that were not generated (they are
        never overwritten), or cannot be written.

    Examples
    --------
    >>> generate_challenge((1024, 12), 200, seed=1, data_dir="gen")  # doctest: +SKIP
    """
    cfg = _as_config(cfg)
    fmt = _check_format(format)
    if int(n_inputs) < 1:
        raise GraphChallengeError(f"--inputs must be at least 1 (got {n_inputs})")
    neurons, n_inputs, seed = _check_square(cfg.neurons, n_inputs, seed)
    workers = _worker_count(workers)
    root = layout.data_dir(data_dir)
    parameters = _parameters(n_inputs, seed, permute, fmt)
    paths = layout.server_paths(cfg, root)
    tsv = fmt == "tsv"
    try:
        root.mkdir(parents=True, exist_ok=True)
        record = _claim_folder(cfg, root, parameters)
        pool = _process_pool(workers) if workers > 1 else None
        with Timer() as timer, tqdm(total=n_inputs + (cfg.layers if tsv else 0), unit="step",
                                    desc=f"generate {cfg.name}", disable=not progress,
                                    leave=False) as bar:
            try:
                layer_jobs = []
                if tsv:
                    # Layer files are independent of the rows: written side by side with them.
                    submit = pool.submit if pool else (lambda f, *a: f(*a))
                    for k in range(1, cfg.layers + 1):
                        layer_jobs.append(submit(_write_layer_file,
                                                 paths.network_dir / cfg.layer_name(k),
                                                 neurons, k, seed, permute))
                        if pool is None:
                            bar.update()
                blocks = _generated_blocks(neurons, n_inputs, seed, workers,
                                           cfg.layers if truth else 0, cfg.bias, permute,
                                           tsv=tsv, pool=pool)
                found, input_nnz = [], 0

                def arriving():
                    nonlocal input_nnz
                    for block in blocks:
                        if block.categories is not None:
                            found.append(block.categories)
                        input_nnz += block.pixels.size
                        bar.update(block.row_nnz.size)
                        yield block

                # The inputs go to disk block by block: never assembled in memory.
                if tsv:
                    def write_members(handle):
                        for block in arriving():
                            for member in block.members:
                                handle.write(member)

                    io._write_atomic(paths.inputs, write_members)
                else:
                    io.save_csr_rows(layout.binary_inputs(cfg, root),
                                     ((block.row_nnz, block.pixels) for block in arriving()),
                                     neurons)
                for job in layer_jobs:
                    if pool is not None:
                        job.result()
                        bar.update()
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
            categories = np.concatenate(found) if truth else None
            if truth:
                io.write_categories(paths.truth, categories)
        if truth:
            entry = record["neurons"][str(cfg.neurons)]
            entry["layers"] = sorted(set(entry["layers"]) | {cfg.layers})
            _write_record(root, record)
    except OSError as exc:
        where = exc.filename or root
        raise DataError(f"cannot write the generated challenge: {where}: "
                        f"{exc.strerror or exc}") from None
    return GeneratedChallenge(
        neurons=cfg.neurons, layers=cfg.layers, n_inputs=n_inputs, seed=seed,
        permute=bool(permute), data_dir=str(root),
        n_categories=int(categories.size) if truth else None,
        input_nnz=int(input_nnz), edges=cfg.edges, seconds=timer.seconds, format=fmt,
        workers=workers)


def demo_folder(data_dir, cfg, n_inputs, seed):
    """Where ``graphchallenge demo`` keeps its generated challenge under ``data_dir``."""
    cfg = _as_config(cfg)
    return Path(data_dir) / "generated" / f"{cfg.name}-s{int(seed)}-i{int(n_inputs)}"
