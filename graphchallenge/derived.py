"""Derived networks on disk: the format both compaction and fine-tuning write.

A derived network is one made from a challenge network: its exact
compaction (:mod:`graphchallenge.compress`) or an FSSL fine-tuning of it
(:mod:`graphchallenge.fssl`). Either is stored as a folder of
challenge-format TSV layers (now rectangular) beside a ``manifest.json``
that says what kind it is and identifies the source network by content.
This module writes (:func:`save`), reads (:func:`read_manifest`,
:func:`load`) and checks that format, including that the network a
derived one is run in place of is the one it was made from. It imports
neither algorithm, so loading a network (``graphchallenge run --network
DIR``) needs neither.

The format
----------
``DIR/layer-0001.tsv ...`` in the challenge's layer format (1-based
``row col value``), and ``DIR/manifest.json``::

    {"format": "graphchallenge-compact", "version": 1,
     "kind": "exact" | "inputs-aware" | "fssl" | ...,
     "bias": -0.3, "n_features": 1024,
     "source": {"config": "neuron1024-l120", "neurons": 1024, "layers": 120,
                "bias": -0.3, "n_features": 1024, "truth": "neuron1024-l120-categories.tsv",
                "layer_sha256": ["..."], "files": {...}},
     "layers": [{"file": "layer-0001.tsv", "shape": [1024, 64], "edges": 2048,
                 "sha256": "...", "neurons": [[0, 64, ...], ...]}, ...],
     "exact_only_on": {...},   # inputs-aware only
     "report": {...}, "extra": {...}}

``layer_sha256`` identifies the source network by content (see
:func:`layer_digest`), ``sha256`` in a layer entry is the hash of the TSV
file's bytes, and ``neurons[j]`` lists the source network's output neurons
(0-based) that derived output neuron j stands for.

The exact kinds (:data:`EXACT_KINDS`) answer to their source: loaded with
it, they get ``origin=`` the source, so every engine rechecks rows near a
threshold against it (:mod:`graphchallenge.engines.exactness`). Any other
kind is an approximate network, its own reference.

Examples
--------
>>> from graphchallenge import derived
>>> small = derived.load("n1024-compact", original=challenge.network)   # doctest: +SKIP
>>> derived.read_manifest("n1024-compact")["kind"]                     # doctest: +SKIP
'exact'
"""

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import __version__, io
from .errors import DataError
from .network import Network

log = logging.getLogger(__name__)

FORMAT = "graphchallenge-compact"
VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Kinds whose network computes the source's function exactly (in real
#: arithmetic, and on every input or on the recorded inputs): they answer to
#: the source network (``origin``). Any other kind (e.g. ``"fssl"``) is an
#: approximate network, its own reference.
EXACT_KINDS = ("exact", "inputs-aware")


def layer_file_name(k):
    """File name of derived layer ``k`` (1-based): ``layer-0001.tsv``."""
    return f"layer-{k:04d}.tsv"


# ---------------------------------------------------------------- identity

def layer_digest(matrix):
    """sha256 of a sparse matrix's content, independent of how it was stored.

    Hashes the shape and the canonical CSR arrays (duplicates summed, zeros
    dropped, column indices sorted) as little-endian int64/float64, so a
    layer read from TSV, from the binary cache or built in memory gives the
    same digest.
    """
    csr = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    digest = hashlib.sha256(json.dumps(list(csr.shape)).encode())
    for array, dtype in ((csr.indptr, "<i8"), (csr.indices, "<i8"), (csr.data, "<f8")):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_identity(source_network, source_cfg, source_files):
    identity = {}
    if source_cfg is not None:
        identity.update(config=source_cfg.name, neurons=source_cfg.neurons,
                        layers=source_cfg.layers, truth=source_cfg.truth_name)
    if source_network is not None:
        identity.setdefault("config", source_network.name)
        identity.update(layers=source_network.n_layers, bias=source_network.bias,
                        n_features=source_network.n_features,
                        outputs=[shape[1] for shape in source_network.shapes],
                        layer_sha256=[layer_digest(w) for w in source_network.layers])
    if source_files:
        identity["files"] = {str(role): str(path) if path is not None else None
                             for role, path in dict(source_files).items()}
    return identity


# ---------------------------------------------------------------- writing

def _check_groups(network, groups, source_outputs):
    if groups is None or len(groups) != network.n_layers:
        raise ValueError(f"groups needs one entry per layer ({network.n_layers})")
    for k, (layer_groups, shape) in enumerate(zip(groups, network.shapes), 1):
        if len(layer_groups) != shape[1]:
            raise ValueError(f"layer {k}: {len(layer_groups)} neuron groups for {shape[1]} outputs")
        members = [int(m) for group in layer_groups for m in group]
        if any(len(group) == 0 for group in layer_groups) or len(set(members)) != len(members):
            raise ValueError(f"layer {k}: every neuron needs at least one source neuron, "
                             "and no source neuron may appear twice")
        limit = source_outputs[k - 1] if source_outputs else None
        if members and (min(members) < 0 or (limit is not None and max(members) >= limit)):
            raise ValueError(f"layer {k}: source neuron numbers must be in 0..{limit}")


def save(network, out_dir, source_cfg=None, source_files=None, kind=None, groups=None,
         extra=None, source_network=None, report=None, exact_only_on=None):
    """Write a derived network: ``layer-0001.tsv ...`` and ``manifest.json``.

    The folder is built beside ``out_dir`` and moved into place at the end,
    so an interrupted write never leaves a folder that looks complete.
    Exact compaction (:func:`graphchallenge.compress.save_compact`) and
    fine-tuning (:meth:`graphchallenge.fssl.FsslExperiment.run`) both write
    through this function.

    Parameters
    ----------
    network : Network
        The derived network.
    out_dir : path-like
        Must be absent, empty, or an earlier derived-network folder (which
        is replaced).
    source_cfg : catalog.Config, optional
        The challenge configuration the source network belongs to.
    source_files : dict, optional
        ``{role: path}`` of the source's files (as ``Challenge.files``),
        recorded for provenance.
    kind : str
        ``"exact"``, ``"inputs-aware"`` or the name of an approximate method
        (``"fssl"``); required.
    groups : list
        Per layer, for each output neuron, the list of source output neurons
        (0-based) it stands for; required.
    extra : dict, optional
        JSON-serialisable metadata stored as ``"extra"`` (e.g. training
        settings); returned by :func:`read_manifest`.
    source_network : Network, optional
        The network this one was derived from; its per-layer content
        digests identify it in the manifest. Defaults to ``network.origin``.
    report : dict, optional
        Stored as ``"report"`` (a compaction's report).
    exact_only_on : dict, optional
        Stored as ``"exact_only_on"``: the inputs an inputs-aware network is
        exact on (``{"count", "inputs_sha256"}``; the inputs' file name is
        added from ``source_files``).

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    source_network = source_network or network.origin
    if not kind:
        raise ValueError("saving a derived network needs its kind (e.g. 'fssl')")
    source_cfg = source_cfg or (source_network.config if source_network is not None else None)
    _check_groups(network, groups, [shape[1] for shape in source_network.shapes]
                  if source_network is not None else None)
    if exact_only_on is not None and source_files and source_files.get("inputs"):
        exact_only_on = dict(exact_only_on, file=Path(source_files["inputs"]).name)

    out_dir = check_out_dir(out_dir)
    try:
        building = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.",
                                         suffix=".part"))
    except OSError as exc:
        raise DataError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    try:
        entries = []
        for k, (weights, layer_groups) in enumerate(zip(network.layers, groups), 1):
            if weights.nnz == 0:
                raise DataError(f"layer {k} of {network.name} has no edges; a network with an "
                                "empty layer gives no categories and cannot be saved")
            path = building / layer_file_name(k)
            io.write_layer(path, weights)
            entries.append({"file": path.name, "shape": [int(n) for n in weights.shape],
                            "edges": int(weights.nnz), "sha256": _file_sha256(path),
                            "neurons": [[int(m) for m in group] for group in layer_groups]})
        manifest = {
            "format": FORMAT, "version": VERSION, "kind": kind, "bias": network.bias,
            "n_features": network.n_features,
            "source": _source_identity(source_network, source_cfg, source_files),
            "layers": entries, "edges": int(sum(entry["edges"] for entry in entries)),
            "created_by": f"graphchallenge {__version__}"}
        if exact_only_on is not None:
            manifest["exact_only_on"] = exact_only_on
        if report is not None:
            manifest["report"] = report
        if extra is not None:
            manifest["extra"] = extra
        text = _json_text(manifest) + "\n"
        io._write_atomic(building / MANIFEST_NAME, lambda handle: handle.write(text.encode()))
        _readable_by_umask(building)
        _move_into_place(building, out_dir)
    except OSError as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise DataError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out_dir


def _json_text(value, depth=0):
    """JSON with one key per line, but lists of numbers and flat records on one line each."""
    inner = " " * (depth + 1)
    nested = isinstance(value, dict) and any(isinstance(item, (dict, list)) for item in value.values())
    if nested or (depth == 0 and isinstance(value, dict)):
        items = [f"{inner}{json.dumps(str(key))}: {_json_text(item, depth + 1)}"
                 for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        items = [inner + _json_text(item, depth + 1) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * depth + "]"
    return json.dumps(value, separators=(",", ":") if isinstance(value, list) else None)


def _readable_by_umask(folder):
    # mkdtemp/mkstemp create private (0700/0600) entries; a saved network
    # should get the permissions any other file of the user's would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def check_out_dir(out_dir):
    """``out_dir`` made absolute, its parent created, after checking it may be replaced.

    Called by :func:`save`, and by callers that want to fail before long
    work rather than after it.
    """
    try:
        # "." or "x/.." need a real name and parent for the final rename.
        out_dir = Path(out_dir).resolve()
        if out_dir.exists():
            if not out_dir.is_dir():
                raise DataError(f"{out_dir} exists and is not a folder; choose another --out")
            if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
                raise DataError(f"{out_dir} exists and is not a compact-network folder (no "
                                f"{MANIFEST_NAME}); choose another --out or empty it")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def _move_into_place(building, out_dir):
    # rename() cannot replace a non-empty folder: move the old one aside first,
    # and only delete it once the new one is in place.
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
        os.replace(out_dir, old / out_dir.name)
    os.replace(building, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading

def _manifest_error(manifest_path, message):
    return DataError(f"{manifest_path}: {message}")


def _is_count(value, minimum=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def read_manifest(path):
    """Read and check a derived network's ``manifest.json`` (the folder or the file).

    Checks the format, the version, the fields, each layer's file name and
    shape, and that each layer's inputs are the previous layer's outputs.
    The layer files themselves are checked by :func:`load`.

    Returns
    -------
    dict
        The manifest, ``extra`` included.

    Raises
    ------
    DataError
        Naming the manifest and what is wrong.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path
    if not manifest_path.is_file():
        if not path.exists():
            raise DataError(f"{path}: no such compact-network folder")
        raise DataError(f"{path}: no {MANIFEST_NAME}; not a folder written by "
                        "`graphchallenge compress` or `graphchallenge finetune`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _manifest_error(manifest_path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _manifest_error(manifest_path, f"cannot read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _manifest_error(manifest_path, f"not a compact-network manifest (\"format\" is not "
                                             f"{FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise _manifest_error(manifest_path, f"version {manifest.get('version')!r} is not supported "
                                             f"(this graphchallenge reads version {VERSION})")
    if not isinstance(manifest.get("kind"), str) or not manifest["kind"]:
        raise _manifest_error(manifest_path, "no \"kind\"")
    bias = manifest.get("bias")
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
        raise _manifest_error(manifest_path, "\"bias\" is not a finite number")
    if not _is_count(manifest.get("n_features"), 1):
        raise _manifest_error(manifest_path, "\"n_features\" is not a positive integer")
    if not isinstance(manifest.get("source"), dict):
        raise _manifest_error(manifest_path, "no \"source\" record")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _manifest_error(manifest_path, "\"layers\" is not a non-empty list")
    inputs = manifest["n_features"]
    for k, entry in enumerate(layers, 1):
        if not isinstance(entry, dict):
            raise _manifest_error(manifest_path, f"layer {k} is not an object")
        name = entry.get("file")
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise _manifest_error(manifest_path, f"layer {k}: \"file\" must be a file name in the "
                                                 "same folder")
        shape = entry.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_count(n, 1) for n in shape)):
            raise _manifest_error(manifest_path, f"layer {k} ({name}): \"shape\" must be [inputs, "
                                                 "outputs], two positive integers")
        if shape[0] != inputs:
            given = "the network has" if k == 1 else f"layer {k - 1} gives"
            raise _manifest_error(manifest_path, f"layer {k} ({name}) takes {shape[0]} inputs but "
                                                 f"{given} {inputs}")
        if not _is_count(entry.get("edges")):
            raise _manifest_error(manifest_path, f"layer {k} ({name}): \"edges\" is not a count")
        neurons = entry.get("neurons")
        if neurons is not None and (not isinstance(neurons, list) or len(neurons) != shape[1]):
            raise _manifest_error(manifest_path, f"layer {k} ({name}): \"neurons\" must list the "
                                                 f"source neurons of each of its {shape[1]} outputs")
        inputs = shape[1]
    return manifest


def _original_digests(original, n_layers):
    """Content digests of ``original``'s layers worth computing for an identity check.

    All of them for a network in memory (a fraction of a second for
    neuron1024 x 120); for one read from files on demand only the first and
    the last layer, since hashing a deep network means reading all of it.
    """
    if isinstance(original.layers, list):
        return {k: layer_digest(w) for k, w in enumerate(original.layers)}
    last = n_layers - 1
    return {k: layer_digest(original.layers[k]) for k in sorted({0, last})}


def _check_source(manifest, manifest_path, original):
    source = manifest["source"]
    what = source.get("config", "an unnamed network")
    current = original.config.name if original.config is not None else original.name

    def mismatch(detail):
        return _manifest_error(manifest_path, f"this compact network was made from {what} but the "
                                              f"network given is {current}: {detail}; compress "
                                              "the network you run again")

    if original.config is not None and "config" in source and source["config"] != original.config.name:
        raise mismatch("different configuration")
    if "layers" in source and source["layers"] != original.n_layers:
        raise mismatch(f"{source['layers']} layers against {original.n_layers}")
    if "n_features" in source and source["n_features"] != original.n_features:
        raise mismatch(f"{source['n_features']} inputs against {original.n_features}")
    if "bias" in source and source["bias"] != original.bias:
        raise mismatch(f"bias {source['bias']} against {original.bias}")
    digests = source.get("layer_sha256")
    if isinstance(digests, list) and len(digests) == original.n_layers:
        for k, digest in _original_digests(original, original.n_layers).items():
            if digests[k] != digest:
                raise mismatch(f"layer {k + 1} differs")
    if manifest["kind"] in EXACT_KINDS:
        if len(manifest["layers"]) != original.n_layers:
            raise mismatch(f"{len(manifest['layers'])} compact layers against {original.n_layers}")
        for k, (entry, shape) in enumerate(zip(manifest["layers"], original.shapes), 1):
            members = [m for group in entry.get("neurons") or [] for m in group]
            if members and not all(_is_count(m) and m < shape[1] for m in members):
                raise mismatch(f"layer {k} names neurons beyond the original's {shape[1]}")


def load(path, original=None):
    """Load a derived network written by :func:`save`.

    Parameters
    ----------
    path : path-like
        The folder (or its ``manifest.json``).
    original : Network, optional
        The challenge network the compact one is run in place of. Its
        configuration, depth, bias, inputs and layer contents must match the
        manifest's source record (layer digests: all layers of a network in
        memory, the first and last of one read on demand). For the exact
        kinds it becomes the compact network's ``origin``, so engines
        recheck near-threshold rows against it.

    Returns
    -------
    Network
        ``origin=original`` for the kinds ``"exact"`` and
        ``"inputs-aware"``; ``origin=None`` for approximate kinds such as
        ``"fssl"`` (their own float64 evaluation is their reference). An
        exact kind loaded without ``original`` has no origin and cannot
        recheck rows near a threshold: a warning says so.

    Raises
    ------
    DataError
        Missing folder, manifest or layer file; bad JSON; unknown format or
        version; a layer file that does not match its manifest entry; a
        broken layer chain; a source that is not ``original``.
    """
    path = Path(path)
    manifest = read_manifest(path)
    folder = path if path.is_dir() else path.parent
    manifest_path = folder / MANIFEST_NAME
    kind = manifest["kind"]
    if original is not None:
        _check_source(manifest, manifest_path, original)
    layers, keys = [], []
    for k, entry in enumerate(manifest["layers"], 1):
        layer_path = folder / entry["file"]
        if not layer_path.is_file():
            raise DataError(f"{layer_path}: missing; the compact network in {folder} is incomplete "
                            "(write it again)")
        if "sha256" in entry and _file_sha256(layer_path) != entry["sha256"]:
            raise DataError(f"{layer_path}: changed or damaged since {MANIFEST_NAME} was written "
                            "(its sha256 differs); write the compact network again")
        weights = io.read_layer(layer_path, shape=entry["shape"])
        if weights.nnz != entry["edges"]:
            raise DataError(f"{layer_path}: holds {weights.nnz} edges but {MANIFEST_NAME} says "
                            f"{entry['edges']}")
        layers.append(weights)
        keys.append(io.file_key(layer_path))
    source_name = manifest["source"].get("config", "network")
    exact = kind in EXACT_KINDS
    if exact and original is None:
        warnings.warn(f"{folder}: a {kind} compact network loaded without its original network; "
                      "rows near the 0 and 32 thresholds cannot be rechecked, so categories may "
                      "differ from the reference's in rare cases", stacklevel=2)
    if kind == "inputs-aware":
        record = manifest.get("exact_only_on") or {}
        log.warning("%s is an inputs-aware compaction: exact only on the %s inputs it was made "
                    "from%s; other inputs may get wrong categories", folder,
                    record.get("count", "?"), f" ({record['file']})" if record.get("file") else "")
    return Network(layers, manifest["bias"], name=f"{source_name}-{kind}",
                   origin=original if exact else None,
                   config=original.config if original is not None else None, layer_keys=keys)
