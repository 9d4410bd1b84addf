"""Generated challenges: RadiX-Net structure (checked against the real network), inputs, truth."""

import json
import time

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge import catalog, io, network, synthetic
from graphchallenge.cli import main
from graphchallenge.engines.reference import ReferenceEngine, apply_layer, forward_categories
from graphchallenge.errors import DataError, GraphChallengeError


def _rows_as_keys(layer):
    """Every row's column set as hashable bytes."""
    layer = sp.csr_matrix(layer)
    layer.sort_indices()
    return [layer.indices[layer.indptr[r]:layer.indptr[r + 1]].tobytes()
            for r in range(layer.shape[0])]


def _base_row_of(layer, base):
    """For every row of ``layer``, one row of ``base`` with the same column set (or -1)."""
    first = {}
    for row, key in enumerate(_rows_as_keys(base)):
        first.setdefault(key, row)
    return np.array([first.get(key, -1) for key in _rows_as_keys(layer)])


def _assert_block_is_one_row_permutation(layers, bases):
    """``layers[i] == P @ bases[i]`` for one permutation P shared by the block.

    In a base layer, row q's columns depend only on q mod M. The block's
    first layer (shift 1) tells each row's class; every other layer must
    then hold, in row r, the base row of that class, and every class must
    occur as often as in the base (so that a permutation exists).
    """
    width = bases[0].shape[0] // 16
    source = _base_row_of(layers[0], bases[0])
    assert (source >= 0).all(), "a row is not a row of the base layer"
    classes = source % width
    assert (np.bincount(classes, minlength=width) == 16).all()
    for layer, base in zip(layers, bases):
        assert (sp.csr_matrix(base)[classes] != layer).nnz == 0
    return classes


@pytest.mark.parametrize("neurons", [1024, 4096])
def test_layers_have_32_weights_of_one_sixteenth_per_row_and_column(neurons):
    m = synthetic.block_length(neurons)
    for k in (1, 2, m, m + 1, 2 * m + 3):
        layer = synthetic.radixnet_layer(neurons, k, seed=5)
        assert layer.shape == (neurons, neurons) and layer.dtype == np.float64
        assert (layer.getnnz(axis=0) == 32).all() and (layer.getnnz(axis=1) == 32).all()
        assert (layer.data == 0.0625).all()


def test_block_length_is_log2_of_n_over_16():
    assert [synthetic.block_length(n) for n in catalog.NEURONS] == [6, 8, 10, 12]


def test_base_layers_follow_the_circulant_formula():
    # W(r, c) != 0 exactly when ((r - c) mod N) mod (N/16) is 0 or 2^(b-1), written out densely.
    n, width = 256, 16
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for b in range(1, 5):
        expected = np.isin(((r - c) % n) % width, [0, 2 ** (b - 1)])
        assert (synthetic.radixnet_layer(n, b).toarray() != 0).tolist() == expected.tolist()


def test_base_layers_equal_the_real_ones_byte_for_byte(real_data_dir, tmp_path):
    real_dir = real_data_dir / "dnn" / "neuron1024"
    for k in range(1, 7):
        real_file = real_dir / f"n1024-l{k}.tsv"
        generated = synthetic.radixnet_layer(1024, k, permute=False)
        assert (io.read_layer(real_file, 1024, cache=False) != generated).nnz == 0
        io.write_layer(tmp_path / real_file.name, generated)
        assert (tmp_path / real_file.name).read_bytes() == real_file.read_bytes()


def test_real_deeper_layers_are_row_permutations_per_block(real_data_dir):
    # The structure the generator copies, checked on the real network: blocks 1 and 2.
    real_dir = real_data_dir / "dnn" / "neuron1024"
    bases = [synthetic.radixnet_layer(1024, b, permute=False) for b in range(1, 7)]
    for block in (1, 2):
        layers = [io.read_layer(real_dir / f"n1024-l{6 * block + b}.tsv", 1024) for b in range(1, 7)]
        _assert_block_is_one_row_permutation(layers, bases)


@pytest.mark.parametrize("neurons", [1024, 4096])
def test_generated_deeper_layers_are_row_permutations_per_block(neurons):
    m = synthetic.block_length(neurons)
    bases = [synthetic.radixnet_layer(neurons, b, permute=False) for b in range(1, m + 1)]
    classes = []
    for block in (1, 2):
        layers = [synthetic.radixnet_layer(neurons, block * m + b, seed=3) for b in range(1, m + 1)]
        classes.append(_assert_block_is_one_row_permutation(layers, bases))
    base_classes = np.arange(neurons) % (neurons // 16)
    # The permutations do something, and differ between blocks.
    assert not np.array_equal(classes[0], base_classes)
    assert not np.array_equal(classes[0], classes[1])


def test_first_block_is_not_permuted():
    for k in range(1, 7):
        assert (synthetic.radixnet_layer(1024, k, seed=9)
                != synthetic.radixnet_layer(1024, k, permute=False)).nnz == 0


def test_column_indices_are_the_layer_in_ell_form():
    for k in (1, 6, 7, 13):
        table = synthetic.radixnet_column_indices(1024, k, seed=2)
        assert table.shape == (32, 1024) and table.dtype == np.int32
        assert (np.diff(table, axis=0) > 0).all()
        layer = sp.csc_matrix(synthetic.radixnet_layer(1024, k, seed=2))
        assert np.array_equal(layer.indices, table.T.ravel())


def test_column_indices_of_a_65536_layer_are_fast_and_well_formed():
    synthetic.radixnet_column_indices(65536, 14)  # first call builds the block's permutation
    start = time.perf_counter()
    table = synthetic.radixnet_column_indices(65536, 15)
    seconds = time.perf_counter() - start
    assert table.shape == (32, 65536) and table.dtype == np.int32
    assert (np.diff(table, axis=0) > 0).all()  # 32 distinct rows per column, ascending
    assert (np.bincount(table.ravel(), minlength=65536) == 32).all()  # 32 per row
    # A few milliseconds when the machine is quiet; the bound only catches a
    # slow (per-column Python) implementation on a busy 2-core box.
    assert seconds < 0.5


def test_layer_sequence_is_lazy_and_sliceable(monkeypatch):
    layers = synthetic.RadixNetLayers(1024, 20, seed=4)
    assert len(layers) == 20 and layers.shapes == [(1024, 1024)] * 20
    assert (layers[8] != synthetic.radixnet_layer(1024, 9, seed=4)).nnz == 0
    tail = layers[6:12]
    assert len(tail) == 6 and (tail[0] != synthetic.radixnet_layer(1024, 7, seed=4)).nnz == 0
    assert (layers[-1] != synthetic.radixnet_layer(1024, 20, seed=4)).nnz == 0

    def refuse(*args, **kwargs):
        raise AssertionError("a layer was generated")

    monkeypatch.setattr(synthetic, "radixnet_layer", refuse)
    deep = network.Network(synthetic.RadixNetLayers(65536, 1920), catalog.bias_for(65536))
    assert deep.n_layers == 1920 and deep.n_features == 65536


def test_streamed_network_runs_on_the_reference():
    net = synthetic.radixnet_network(1024, 14, seed=1)
    inputs = synthetic.mnist_like_inputs(1024, 300, seed=1)
    result = ReferenceEngine().infer(net, inputs)
    expected = forward_categories(list(net.layers), net.bias, inputs)
    assert 0 < expected.size < 300
    assert result.categories.tolist() == expected.tolist()


def test_inputs_are_binary_mnist_sized_and_grow_4x_per_size():
    small = synthetic.mnist_like_inputs(1024, 600, seed=0)
    large = synthetic.mnist_like_inputs(4096, 600, seed=0)
    assert small.shape == (600, 1024) and large.shape == (600, 4096)
    assert (small.data == 1).all() and (large.data == 1).all()
    pixels = np.diff(small.indptr)
    assert 85 < pixels.mean() < 125  # the real mean is about 106
    assert pixels.std() > 20  # varied, like the real images (std about 38)
    assert 3.6 < large.nnz / small.nnz < 4.4


def _extents(images, side):
    """Mean (horizontal, vertical) extent of the images under x * side + y flattening."""
    extents = []
    for row in range(images.shape[0]):
        pixels = images.indices[images.indptr[row]:images.indptr[row + 1]]
        x, y = pixels // side, pixels % side
        extents.append((np.ptp(x) + 1, np.ptp(y) + 1))
    return np.mean(extents, axis=0)


def test_inputs_are_flattened_column_major_like_the_real_images(shared_mirror):
    # Digits are taller than wide; with pixel index x * side + y that shows
    # in the real images, so the generated ones must show it the same way.
    real = io.read_inputs(shared_mirror / "mnist" / "sparse-images-1024.tsv.gz", 1024)
    real_width, real_height = _extents(real, 32)
    width, height = _extents(synthetic.mnist_like_inputs(1024, 500, seed=0), 32)
    assert real_width < real_height and width < height
    assert abs(height - real_height) < 3 and abs(width - real_width) < 3


def test_inputs_are_reproducible_and_prefix_stable():
    first = synthetic.mnist_like_inputs(1024, 300, seed=7)
    assert (first != synthetic.mnist_like_inputs(1024, 300, seed=7)).nnz == 0
    longer = synthetic.mnist_like_inputs(1024, 600, seed=7)
    assert (first != longer[:300]).nnz == 0
    other = synthetic.mnist_like_inputs(1024, 300, seed=8)
    assert (first != other).nnz > 0


def test_a_few_percent_survive_120_generated_layers_like_the_real_data():
    inputs = synthetic.mnist_like_inputs(1024, 1500, seed=0)
    result = ReferenceEngine().infer(synthetic.radixnet_network(1024, 120, seed=0), inputs)
    alive = np.array(result.live_rows) / 1500
    # Real first 1200 images: 0.915, 0.655, 0.346 after layers 1-3; 1.6% at the
    # end (3.0% over all 60,000).
    assert 0.85 < alive[0] < 0.99 and 0.55 < alive[1] < 0.75 and 0.25 < alive[2] < 0.45
    assert 0.01 < alive[-1] < 0.05


def test_survivors_saturate_by_layer_21_like_the_real_data():
    activations = synthetic.mnist_like_inputs(1024, 1500, seed=0)
    for weights in synthetic.RadixNetLayers(1024, 21, seed=0):
        activations = apply_layer(activations, weights, catalog.bias_for(1024))
    live = np.diff(activations.indptr)
    assert live.any()
    assert set(live[live > 0].tolist()) == {1024} and (activations.data == 32).all()


@pytest.mark.parametrize("bad", [
    lambda: synthetic.radixnet_layer(1000, 1),
    lambda: synthetic.radixnet_layer(16, 1),
    lambda: synthetic.radixnet_layer(1024, 0),
    lambda: synthetic.mnist_like_inputs(2048, 10),
    lambda: synthetic.mnist_like_inputs(1024, 0),
])
def test_bad_arguments_raise_one_clear_error(bad):
    with pytest.raises(GraphChallengeError):
        bad()


# ---------------------------------------------------------------- whole challenges on disk

def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != synthetic.RECORD_NAME}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """neuron1024 x 12, 300 inputs, seed 1, in the server layout."""
    root = tmp_path_factory.mktemp("generated")
    report = synthetic.generate_challenge((1024, 12), 300, seed=1, data_dir=root, progress=False)
    return root, report


def test_generate_writes_the_server_layout(generated):
    root, report = generated
    cfg = catalog.config(1024, 12)
    assert sorted(_files(root)) == sorted(
        [f"dnn/neuron1024/n1024-l{k}.tsv" for k in range(1, 13)]
        + ["dnn/neuron1024-l12-categories.tsv", "mnist/sparse-images-1024.tsv.gz"])
    assert synthetic.is_generated(cfg, root, 300, seed=1)
    assert not synthetic.is_generated(cfg, root, 300, seed=2)
    assert not synthetic.is_generated(cfg, root, 301, seed=1)
    assert not synthetic.is_generated(catalog.config(1024, 13), root, 300, seed=1)
    assert report.n_inputs == 300 and report.edges == 12 * 32768


def test_truth_file_matches_a_fresh_reference_run(generated):
    root, report = generated
    challenge = network.load_challenge(catalog.config(1024, 12), root)
    fresh = ReferenceEngine().infer(challenge.network, challenge.inputs).categories
    assert 0 < fresh.size < 300
    assert challenge.truth.tolist() == fresh.tolist()
    assert report.n_categories == fresh.size
    # The files hold what the generators make.
    assert (challenge.inputs != synthetic.mnist_like_inputs(1024, 300, seed=1)).nnz == 0
    assert (challenge.network.layers[9] != synthetic.radixnet_layer(1024, 10, seed=1)).nnz == 0


def test_same_seed_same_files_other_seed_other_files(generated, tmp_path):
    root, _ = generated
    synthetic.generate_challenge((1024, 12), 300, seed=1, data_dir=tmp_path / "same", progress=False)
    synthetic.generate_challenge((1024, 12), 300, seed=2, data_dir=tmp_path / "other", progress=False)
    reference = _files(root)
    assert _files(tmp_path / "same") == reference
    other = _files(tmp_path / "other")
    assert other["mnist/sparse-images-1024.tsv.gz"] != reference["mnist/sparse-images-1024.tsv.gz"]
    assert other["dnn/neuron1024/n1024-l7.tsv"] != reference["dnn/neuron1024/n1024-l7.tsv"]
    # Block 0 has no permutation, whatever the seed.
    assert other["dnn/neuron1024/n1024-l1.tsv"] == reference["dnn/neuron1024/n1024-l1.tsv"]


def test_no_permute_repeats_the_base_layers(tmp_path):
    synthetic.generate_challenge((1024, 7), 20, data_dir=tmp_path, progress=False, permute=False)
    layers = tmp_path / "dnn" / "neuron1024"
    assert (layers / "n1024-l7.tsv").read_bytes() == (layers / "n1024-l1.tsv").read_bytes()


def test_never_overwrites_challenge_files_it_did_not_generate(tmp_path):
    inputs = tmp_path / "mnist" / "sparse-images-1024.tsv.gz"
    inputs.parent.mkdir()
    inputs.write_bytes(b"not ours")
    with pytest.raises(DataError, match="not generated"):
        synthetic.generate_challenge((1024, 6), 20, data_dir=tmp_path, progress=False)
    assert inputs.read_bytes() == b"not ours"
    assert not (tmp_path / "dnn").exists()


def test_regenerating_drops_truth_that_no_longer_holds(tmp_path):
    synthetic.generate_challenge((1024, 6), 50, seed=1, data_dir=tmp_path, progress=False)
    synthetic.generate_challenge((1024, 12), 50, seed=1, data_dir=tmp_path, progress=False)
    # Same inputs and network: the shallower truth stays valid.
    assert synthetic.is_generated((1024, 6), tmp_path, 50, seed=1)
    assert synthetic.is_generated((1024, 12), tmp_path, 50, seed=1)
    synthetic.generate_challenge((1024, 6), 50, seed=2, data_dir=tmp_path, progress=False)
    assert synthetic.is_generated((1024, 6), tmp_path, 50, seed=2)
    assert not synthetic.is_generated((1024, 12), tmp_path, 50, seed=1)
    assert not (tmp_path / "dnn" / "neuron1024-l12-categories.tsv").exists()


def test_an_interrupted_generation_never_looks_finished(tmp_path, monkeypatch):
    synthetic.generate_challenge((1024, 6), 50, seed=1, data_dir=tmp_path, progress=False)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "write_categories", fail)
    with pytest.raises(DataError, match="No space left"):
        synthetic.generate_challenge((1024, 6), 60, seed=1, data_dir=tmp_path, progress=False)
    assert not synthetic.is_generated((1024, 6), tmp_path, 50, seed=1)
    assert not synthetic.is_generated((1024, 6), tmp_path, 60, seed=1)
    monkeypatch.undo()
    synthetic.generate_challenge((1024, 6), 60, seed=1, data_dir=tmp_path, progress=False)
    assert synthetic.is_generated((1024, 6), tmp_path, 60, seed=1)


def test_a_damaged_record_is_one_clear_error(tmp_path):
    (tmp_path / synthetic.RECORD_NAME).write_text("{not json")
    with pytest.raises(DataError, match="generated.json"):
        synthetic.generate_challenge((1024, 6), 20, data_dir=tmp_path, progress=False)


def test_generate_then_run_passes_through_the_cli(tmp_path, capsys):
    code = main(["generate", "--neurons", "1024", "--layers", "12", "--inputs", "200",
                 "--seed", "3", "--data-dir", str(tmp_path), "--json"])
    generated_report = json.loads(capsys.readouterr().out)
    assert code == 0 and generated_report["n_inputs"] == 200 and generated_report["seed"] == 3
    code = main(["run", "--neurons", "1024", "--layers", "12", "--data-dir", str(tmp_path),
                 "--engine", "reference", "--json"])
    run_report = json.loads(capsys.readouterr().out)
    assert code == 0 and run_report["passed"] is True
    assert run_report["n_categories"] == generated_report["n_categories"]


def test_generate_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    code = main(["generate", "--neurons", "1000", "--layers", "12", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--neurons" in err


# ---------------------------------------------------------------- binary form, workers

def _challenge(root, depth):
    return network.load_challenge(catalog.config(1024, depth), root, lazy=False)


def test_binary_generated_challenge_equals_the_tsv_one(tmp_path):
    tsv = synthetic.generate_challenge((1024, 8), 150, seed=2, data_dir=tmp_path / "tsv",
                                       progress=False, format="tsv")
    binary = synthetic.generate_challenge((1024, 8), 150, seed=2, data_dir=tmp_path / "bin",
                                          progress=False, format="binary")
    assert binary.format == "binary" and binary.n_categories == tsv.n_categories
    # No layer files at all, inputs in the binary CSR format.
    assert not (tmp_path / "bin" / "dnn" / "neuron1024").exists()
    assert (tmp_path / "bin" / "mnist" / "sparse-images-1024.csr").is_file()
    assert synthetic.is_generated((1024, 8), tmp_path / "bin", 150, seed=2, format="binary")
    assert not synthetic.is_generated((1024, 8), tmp_path / "bin", 150, seed=2, format="tsv")
    a, b = _challenge(tmp_path / "tsv", 8), _challenge(tmp_path / "bin", 8)
    assert a.truth.tolist() == b.truth.tolist() and a.truth.size > 0
    assert a.inputs.shape == b.inputs.shape and (a.inputs != b.inputs).nnz == 0
    assert len(a.network.layers) == len(b.network.layers) == 8
    for wa, wb in zip(a.network.layers, b.network.layers):
        assert (wa != wb).nnz == 0
    assert b.files["network"].endswith("generated.json")


def test_binary_network_is_rebuilt_lazily_for_any_depth(tmp_path):
    synthetic.generate_challenge((1024, 6), 40, seed=5, data_dir=tmp_path, progress=False,
                                 format="binary")
    deeper = network.load_network(catalog.config(1024, 9), tmp_path, lazy=True)
    assert isinstance(deeper.layers, synthetic.RadixNetLayers) and deeper.n_layers == 9
    assert (deeper.layers[8] != synthetic.radixnet_layer(1024, 9, seed=5)).nnz == 0
    # Depth 9 has no truth: a run says so in one line.
    with pytest.raises(DataError, match="truth"):
        network.load_challenge(catalog.config(1024, 9), tmp_path)


def test_switching_format_removes_the_other_formats_files(tmp_path):
    synthetic.generate_challenge((1024, 6), 40, data_dir=tmp_path, progress=False, format="tsv")
    synthetic.generate_challenge((1024, 6), 40, data_dir=tmp_path, progress=False, format="binary")
    assert not (tmp_path / "mnist" / "sparse-images-1024.tsv.gz").exists()
    assert not list((tmp_path / "dnn").glob("neuron1024/*.tsv"))
    assert synthetic.is_generated((1024, 6), tmp_path, 40, format="binary")
    synthetic.generate_challenge((1024, 6), 40, data_dir=tmp_path, progress=False, format="tsv")
    assert not (tmp_path / "mnist" / "sparse-images-1024.csr").exists()
    assert synthetic.is_generated((1024, 6), tmp_path, 40, format="tsv")


def test_a_damaged_binary_input_file_is_one_clear_error(tmp_path):
    synthetic.generate_challenge((1024, 6), 40, data_dir=tmp_path, progress=False, format="binary")
    path = tmp_path / "mnist" / "sparse-images-1024.csr"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="damaged or truncated"):
        network.load_challenge(catalog.config(1024, 6), tmp_path)


def test_images_do_not_depend_on_the_number_of_workers():
    # 700 images: three seeded chunks, the last one partial.
    one = synthetic.mnist_like_inputs(1024, 700, seed=3, workers=1)
    two = synthetic.mnist_like_inputs(1024, 700, seed=3, workers=2)
    three = synthetic.mnist_like_inputs(1024, 700, seed=3, workers=3)
    assert one.shape == (700, 1024) and one.nnz > 0
    assert (one != two).nnz == 0 and (one != three).nnz == 0
    assert (one[:300] != synthetic.mnist_like_inputs(1024, 300, seed=3, workers=2)).nnz == 0


def test_generated_files_do_not_depend_on_the_number_of_workers(tmp_path):
    for workers in (1, 2):
        synthetic.generate_challenge((1024, 7), 600, seed=6, data_dir=tmp_path / str(workers),
                                     progress=False, workers=workers)
    assert _files(tmp_path / "1") == _files(tmp_path / "2")
    record = synthetic.read_record(tmp_path / "2")["neurons"]["1024"]
    assert record["format"] == "tsv" and record["inputs"] == 600


def test_generate_cli_binary_then_run(tmp_path, capsys):
    code = main(["generate", "--neurons", "1024", "--layers", "6", "--inputs", "64",
                 "--format", "binary", "--workers", "1", "--data-dir", str(tmp_path), "--json"])
    generated_report = json.loads(capsys.readouterr().out)
    assert code == 0 and generated_report["format"] == "binary" and generated_report["workers"] == 1
    code = main(["run", "--neurons", "1024", "--layers", "6", "--data-dir", str(tmp_path),
                 "--engine", "cpu", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"] and report["n_categories"] == generated_report["n_categories"]


@pytest.mark.parametrize("fmt", synthetic.FORMATS)
def test_streamed_layers_and_block_read_inputs_give_the_in_memory_categories(tmp_path, fmt,
                                                                               monkeypatch):
    from graphchallenge import engines

    synthetic.generate_challenge((1024, 8), 200, seed=7, data_dir=tmp_path, progress=False,
                                 format=fmt)
    cfg = catalog.config(1024, 8)
    in_memory = network.load_challenge(cfg, tmp_path, lazy=False, cache=False)
    assert isinstance(in_memory.network.layers, list)
    # Forced on a small network: layers streamed from disk or rebuilt, inputs in tiny blocks.
    monkeypatch.setattr(io, "INPUT_BLOCK_BYTES", 512)
    streamed = network.load_challenge(cfg, tmp_path, lazy=True, cache=False)
    assert not isinstance(streamed.network.layers, list)
    assert (streamed.inputs != in_memory.inputs).nnz == 0
    for name in ("reference", "cpu"):
        if not engines.availability(name)[0]:
            continue
        engine = engines.get_engine(name)
        a = engine.infer(in_memory.network, in_memory.inputs).categories
        b = engines.get_engine(name).infer(streamed.network, streamed.inputs).categories
        assert a.tolist() == b.tolist() == in_memory.truth.tolist(), name
