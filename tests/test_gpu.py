"""The GPU engines: host-side preparation, the engines on a CPU stand-in for CuPy,
and the same engine checks on a real CUDA device (``gpu`` marker).

No GPU is needed for most of this file. The stand-in (``tests/fake_cupy.py``)
compiles the engines' real CUDA source with the host C++ compiler, runs
every block's threads as OS threads with real barriers, and imitates the few
CuPy calls the engines make (arrays are numpy arrays, streams run
immediately, a captured graph is replayed). The cuSPARSE baseline runs on
scipy.sparse through the same seam. So the kernels' logic (work lists,
parking, cross-block finalisation, the rounding band) and the host
orchestration (tiles, graphs, streaming) are tested here; the tests marked
``gpu`` run the same bodies on a device.
"""

import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge import engines
from graphchallenge.engines import _gpu_kernels as kernels
from graphchallenge.engines import exactness as bounds, gpu
from graphchallenge.engines.reference import ReferenceEngine, forward_categories
from graphchallenge.errors import DataError, EngineUnavailable
from graphchallenge.network import Network
from graphchallenge.validate import validate

from conftest import REPO, random_inputs, random_layer
from fake_cupy import FakeStream, make_emulated_cupy

# ---------------------------------------------------------------- host-side preparation


def test_ell_table_of_a_uniform_layer_has_no_weight_table(rng):
    layer = random_layer(rng, 40, 30, per_column=5, weight=0.0625)
    ell = gpu.ell_from_csr(layer)
    assert ell.weights is None and ell.uniform_weight == 0.0625
    assert ell.indices.shape == (5, 30) and ell.n_in == 40
    csc = layer.tocsc()
    for j in range(30):
        assert ell.indices[:, j].tolist() == sorted(csc.indices[csc.indptr[j]:csc.indptr[j + 1]])


def test_ell_table_pads_short_columns_with_zero_weights(rng):
    dense = np.zeros((6, 4))
    dense[[0, 3, 5], 0] = [0.5, 0.25, 2.0]
    dense[2, 1] = -1.5
    dense[[1, 4], 3] = [3.0, 3.0]            # column 2 empty
    ell = gpu.ell_from_csr(sp.csr_matrix(dense))
    assert ell.n_terms == 3 and ell.weights is not None
    assert ell.indices[:, 0].tolist() == [0, 3, 5]
    assert ell.weights[:, 0].tolist() == [0.5, 0.25, 2.0]
    assert ell.indices[:, 1].tolist() == [2, 0, 0] and ell.weights[:, 1].tolist() == [-1.5, 0, 0]
    assert ell.weights[:, 2].tolist() == [0, 0, 0]
    assert np.array_equal(gpu.csr_from_ell(ell).toarray(), dense)


def test_ell_of_an_empty_layer():
    ell = gpu.ell_from_csr(sp.csr_matrix((7, 3)))
    assert ell.indices.shape == (0, 3) and ell.n_in == 7
    assert gpu.csr_from_ell(ell).nnz == 0


def test_ell_table_product_matches_the_sparse_product(rng):
    layer = random_layer(rng, 50, 20, per_column=7)
    ell = gpu.ell_from_csr(layer)
    y = rng.uniform(0, 32, size=(9, 50))
    via_table = np.einsum("rtj,tj->rj", y[:, ell.indices], ell.dense_weights())
    assert np.allclose(via_table, y @ layer.toarray(), rtol=1e-14, atol=0)


def test_layer_constants_agree_with_the_bounds_module(rng):
    layer = random_layer(rng, 64, 64, per_column=6)
    layer.data[::5] *= -1
    constants = kernels.layer_constants(gpu.ell_from_csr(layer), -0.3)
    growth, max_terms = bounds.layer_constants(layer)
    assert constants.growth == pytest.approx(growth, rel=1e-15)
    assert constants.gamma == bounds.gamma(max_terms + 1, 2.0**-53)
    assert constants.signed


def test_challenge_layers_keep_saturated_rows_and_weak_layers_do_not(rng):
    challenge_like = random_layer(rng, 64, 64, 32, weight=1 / 16)
    strong = kernels.layer_constants(gpu.ell_from_csr(challenge_like), -0.3)
    assert strong.keeps_saturation and not strong.signed       # 32 * 2 - 0.3 > 32
    quarter = gpu.ell_from_csr(random_layer(rng, 64, 64, 4, weight=0.25))
    weak = kernels.layer_constants(quarter, -0.3)
    assert not weak.keeps_saturation                           # 32 * 1 - 0.3 < 32
    edge = kernels.layer_constants(gpu.ell_from_csr(random_layer(rng, 64, 64, 4, weight=0.25)), 0.0)
    assert not edge.keeps_saturation                           # exactly 32: no margin
    dense = np.full((4, 3), 0.5)
    dense[:, 2] = 0                                            # an empty column outputs 0
    assert not kernels.layer_constants(gpu.ell_from_csr(sp.csr_matrix(dense)), 5.0).keeps_saturation


def test_kernel_shape_stages_rows_that_fit_in_shared_memory():
    assert kernels.kernel_shape(1024, 96 * 1024) == (8, True, 8 * 8 * 1024)
    assert kernels.kernel_shape(4096, 96 * 1024) == (2, True, 2 * 8 * 4096)
    assert kernels.kernel_shape(65536, 96 * 1024) == (kernels.GLOBAL_ROWS, False, 0)


def test_schedule_parks_only_before_layers_that_keep_saturation():
    keep = kernels.LayerConstants(2.0, 1e-15, True, False)
    lose = kernels.LayerConstants(1.0, 1e-15, False, False)
    park, unpark = kernels.schedule([keep, keep, lose, keep])
    assert park == [True, False, True, True]
    assert unpark == [False, False, True, False]


def test_live_rows_count_parked_rows_until_they_return():
    counts = np.array([10, 8, 5, 7, 6])      # counts[2] includes the 3 rows brought back
    parked_new = np.array([1, 2, 0, 3])
    pending_new = np.array([0, 0, 2, 0])       # counts[3] includes 2 rows kept though all zero
    assert kernels.live_rows_per_layer(counts, parked_new, pending_new,
                                   [False, False, True, False]) == [8 + 1, 5, 7 - 2, 6 + 3]


def test_canonical_inputs_do_not_touch_the_callers_matrix():
    inputs = sp.csr_matrix((np.array([1.0, 0.0, 2.0, 3.0]), np.array([0, 1, 2, 2]),
                            np.array([0, 2, 4])), shape=(2, 3))
    before = inputs.data.copy()
    result = gpu.canonical_inputs(inputs, 3)
    assert np.array_equal(inputs.data, before) and inputs.nnz == 4
    assert result.nnz == 2 and result.toarray().tolist() == [[1, 0, 0], [0, 0, 5]]
    with pytest.raises(DataError, match="columns"):
        gpu.canonical_inputs(inputs, 4)


def test_inputs_outside_the_proven_range_are_rechecked():
    inputs = sp.csr_matrix(np.array([[1.0, 0], [1e-300, 1], [0, 0], [2.0**1000, 0]]))
    assert gpu.unproven_input_rows(inputs).tolist() == [1, 3]
    assert gpu.unproven_input_rows(sp.csr_matrix(np.eye(3))).size == 0


def test_column_table_layers_are_a_network_the_reference_can_run(rng):
    tables = [np.sort(rng.choice(16, size=(4, 16)), axis=0) for _ in range(3)]
    for table in tables:               # distinct inputs per column
        for j in range(16):
            table[:, j] = np.sort(rng.choice(16, size=4, replace=False))
    layers = gpu.ColumnTableLayers(lambda k: tables[k], 3, 16, 0.5)
    network = Network(layers, -0.3)
    assert network.shapes == [(16, 16)] * 3 and network.edges == 3 * 64
    weights = layers[1].toarray()
    assert set(np.unique(weights)) == {0.0, 0.5}
    for j in range(16):
        assert np.flatnonzero(weights[:, j]).tolist() == tables[1][:, j].tolist()


def test_column_table_layers_reject_bad_tables():
    layers = gpu.ColumnTableLayers(lambda k: np.full((2, 4), 9), 1, 4, 1.0)
    with pytest.raises(DataError, match="outside"):
        layers.column_indices(0)
    layers = gpu.ColumnTableLayers(lambda k: np.zeros((2, 5)), 1, 4, 1.0)
    with pytest.raises(DataError, match="shape"):
        layers[0]


# ---------------------------------------------------------------- without CuPy / device


def test_gpu_engines_unavailable_without_cupy_or_device(monkeypatch):
    monkeypatch.setattr(gpu, "_import_cupy", lambda: (None, gpu.CUPY_MISSING))
    for name in ("gpu", "gpu-cusparse"):
        available, reason = engines.availability(name)
        assert not available and "pip install graphchallenge[cuda12]" in reason
        with pytest.raises(EngineUnavailable, match="CuPy is not installed"):
            engines.get_engine(name)
    assert engines.resolve("auto") not in ("gpu", "gpu-cusparse")


def test_gpu_engine_reports_a_missing_device(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=no_device)))
    monkeypatch.setattr(gpu, "_import_cupy", lambda: (fake, None))
    available, reason = gpu.GpuEngine.availability()
    assert not available and reason.startswith("no CUDA device found")
    fake.cuda.runtime.getDeviceCount = lambda: 2
    with pytest.raises(EngineUnavailable, match="no CUDA device 5: this machine has 2"):
        gpu.CusparseEngine(device=5)


@pytest.mark.skipif(engines.availability("gpu")[0], reason="this machine has a usable GPU")
def test_cli_run_with_gpu_engine_exits_2_with_one_line(real_data_dir):
    result = subprocess.run(
        [sys.executable, "-m", "graphchallenge", "run", "--neurons", "1024", "--layers", "120",
         "--data-dir", str(real_data_dir), "--engine", "gpu", "--inputs", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "engine 'gpu' cannot run here" in lines[0]


@pytest.fixture(scope="session")
def emulator_dir(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no host C++ compiler (g++) to emulate the CUDA kernels")
    return tmp_path_factory.mktemp("emulated_cuda")


@pytest.fixture
def emulated(emulator_dir, monkeypatch):
    """Make the GPU engines run on the CPU stand-in; returns a function to reconfigure it.

    Kernels run with one warp per block and a small column chunk, so that the
    cross-block row finalisation runs on small networks too.
    """
    monkeypatch.setattr(kernels, "THREADS", 32)
    monkeypatch.setattr(kernels, "COLUMN_CHUNK", 32)
    monkeypatch.setattr(gpu, "RESERVE_BYTES", 0)
    monkeypatch.setattr(gpu, "_device_sparse", lambda: sp)

    def configure(free_bytes=1 << 34, shared_optin=96 * 1024):
        fake = make_emulated_cupy(emulator_dir, free_bytes, shared_optin)
        monkeypatch.setattr(gpu, "_import_cupy", lambda: (fake, None))
        return fake

    configure()
    return configure


# ---------------------------------------------------------------- engine checks (both backends)


@pytest.fixture(params=[
    pytest.param("emulated", id="emulated"),
    pytest.param("device", id="device", marks=pytest.mark.gpu)])
def backend(request):
    """``emulated`` (CPU stand-in for CuPy, always) or ``device`` (a real GPU; gpu marker)."""
    if request.param == "device":
        pytest.importorskip("cupy")
        available, reason = gpu.device_availability()
        if not available:
            pytest.skip(reason)
        return None
    return request.getfixturevalue("emulated")


GPU_ENGINES = [gpu.GpuEngine, gpu.CusparseEngine]


def _check(engine_class, network, inputs, expect_rechecks=False):
    """Run ``engine_class`` on ``network``; its categories must be the reference's."""
    expected = ReferenceEngine().infer(network, inputs)
    result = engine_class().infer(network, inputs)
    assert result.categories.tolist() == expected.categories.tolist()
    assert result.categories.dtype == np.int64
    if expect_rechecks:
        assert result.rechecked_rows > 0
    elif network.origin is None:
        assert result.live_rows == expected.live_rows
    return result


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
@pytest.mark.parametrize("n, layers, per_column, bias", [
    (64, 6, 4, -0.3), (96, 12, 8, -0.2), (32, 25, 3, -0.3), (160, 8, 16, -0.05)])
def test_random_networks(backend, engine_class, rng, n, layers, per_column, bias):
    network = Network([random_layer(rng, n, n, per_column) for _ in range(layers)], bias)
    inputs = random_inputs(rng, 100, n, density=0.15)
    assert 0 < forward_categories(network.layers, bias, inputs).size < 100
    _check(engine_class, network, inputs)


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_rectangular_layers_and_uneven_columns(backend, engine_class, rng):
    layers = [random_layer(rng, 48, 70, 5), random_layer(rng, 70, 33, 9),
              random_layer(rng, 33, 5, 3)]
    # Uneven column counts: drop a few entries so tables need padding.
    layers[1] = sp.csr_matrix(layers[1].multiply(rng.random(layers[1].shape) > 0.2))
    network = Network(layers, -0.2)
    inputs = random_inputs(rng, 120, 48, density=0.2)
    _check(engine_class, network, inputs)


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_saturated_rows_parked_and_brought_back(backend, engine_class, rng):
    strong = [random_layer(rng, 40, 40, 4, weight=1.0) for _ in range(6)]
    weak = random_layer(rng, 40, 40, 4, weight=0.2)      # 32 * 0.8 - 0.3 < 32: un-saturates
    network = Network(strong[:3] + [weak] + strong[3:] + [weak], -0.3)
    inputs = random_inputs(rng, 100, 40, density=0.3)
    expected = forward_categories(network.layers, -0.3, inputs)
    assert expected.size > 0
    _check(engine_class, network, inputs)


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_positive_bias_goes_on_the_structure_only(backend, engine_class, rng):
    # With a bias > 0, adding it to structural zeros would revive dead rows.
    network = Network([random_layer(rng, 30, 30, 2, weight=0.01) for _ in range(5)], 0.05)
    inputs = random_inputs(rng, 80, 30, density=0.05)
    inputs = sp.vstack([inputs, sp.csr_matrix((5, 30))], format="csr")
    result = _check(engine_class, network, inputs)
    assert not set(range(81, 86)) & set(result.categories.tolist())


def _threshold_layer(rng, n):
    """Columns of weights 0.1, 0.2, 0.3 in random order: with bias -0.6, an input of ones
    sums to 1.1e-16 or to 0 depending on the order of the additions."""
    dense = np.zeros((n, n))
    for j in range(n):
        dense[rng.choice(n, size=3, replace=False), j] = rng.permutation([0.1, 0.2, 0.3])
    return sp.csr_matrix(dense)


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_final_verdicts_on_the_threshold_are_rechecked(backend, engine_class, rng):
    n = 24
    network = Network([_threshold_layer(rng, n)], -0.6)
    inputs = sp.csr_matrix(np.vstack([np.ones((30, n)), random_inputs(rng, 30, n, 0.5).toarray()]))
    result = _check(engine_class, network, inputs, expect_rechecks=True)
    assert result.categories.size > 0


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_values_near_a_threshold_mid_network_carry_their_error(backend, engine_class, rng):
    # Tiny values after the first layer die in the second one in both orders:
    # nothing needs the reference.
    n = 24
    network = Network([_threshold_layer(rng, n), random_layer(rng, n, n, 3)], -0.6)
    result = _check(engine_class, network, sp.csr_matrix(np.ones((30, n))))
    assert result.rechecked_rows == 0


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_negative_weights_and_inputs(backend, engine_class, rng):
    layers = []
    for _ in range(4):
        layer = random_layer(rng, 32, 32, 6, column_sum=2.5)
        layer.data[rng.random(layer.nnz) < 0.3] *= -1
        layers.append(layer)
    network = Network(layers, -0.1)
    inputs = random_inputs(rng, 100, 32, density=0.3)
    inputs.data[::3] = -1.0
    inputs.data[1::7] = 1e-300          # below the range the bounds cover
    _check(engine_class, network, inputs, expect_rechecks=True)


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_derived_network_answers_to_its_origin(backend, engine_class, rng):
    # Relabel the hidden neurons: the same function, summed in another order.
    n, bias = 48, -0.25
    original = Network([random_layer(rng, n, n, 6) for _ in range(5)], bias)
    perms = [np.arange(n)] + [rng.permutation(n) for _ in range(4)] + [np.arange(n)]
    layers = [sp.csr_matrix(w[perms[k]][:, perms[k + 1]]) for k, w in enumerate(original.layers)]
    derived = Network(layers, bias, origin=original)
    inputs = random_inputs(rng, 120, n, density=0.2)
    result = _check(engine_class, derived, inputs)
    assert result.categories.tolist() == forward_categories(original.layers, bias, inputs).tolist()


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_all_dead_and_empty_inputs(backend, engine_class, rng):
    network = Network([random_layer(rng, 16, 16, 2, weight=1 / 64) for _ in range(4)], -0.3)
    assert engine_class().infer(network, random_inputs(rng, 40, 16, 0.3)).categories.size == 0
    assert engine_class().infer(network, sp.csr_matrix((3, 16))).categories.size == 0


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_column_table_network(backend, engine_class, rng):
    n = 64
    tables = [np.stack([np.sort(rng.choice(n, 8, replace=False)) for _ in range(n)], axis=1)
              for _ in range(10)]
    network = Network(gpu.ColumnTableLayers(lambda k: tables[k], 10, n, 0.25, cache=True), -0.3)
    inputs = random_inputs(rng, 100, n, density=0.2)
    assert 0 < forward_categories(network.layers, -0.3, inputs).size < 100
    _check(engine_class, network, inputs)


def _real_challenge(request):
    """The real neuron1024 x 120 challenge: from ../shared, or on a GPU machine without it,
    from the repository's git-ignored ``.device-data`` folder (see scripts/gpu_check.py)."""
    device_data = REPO / ".device-data"
    if not (REPO.parent / "shared").exists() and (device_data / "dnn").is_dir():
        from graphchallenge import catalog, network

        return network.load_challenge(catalog.config(1024, 120), device_data)
    return request.getfixturevalue("real_challenge")


@pytest.mark.parametrize("engine_class", GPU_ENGINES, ids=["gpu", "gpu-cusparse"])
def test_real_data(backend, engine_class, request, monkeypatch):
    challenge = _real_challenge(request)
    inputs, truth = challenge.inputs, challenge.truth
    if backend is not None:  # emulated: the 150 images from 251, three of them categories
        monkeypatch.setattr(kernels, "COLUMN_CHUNK", 256)      # still 4 blocks per row
        first, last = 250, 400
        inputs = inputs[first:last]
        truth = truth[(truth > first) & (truth <= last)] - first
        assert truth.size == 3
    result = engine_class().infer(challenge.network, inputs)
    assert validate(result.categories, truth).passed
    assert result.rechecked_rows == 0      # the proof settles every real image on the device
    assert result.infer_seconds > 0


# ---------------------------------------------------------------- fused engine paths (emulated)


def _random_case(rng, n=40, layers=8):
    network = Network([random_layer(rng, n, n, 4) for _ in range(layers)], -0.3)
    inputs = random_inputs(rng, 90, n, density=0.2)
    return network, inputs, forward_categories(network.layers, -0.3, inputs)


def test_fused_engine_replays_one_captured_graph_per_tile(emulated, rng):
    # Room for the network, then for 30 rows at a time.
    fake = emulated(free_bytes=[10**8, gpu._Tile.bytes_per_row(40) * 30])
    network, inputs, expected = _random_case(rng)
    result = gpu.GpuEngine().infer(network, inputs)
    assert result.categories.tolist() == expected.tolist()
    assert result.details["graph"] is True and result.details["mode"] == "resident"
    assert result.details["tile_rows"] < 90           # several tiles
    n_tiles = -(-90 // result.details["tile_rows"])
    assert len(fake.graphs) == 1 and fake.graphs[0].launches == n_tiles


def test_fused_engine_without_graphs(emulated, rng, monkeypatch):
    monkeypatch.setattr(FakeStream, "refuse_capture", True)
    network, inputs, expected = _random_case(rng)
    result = gpu.GpuEngine().infer(network, inputs)
    assert result.categories.tolist() == expected.tolist()
    assert result.details["graph"].startswith("not used")


def test_fused_engine_streams_a_network_larger_than_memory(emulated, rng):
    network, inputs, expected = _random_case(rng, layers=9)
    layer_bytes = gpu.ell_from_csr(network.layers[0]).nbytes
    # Room for the activations of all rows and three of the nine layers.
    emulated(free_bytes=gpu._Tile.bytes_per_row(40) * 90 + 4 * inputs.nnz + 3 * layer_bytes)
    result = gpu.GpuEngine().infer(network, inputs)
    assert result.details["mode"] == "streamed" and result.details["tile_rows"] < 90
    assert result.categories.tolist() == expected.tolist()


def test_fused_engine_gathers_from_global_memory_for_wide_rows(emulated, rng):
    emulated(shared_optin=64)             # no row fits in shared memory
    network, inputs, expected = _random_case(rng)
    assert gpu.GpuEngine().infer(network, inputs).categories.tolist() == expected.tolist()


@pytest.mark.parametrize("optin", [64 * 1024, 96 * 1024])
def test_fused_engine_leaves_shared_memory_for_the_kernels_own_variables(emulated, rng, optin,
                                                                         monkeypatch):
    """On a device whose opt-in maximum caps the staged rows (64 KiB on sm_75, 96 KiB on
    sm_70), asking for all of it as dynamic memory is refused: the engine keeps a reserve."""
    emulated(shared_optin=optin)
    network, inputs, expected = _random_case(rng)
    assert gpu.GpuEngine().infer(network, inputs).categories.tolist() == expected.tolist()
    monkeypatch.setattr(kernels, "STATIC_SHARED_RESERVE", 0)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
        gpu.GpuEngine().infer(network, inputs)


def test_cusparse_engine_streams_when_the_network_does_not_fit(emulated, rng):
    emulated(free_bytes=1)
    network, inputs, expected = _random_case(rng)
    assert gpu.CusparseEngine().infer(network, inputs).categories.tolist() == expected.tolist()


# ---------------------------------------------------------------- scripts/gpu_check.py


@pytest.fixture(scope="module")
def gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_generated_step_validates_gpu_against_cusparse(emulated, gpu_check,
                                                                 monkeypatch):
    monkeypatch.setattr(kernels, "COLUMN_CHUNK", 512)
    args = types.SimpleNamespace(neurons=1024, layers=3, inputs=48, truth_inputs=24, device=0,
                                 repeat=1)
    fast, truth = gpu_check.step_generated(args)
    assert fast["engine"] == "gpu" and fast["inputs"] == 48 and fast["pass"] is True
    assert truth["engine"] == "gpu-cusparse" and truth["inputs"] == 24
    assert "0 categories" not in fast["note"]
    edges = 32 * 1024 * 3
    assert fast["te_s"] == pytest.approx(48 * edges / fast["seconds"] / 1e12)


def test_gpu_check_table_and_targets(gpu_check):
    rows = [gpu_check._row("gpu", "real neuron1024-l120, 1200 images x 50", 60000, 0.01, 23.6,
                           True),
            gpu_check._row("gpu-cusparse", "real neuron1024-l120, 1200 images x 50", 60000, 0.2,
                           1.2, True),
            gpu_check._row("gpu", "generated neuron65536-l1920", 60000, 5.0, 48.3, True),
            gpu_check._row("cpu", "real neuron1024-l120", 60000, note="not run: no numba")]
    text = gpu_check.table(rows)
    assert text.splitlines()[0] == "| engine | configuration | inputs | seconds | TE/s | PASS |"
    assert ("| gpu | real neuron1024-l120, 1200 images x 50 | 60,000 | 0.0100 | 23.60 | PASS |"
            in text)
    assert "| cpu | real neuron1024-l120 | 60,000 | - | - | - |" in text
    assert [met for _, met in gpu_check.targets(rows)] == [True, True, False]   # 48.3 < 55


def test_gpu_check_real_step_tiles_and_validates(emulated, gpu_check, real_data_dir, monkeypatch):
    monkeypatch.setattr(gpu_check, "DEVICE_DATA", real_data_dir)
    args = types.SimpleNamespace(engine="gpu-cusparse", inputs=2400, device=0, repeat=2)
    (row,) = gpu_check.step_real(args)
    assert row["configuration"] == "real neuron1024-l120, 1200 images x 2"
    assert row["inputs"] == 2400 and row["pass"] is True and row["note"].startswith("best of 2")
    assert row["te_s"] == pytest.approx(2400 * 32768 * 120 / row["seconds"] / 1e12)


def test_derived_layer_constants_cover_the_original(rng):
    layer = gpu.ell_from_csr(random_layer(rng, 10, 10, per_column=2, column_sum=1.0))
    own = kernels.layer_constants(layer, -0.3)
    widened = kernels.layer_constants(layer, -0.3, original=(2.0, 32))
    assert widened.growth == pytest.approx(2.0)
    assert own.growth == pytest.approx(1.0)
    assert widened.gamma > own.gamma
