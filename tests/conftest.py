"""Shared fixtures: small generated networks, and the real data in ../shared.

Tests that need the real challenge data use the ``real_data_dir`` or
``shared_mirror`` fixtures. On a clone without ``../shared`` they skip with
the reason; with ``GRAPHCHALLENGE_REQUIRE_SHARED=1`` (set by ``.ci/run``)
the missing data is a failure instead, so CI cannot pass by skipping them.
The tests of the CUDA toolchain (marker ``cuda_toolchain``: real CuPy,
NVRTC and ptxas, no GPU) do the same through :func:`need_toolchain` and
``GRAPHCHALLENGE_REQUIRE_CUDA_TOOLCHAIN=1``.
"""

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MIRROR = SHARED / "mirror" / "synthetic" / "sparsechallenge_2019"
REQUIRE_SHARED = os.environ.get("GRAPHCHALLENGE_REQUIRE_SHARED") == "1"
REQUIRE_TOOLCHAIN = os.environ.get("GRAPHCHALLENGE_REQUIRE_CUDA_TOOLCHAIN") == "1"


def _need_shared(path):
    if path.exists():
        return path
    message = (f"real challenge data not found at {path} (a clone outside the project "
               "workspace has no ../shared)")
    if REQUIRE_SHARED:
        pytest.fail(message + "; GRAPHCHALLENGE_REQUIRE_SHARED=1 makes this a failure")
    pytest.skip(message)


def need_toolchain(message):
    """Skip with ``message`` (what is missing and how to install it), or fail under
    ``GRAPHCHALLENGE_REQUIRE_CUDA_TOOLCHAIN=1``."""
    if REQUIRE_TOOLCHAIN:
        pytest.fail(message + "; GRAPHCHALLENGE_REQUIRE_CUDA_TOOLCHAIN=1 makes this a failure")
    pytest.skip(message)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the binary cache of the test run out of the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("GRAPHCHALLENGE_CACHE")
    os.environ["GRAPHCHALLENGE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("GRAPHCHALLENGE_CACHE", None)
    else:
        os.environ["GRAPHCHALLENGE_CACHE"] = old


@pytest.fixture(scope="session")
def shared_mirror():
    """``../shared/mirror/synthetic/sparsechallenge_2019`` (real data, server layout)."""
    return _need_shared(MIRROR)


@pytest.fixture(scope="session")
def real_data_dir(shared_mirror, tmp_path_factory):
    """A data folder in the server layout holding the real neuron1024 x 120 challenge
    (network unpacked; inputs and truth linked from ../shared, not copied)."""
    root = tmp_path_factory.mktemp("real")
    (root / "dnn").mkdir()
    (root / "mnist").mkdir()
    with tarfile.open(shared_mirror / "dnn" / "neuron1024.tar.gz") as tar:
        tar.extractall(root / "dnn", filter="data")
    (root / "mnist" / "sparse-images-1024.tsv.gz").symlink_to(
        shared_mirror / "mnist" / "sparse-images-1024.tsv.gz")
    (root / "dnn" / "neuron1024-l120-categories.tsv").symlink_to(
        shared_mirror / "dnn" / "neuron1024-l120-categories.tsv")
    return root


@pytest.fixture(scope="session")
def real_challenge(real_data_dir):
    """The loaded real challenge (network, 1200 inputs, 19-row truth)."""
    from graphchallenge import catalog, network

    return network.load_challenge(catalog.config(1024, 120), real_data_dir)


def random_layer(rng, n_in, n_out, per_column=4, weight=None, column_sum=2.0):
    """A random sparse layer with ``per_column`` nonzeros in every column.

    Without ``weight``, every column's weights are random positive values
    summing to ``column_sum`` (2, like the challenge's 32 x 1/16), so that,
    with a bias near -0.3, some inputs die and some survive.
    """
    per_column = min(per_column, n_in)
    rows = np.concatenate([rng.choice(n_in, size=per_column, replace=False)
                           for _ in range(n_out)])
    cols = np.repeat(np.arange(n_out), per_column)
    if weight is not None:
        values = np.full(rows.size, float(weight))
    else:
        raw = rng.uniform(0.5, 1.5, size=(n_out, per_column))
        values = (raw / raw.sum(axis=1, keepdims=True) * column_sum).ravel()
    return sp.csr_matrix((values, (rows, cols)), shape=(n_in, n_out))


def random_inputs(rng, n_inputs, n_features, density=0.2):
    """Binary sparse inputs, like the challenge's images; the pixel count of a
    row varies from 1 to twice ``density * n_features`` so some rows die early."""
    counts = rng.integers(1, max(2, int(2 * density * n_features)) + 1, size=n_inputs)
    counts = np.minimum(counts, n_features)
    cols = np.concatenate([rng.choice(n_features, size=k, replace=False) for k in counts])
    rows = np.repeat(np.arange(n_inputs), counts)
    return sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_inputs, n_features))


def dense(matrix):
    return np.asarray(matrix.toarray())


def radix_like(rng, width, copies, n_layers, block, values=(1.0,), permute=True):
    """A RadiX-Net-shaped network with ``copies * width`` neurons (SPEC.md section 3).

    Layer k is ``kron(ones(copies, copies), I + S**s)`` with ``s = 2**((k-1) mod block)``
    and ``S`` the cyclic shift over ``width``; each block of ``block`` layers after
    the first permutes the rows. Weights are drawn per base entry from ``values``
    (divided by ``copies``), so the ``copies`` outputs sharing a base column have
    identical columns: exactly ``width`` distinct neurons per layer.
    """
    neurons = copies * width
    layers, permutation = [], np.arange(neurons)
    for k in range(n_layers):
        if k and k % block == 0 and permute:
            permutation = rng.permutation(neurons)
        shift = 2 ** (k % block)
        base = np.eye(width, k=0) + np.roll(np.eye(width), shift, axis=1)
        base = base * rng.choice(values, size=base.shape) / copies
        full = np.kron(np.ones((copies, copies)), base)
        layers.append(sp.csr_matrix(full[permutation]))
    return layers


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def _engine_params():
    from graphchallenge import engines

    return [pytest.param(name, marks=[pytest.mark.gpu] if name.startswith("gpu") else [], id=name)
            for name in engines.ENGINE_NAMES]


@pytest.fixture(params=_engine_params())
def engine(request):
    """Every engine in turn; one that cannot run here skips with the reason."""
    from graphchallenge import engines

    available, reason = engines.availability(request.param)
    if not available:
        pytest.skip(f"engine {request.param} unavailable: {reason}")
    return engines.get_engine(request.param)
