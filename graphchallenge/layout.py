"""Where challenge files live inside a data folder.

Two layouts are understood:

* the server's own (what ``graphchallenge download`` writes)::

      D/dnn/neuron1024/n1024-l1.tsv ...
      D/dnn/neuron1024-l120-categories.tsv
      D/mnist/sparse-images-1024.tsv.gz

* flat, everything side by side::

      D/neuron1024/n1024-l1.tsv ...
      D/neuron1024-l120-categories.tsv
      D/sparse-images-1024.tsv      (or .tsv.gz)

A generated challenge may also be stored in binary form (see
:mod:`graphchallenge.synthetic`): inputs as ``mnist/sparse-images-{N}.csr``
(the binary cache's format), the truth as usual, and no layer files: the
folder's ``generated.json`` names the RadiX-Net that rebuilds them.

The data folder is ``--data-dir``, else ``$GRAPHCHALLENGE_DATA``, else ``./data``.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

DATA_ENV = "GRAPHCHALLENGE_DATA"

#: Suffix of inputs stored in the binary CSR format (:func:`graphchallenge.io.save_csr`).
BINARY_SUFFIX = ".csr"


def data_dir(path=None):
    """The data folder: ``path``, else ``$GRAPHCHALLENGE_DATA``, else ``./data``."""
    if path is None:
        path = os.environ.get(DATA_ENV) or "data"
    return Path(path).expanduser()


@dataclass(frozen=True)
class ServerPaths:
    """Where the server layout puts the files of one configuration under ``root``."""

    tarball: Path
    network_dir: Path
    inputs: Path
    truth: Path


def server_paths(cfg, root):
    """Paths of ``cfg``'s files in the server layout under ``root``."""
    root = Path(root)
    return ServerPaths(
        tarball=root / cfg.network_path,
        network_dir=root / "dnn" / cfg.network_dir,
        inputs=root / cfg.inputs_path,
        truth=root / cfg.truth_path,
    )


def _first_existing(candidates):
    for path in candidates:
        if path.exists():
            return path
    return None


def _inputs_candidates(folder, neurons):
    stem = f"sparse-images-{neurons}"
    return [folder / f"{stem}.tsv", folder / f"{stem}.tsv.gz", folder / f"{stem}{BINARY_SUFFIX}"]


def binary_inputs(cfg, root):
    """Where a binary generated challenge keeps its inputs (the cache's CSR format)."""
    return Path(root) / "mnist" / f"sparse-images-{cfg.neurons}{BINARY_SUFFIX}"


def find_network_dir(cfg, root):
    """The folder holding ``n{N}-l{k}.tsv`` files, or None."""
    root = Path(root)
    return _first_existing([root / "dnn" / cfg.network_dir, root / cfg.network_dir])


def find_inputs(cfg, root):
    """The input file (TSV, gzipped TSV, or binary CSR), or None."""
    root = Path(root)
    return _first_existing(_inputs_candidates(root / "mnist", cfg.neurons)
                           + _inputs_candidates(root, cfg.neurons))


def find_truth(cfg, root):
    """The truth (categories) file, or None."""
    root = Path(root)
    return _first_existing([root / cfg.truth_path, root / cfg.truth_name])


def require(path, what, cfg, root):
    """Return ``path`` or raise a :class:`DataError` telling the user how to get it."""
    if path is None:
        raise DataError(
            f"no {what} for {cfg.name} under {root} (looked in the server layout "
            f"dnn/ + mnist/ and the flat layout); run `graphchallenge download "
            f"--neurons {cfg.neurons} --layers {cfg.layers} --data-dir {root}` "
            f"or `graphchallenge generate ...`")
    return path
