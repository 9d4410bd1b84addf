"""The numba CPU engine: exact against the reference, including where rounding decides.

The generic checks every engine gets are in test_engines.py; these cover
what is particular to this engine: its summation order differs from
scipy's, it drops dead and saturated rows, streams lazy networks, works in
chunks and threads, and handles positive biases and negative weights. The
cases where rounding decides also run on the GraphBLAS peer, which sums in
its own order too and relies on the same rounding band.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge import engines, io
from graphchallenge.engines import cpu, exactness as bounds
from graphchallenge.engines.reference import apply_layer, forward_categories
from graphchallenge.errors import DataError
from graphchallenge.network import LayerFiles, Network
from graphchallenge.validate import validate

from conftest import REPO, random_inputs, random_layer

needs_numba = pytest.mark.skipif(not cpu.CpuEngine.availability()[0],
                                 reason="numba is not installed")


@pytest.fixture(scope="module")
def engine():
    available, reason = cpu.CpuEngine.availability()
    if not available:
        pytest.skip(reason)
    return cpu.CpuEngine()


@pytest.fixture(params=["cpu", "graphblas"])
def banded_engine(request):
    """An engine that sums in another order than scipy and proves its verdicts."""
    available, reason = engines.availability(request.param)
    if not available:
        pytest.skip(reason)
    return engines.get_engine(request.param)


def _expected(network, inputs):
    exact = network.exact_reference
    return forward_categories(exact.layers, exact.bias, inputs).tolist()


@needs_numba
@pytest.mark.parametrize("shapes, per_column, bias", [
    ([(200, 200)] * 8, 6, -0.1),
    ([(100, 300), (300, 50), (50, 130), (130, 7)], 5, -0.2),
    ([(70, 70)] * 25, 3, -0.05),
])
@pytest.mark.parametrize("options", [{}, {"threads": 1}, {"threads": 2, "chunk_rows": 70}])
def test_random_networks_equal_the_reference(rng, shapes, per_column, bias, options):
    network = Network([random_layer(rng, a, b, per_column) for a, b in shapes], bias)
    inputs = random_inputs(rng, 500, shapes[0][0], density=0.1)
    expected = _expected(network, inputs)
    assert 0 < len(expected) < 500
    result = cpu.CpuEngine(**options).infer(network, inputs)
    assert result.categories.tolist() == expected
    if "chunk_rows" in options:
        assert result.details["chunks"] == 8


def test_columns_with_the_same_inputs_are_summed_in_pairs(engine, rng):
    # Every column appears twice, the copy with other weights: pairs share their
    # input loads; an odd column out and rectangular shapes take the single path.
    layers = [sp.hstack([sp.kron(random_layer(rng, n_in, n_out, 5), np.array([[1.0, 0.75]])),
                         random_layer(rng, n_in, 1, 3)], format="csr")
              for n_in, n_out in [(40, 30), (61, 20), (41, 25)]]
    pairs, copies = cpu._column_pairs(sp.csc_matrix(layers[0]))
    assert pairs.shape == (31, 5) and np.count_nonzero(pairs[:, 1] >= 0) == 30
    assert sorted(pairs[pairs[:, 1] >= 0][:, :2].ravel().tolist()) == list(range(60))
    assert copies.size == 0 and not pairs[:, 3:].any()
    network = Network(layers, -0.2)
    inputs = random_inputs(rng, 300, 40, density=0.2)
    expected = _expected(network, inputs)
    assert 0 < len(expected) < 300
    assert engine.infer(network, inputs).categories.tolist() == expected


def test_equal_columns_are_computed_once_and_copied(engine, rng, monkeypatch):
    # Each column four times over (the challenge's outputs come in groups of
    # 16): one is computed, three copied. Pairs of computed columns with the
    # same inputs but other weights (x 0.75) are still summed together.
    base = random_layer(rng, 40, 10, 5)
    layer = sp.hstack([sp.kron(base, np.array([[1.0, 1.0, 1.0, 1.0]])),
                       sp.kron(base, np.array([[0.75, 0.75]]))], format="csr")
    pairs, copies = cpu._column_pairs(sp.csc_matrix(layer))
    assert pairs.shape == (10, 5) and (pairs[:, 1] >= 0).all()
    assert np.sort(pairs[:, 3:], axis=1).tolist() == [[1, 3]] * 10
    computed = np.concatenate([pairs[:, 0], pairs[:, 1]])
    assert sorted(computed.tolist() + copies.tolist()) == list(range(60))
    # A copy is a column equal to the one it copies.
    dense = layer.toarray()
    for column, partner, first, n_column, n_partner in pairs:
        for copy in copies[first:first + n_column]:
            assert (dense[:, copy] == dense[:, column]).all()
        for copy in copies[first + n_column:first + n_column + n_partner]:
            assert (dense[:, copy] == dense[:, partner]).all()
    # Columns with a weight that differs in one bit are not equal.
    nudged = layer.tocsc(copy=True)
    nudged.data[nudged.indptr[3]] = np.nextafter(nudged.data[nudged.indptr[3]], 1.0)
    assert cpu._column_pairs(nudged)[1].size == copies.size - 1
    network = Network([layer, random_layer(rng, 60, 40, 6)], -0.2)
    inputs = random_inputs(rng, 300, 40, density=0.2)
    expected = _expected(network, inputs)
    assert 0 < len(expected) < 300
    monkeypatch.setattr(cpu, "_scatter_pays", lambda *args: False)
    result = engine.infer(network, inputs)
    assert result.categories.tolist() == expected
    # Layer 1 sums 20 of its 60 columns, 5 terms each at most, over 3 tiles.
    assert result.details["multiply_adds"][0] <= 20 * 5 * cpu.TILE * 3


@needs_numba
def test_real_data_equals_the_reference_in_any_chunking(real_challenge):
    network, inputs = real_challenge.network, real_challenge.inputs
    expected = _expected(network, inputs)
    for engine in (cpu.CpuEngine(), cpu.CpuEngine(threads=2, chunk_rows=100)):
        result = engine.infer(network, inputs)
        assert result.categories.tolist() == expected
        assert validate(result.categories, real_challenge.truth).passed
        # SPEC.md section 3: 19 rows survive from layer 16 on, all of them at 32.
        assert result.live_rows[15:] == [19] * 105


@needs_numba
def test_layer_tables_are_prepared_once_per_network(real_challenge):
    engine = cpu.CpuEngine()
    first = engine.infer(real_challenge.network, real_challenge.inputs[:50])
    second = engine.infer(real_challenge.network, real_challenge.inputs[:50])
    assert first.categories.tolist() == second.categories.tolist()
    assert second.prepare_seconds < first.prepare_seconds
    assert engine.prepare(real_challenge.network) < 0.01


# ------------------------------------------------------------ where rounding decides

def _amplified_cancellation(inputs_values, weights, bias=-2.0**-60, gain=2.0**70):
    """Layer 1 passes the inputs on; layer 2 sums them with ``weights`` (a near
    cancellation whose sign depends on the order of the sum); layer 3
    multiplies by ``gain``, so the rounding of layer 2 decides the category."""
    n = len(weights)
    inputs = sp.csr_matrix(np.asarray(inputs_values, dtype=float))
    identity = sp.identity(n, format="csr")
    cancel = sp.csr_matrix(np.asarray(weights, dtype=float).reshape(n, 1))
    amplify = sp.csr_matrix(np.array([[gain]]))
    return Network([identity, cancel, amplify], bias), inputs


def _in_order_categories(network, inputs):
    """Categories of a float64 evaluation that sums every column in the order of its rows."""
    y = inputs.toarray()
    for weights in network.layers:
        dense = weights.toarray()
        z = np.zeros((y.shape[0], dense.shape[1]))
        for k in range(dense.shape[0]):
            z += y[:, [k]] * dense[[k], :]
        y = np.clip(np.where(z != 0, z + network.bias, 0.0), 0.0, 32.0)
    return (np.flatnonzero(y.any(axis=1)) + 1).tolist()


def test_a_cancellation_amplified_to_a_category_goes_to_the_reference(banded_engine):
    rng = np.random.default_rng(7)
    # 0.1 + 0.2 - 0.3 style sums: a tenth of a rounding unit decides their sign.
    values = np.round(rng.uniform(0, 1, size=(400, 3)), 1)
    values[:, 2] = np.round(values[:, 0] + values[:, 1], 1)
    network, inputs = _amplified_cancellation(values, [1.0, 1.0, -1.0])
    expected = _expected(network, inputs)
    # The case discriminates: another summation order gives other categories.
    assert _in_order_categories(network, inputs) != expected
    assert 0 < len(expected) < 400
    result = banded_engine.infer(network, inputs)
    assert result.categories.tolist() == expected
    assert result.rechecked_rows > 0


def test_challenge_style_sums_that_land_on_zero(banded_engine, rng):
    """Weights k/16 and bias -0.3, as in the challenge: sums such as
    4 * (24/16 - 0.3) / 16 - 0.3 are 0 in exact arithmetic, so the last
    rounding decides whether the row is a category."""
    n_inputs, width = 600, 48
    first = random_layer(rng, width, width, per_column=24, weight=1 / 16)
    second = random_layer(rng, width, width, per_column=4, weight=1 / 16)
    network = Network([first, second], -0.3)
    dense = np.ones((n_inputs, width))
    dense[rng.random(dense.shape) < 0.02] = 0.0  # most sums stay exactly on the threshold
    inputs = sp.csr_matrix(dense)
    result = banded_engine.infer(network, inputs)
    assert result.categories.tolist() == _expected(network, inputs)
    assert result.rechecked_rows > 0


def test_values_near_32_and_0_in_middle_layers_need_no_recheck(banded_engine):
    # 32.3 - 0.3 and 0.6 - 0.3 - 0.3 land on the clamp and on zero, but the
    # next layer lifts everything far from both thresholds again.
    inputs = sp.csr_matrix(np.array([[32.3, 0.6], [0.6, 32.3]]))
    first = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.5]]))
    second = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 1.0]]))
    network = Network([first, second], -0.3)
    result = banded_engine.infer(network, inputs)
    assert result.categories.tolist() == _expected(network, inputs) == [1, 2]
    assert result.rechecked_rows == 0


def test_a_derived_network_is_decided_on_its_origin(banded_engine):
    rng = np.random.default_rng(3)
    values = np.round(rng.uniform(0, 1, size=(300, 3)), 1)
    values[:, 2] = np.round(values[:, 0] + values[:, 1], 1)
    original, inputs = _amplified_cancellation(values, [1.0, 1.0, -1.0])
    # Nearly the same function, with the cancelling sum split across two layers.
    derived = Network([sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])),
                       sp.csr_matrix(np.array([[1.0], [-1.0]])),
                       original.layers[2]], original.bias, origin=original)
    own = forward_categories(derived.layers, derived.bias, inputs).tolist()
    assert own != _expected(original, inputs)
    result = banded_engine.infer(derived, inputs)
    assert result.categories.tolist() == _expected(original, inputs)
    assert result.rechecked_rows > 0


def _layer(weights, bias):
    return cpu._Layer(weights, bias)


def test_bounds_of_a_derived_layer_cover_the_original(rng):
    original = Network([random_layer(rng, 10, 10, per_column=8)], -0.3)
    merged = Network([random_layer(rng, 10, 10, per_column=2, column_sum=1.0)], -0.3,
                     origin=original)
    ((_, growth, max_terms),) = bounds.paired_constants(merged)
    assert max_terms == 8
    assert growth == pytest.approx(2.0)
    ((_, growth, max_terms),) = bounds.paired_constants(merged.origin)
    assert (growth, max_terms) == (pytest.approx(2.0), 8)
    # The CPU engine's layer tables carry the widened constants.
    (layer,) = cpu._layers(merged)
    assert (layer.growth, layer.max_terms) == (pytest.approx(2.0), 8)


# ------------------------------------------------------------ bias signs and weight signs

def test_positive_bias_leaves_structural_zeros_alone(banded_engine, rng):
    # A dense formula would add the bias everywhere and wake dead rows.
    network = Network([random_layer(rng, 60, 60, 3, column_sum=0.5) for _ in range(6)], 0.25)
    inputs = random_inputs(rng, 300, 60, density=0.02)
    inputs = sp.vstack([inputs, sp.csr_matrix((5, 60))], format="csr")
    expected = _expected(network, inputs)
    result = banded_engine.infer(network, inputs)
    assert result.categories.tolist() == expected
    assert not set(range(301, 306)) & set(expected)


def test_positive_bias_with_cancelling_weights(banded_engine, rng):
    # 1 - 1 = 0 is no structure, so no bias: MATLAB's logical(Z) semantics.
    inputs = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]))
    weights = sp.csr_matrix(np.array([[1.0], [-1.0]]))
    network = Network([weights], 0.5)
    result = banded_engine.infer(network, inputs)
    assert result.categories.tolist() == _expected(network, inputs) == [2]
    # Mixed signs with random values: sums may cancel, the reference decides those.
    layers = [random_layer(rng, 40, 40, 4) for _ in range(5)]
    for layer in layers:
        layer.data[rng.random(layer.nnz) < 0.3] *= -1
    network = Network(layers, 0.1)
    inputs = random_inputs(rng, 200, 40, density=0.2)
    assert banded_engine.infer(network, inputs).categories.tolist() == _expected(network, inputs)


def test_stored_zeros_are_no_structure(banded_engine):
    # Explicitly stored zeros (in the inputs and in a layer) make products of 0:
    # still no structure, so a positive bias must not wake those rows.
    inputs = sp.csr_matrix((np.array([0.0, 1.0, 2.0]), np.array([0, 1, 0]), np.array([0, 1, 2, 3])),
                           shape=(3, 2))
    weights = sp.csr_matrix((np.array([1.0, 0.0]), np.array([0, 1]), np.array([0, 1, 2])),
                            shape=(2, 2))
    assert inputs.nnz == 3 and weights.nnz == 2
    network = Network([weights, sp.identity(2, format="csr")], 0.5)
    result = banded_engine.infer(network, inputs)
    assert result.categories.tolist() == _expected(network, inputs) == [3]


def test_negative_inputs_and_zero_bias(banded_engine, rng):
    inputs = random_inputs(rng, 200, 30, density=0.3)
    inputs.data = rng.uniform(-1, 1, inputs.nnz)
    network = Network([random_layer(rng, 30, 30, 4) for _ in range(4)], 0.0)
    assert banded_engine.infer(network, inputs).categories.tolist() == _expected(network, inputs)


# ------------------------------------------------------------ dead and saturated rows

def test_rows_that_all_die_stop_the_work(engine, rng):
    network = Network([random_layer(rng, 64, 64, 4, weight=1 / 64) for _ in range(50)], -0.3)
    inputs = random_inputs(rng, 100, 64, density=0.3)
    result = engine.infer(network, inputs)
    assert result.categories.size == 0
    # Every row dies in the first layer (4/64 < 0.3): the other 49 are never run.
    assert result.live_rows == [0] * 50
    assert result.layer_seconds[1:] == [0.0] * 49


def test_rows_the_next_layer_must_kill_are_dropped_a_layer_early(engine):
    # After layer 1 the rows hold 0.1, 0.2 and 0.1 in neuron 0. Layer 2 lifts
    # neuron 0 by at most 2 (column 0) in the first network: 2 * 0.1 - 0.3 < 0
    # kills rows 1 and 3 there. In the second, column 1 lifts it by 4 and
    # 4 * 0.1 - 0.3 > 0: no row may be dropped.
    inputs = sp.csr_matrix(np.array([[0.4, 0.0], [0.5, 0.0], [0.4, 0.0]]))
    identity = sp.identity(2, format="csr")
    weak = sp.csr_matrix(np.array([[2.0, 0.0], [0.0, 1.0]]))
    strong = sp.csr_matrix(np.array([[2.0, 4.0], [0.0, 1.0]]))
    for second, rows_in_layer_2 in ((weak, 1), (strong, 3)):
        network = Network([identity, second, identity], -0.3)
        engine.prepare(network)
        result = engine.infer(network, inputs)
        assert result.categories.tolist() == _expected(network, inputs)
        assert result.details["computed_rows"][:2] == [3, rows_in_layer_2]
        assert result.live_rows[0] == 3


def test_saturated_rows_skip_layers_that_keep_them_saturated(engine, rng):
    strong = [random_layer(rng, 32, 32, 4, weight=1.0) for _ in range(30)]
    assert all(_layer(w, -0.3).keeps_saturated for w in strong)
    network = Network(strong, -0.3)
    inputs = random_inputs(rng, 200, 32, density=0.4)
    expected = _expected(network, inputs)
    assert len(expected) > 100
    result = engine.infer(network, inputs)
    assert result.categories.tolist() == expected
    assert result.details["chunks"] == 1
    # Without the shortcut, layers 2..30 would each compute the saturated rows.
    computed = result.details["computed_rows"]
    assert 0 < sum(count > 0 for count in computed) < 15
    assert sum(computed) < 15 * len(expected)


def test_rows_hovering_between_the_thresholds_go_to_the_reference_early(engine):
    # y -> 2 y - 0.3 keeps 0.3 where it is: that row is neither dead nor
    # saturated, and its rounding band doubles every layer. Once the band
    # spans [0, 32] the row goes to the reference instead of being carried
    # through every remaining layer; the other rows die or saturate.
    n_layers = 90
    network = Network([sp.identity(2, format="csr") * 2.0] * n_layers, -0.3)
    inputs = sp.csr_matrix(np.array([[0.3, 0.3], [1.0, 0.5], [0.1, 0.2], [0.3, 0.0]]))
    result = engine.infer(network, inputs)
    assert result.categories.tolist() == _expected(network, inputs)
    assert result.rechecked_rows == 2
    computed = result.details["computed_rows"]
    # The band reaches 32 after about 50 layers (2**50 * 2e-14).
    assert computed[40] == 2 and computed[70:] == [0] * (n_layers - 70)
    # Row 2 saturates, row 3 dies, rows 1 and 4 are the reference's to decide.
    assert result.live_rows[-1] == 3


def test_one_rows_wide_band_sends_no_other_row_to_the_reference(banded_engine):
    # Row 1 hovers at 0.3 (its band doubles every layer); row 2 saturates in
    # neuron 0 and is structurally zero in neuron 1; row 3 dies at once. Only
    # row 1 is in doubt, however wide its band grows.
    network = Network([sp.identity(2, format="csr") * 2.0] * 120, -0.3)
    inputs = sp.csr_matrix(np.array([[0.3, 0.3], [1.0, 0.0], [0.1, 0.0]]))
    result = banded_engine.infer(network, inputs)
    assert result.categories.tolist() == _expected(network, inputs)
    assert result.rechecked_rows == 1


def test_few_rows_share_a_narrow_tile(engine, rng):
    assert [cpu._width_for(n, 128) for n in (1, 8, 9, 17, 100, 128, 5000)] == \
        [8, 8, 16, 32, 128, 128, 128]
    assert [cpu._width_for(n, 32) for n in (1, 20, 100)] == [8, 32, 32]
    network = Network([random_layer(rng, 60, 60, 4) for _ in range(30)], -0.3)
    inputs = random_inputs(rng, 5, 60, density=0.3)
    assert engine.infer(network, inputs).categories.tolist() == _expected(network, inputs)


def test_layers_with_one_weight_and_with_many_pack_together(engine, rng):
    # Uniform layers store one weight (read with stride 0) between layers that store all.
    layers = [random_layer(rng, 50, 50, 4, weight=0.5 if k % 2 else None) for k in range(8)]
    tables = [cpu._Layer(weights, -0.2) for weights in layers]
    assert [table.uniform for table in tables] == [False, True] * 4
    assert [table.gather[2].size for table in tables[:2]] == [200, 1]
    network = Network(layers, -0.2)
    inputs = random_inputs(rng, 400, 50, density=0.2)
    expected = _expected(network, inputs)
    assert 0 < len(expected) < 400
    assert engine.infer(network, inputs).categories.tolist() == expected


def test_multiply_adds_are_counted_as_done(engine, rng, monkeypatch):
    layer = random_layer(rng, 40, 30, 5)
    network = Network([layer], -0.3)
    # 100 rows with every input set: one tile of 128 lanes, no input skipped.
    full = sp.csr_matrix(np.ones((100, 40)))
    assert engine.infer(network, full).details["multiply_adds"] == [layer.nnz * cpu.TILE]
    # Scattered from the inputs: each pixel times its row's weights.
    monkeypatch.setattr(cpu, "_scatter_pays", lambda *args: True)
    sparse = random_inputs(rng, 60, 40, density=0.1)
    expected = int(sum(layer.indptr[k + 1] - layer.indptr[k] for k in sparse.indices))
    assert engine.infer(network, sparse).details["multiply_adds"] == [expected]


def test_compiled_error_bound_is_the_bounds_module_formula(rng):
    errors, growth = rng.random(200) * 10.0 ** rng.integers(-16, 2, 200), rng.random(200) * 4
    terms, bias = rng.integers(1, 100, 200), rng.random(200) - 0.5
    scale = 32.0 + 1e6 * (rng.random(200) < 0.2) * rng.random(200)
    compiled = np.array([cpu._next_error(*values) for values in zip(errors, growth, terms, bias, scale)])
    expected = bounds.next_error(errors, growth, terms, bias, scale=scale)
    np.testing.assert_allclose(compiled, expected, rtol=4 * np.finfo(float).eps, atol=0)


def _grouped_layer(rng, n_in, n_base):
    """Each of ``n_base`` random columns three times, plus once with its weights x 0.75,
    shuffled: ``2 n_base`` distinct columns (each with a partner) of ``4 n_base``."""
    base = random_layer(rng, n_in, n_base, 5)
    layer = sp.hstack([sp.kron(base, np.ones((1, 3))), base * 0.75], format="csr")
    return layer[:, rng.permutation(4 * n_base)].tocsr()


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_tiles_hold_one_row_per_group_of_equal_columns(tmp_path, rng, monkeypatch, streamed):
    # The next layer reads a copy's tile row wherever it reads the copy; across
    # segment boundaries too (a streamed network of 2-layer segments).
    layers = [_grouped_layer(rng, 40, 12)] + [_grouped_layer(rng, 48, 12) for _ in range(4)]
    layer = cpu._Layer(layers[1], -0.2)
    assert layer.n_stored == 24 and layer.gather[0].size == 24 + 1
    dense = layers[1].toarray()
    for column in range(48):  # each neuron's tile row is computed from an equal column
        assert (dense[:, layer.computed_columns[layer.stored[column]]] == dense[:, column]).all()
    monkeypatch.setattr(cpu, "SEGMENT_LAYERS", 2)
    network = Network(LayerFiles(_layer_files(tmp_path, layers), [(40, 48)] + [(48, 48)] * 4)
                      if streamed else layers, -0.2)
    inputs = random_inputs(rng, 600, 40, density=0.2)
    expected = forward_categories(layers, -0.2, inputs).tolist()
    assert 0 < len(expected) < 600
    engine = cpu.CpuEngine(threads=2, chunk_rows=150, table_cache=False)
    result = engine.infer(network, inputs)
    assert result.categories.tolist() == expected
    assert result.details["tile_rows"] == [[40, 24]] + [[24, 24]] * 4
    segments = [packed for packed, _ in cpu._segments(engine._prepared[1])]
    assert len(segments) == (3 if streamed else 1)
    assert [n for packed in segments for n in packed.tile_out.tolist()] == [24] * 5
    assert [n for packed in segments for n in packed.tile_in.tolist()] == [40] + [24] * 4


def test_a_streamed_segment_wider_than_foreseen_grows_the_tiles(tmp_path, rng, monkeypatch):
    # Tiles are sized by the first segment and the layers before the others
    # (24 rows); layer 2's 90 distinct columns need more, found on the way.
    layers = [_grouped_layer(rng, 40, 12), _grouped_layer(rng, 48, 12),
              random_layer(rng, 48, 90, 4), _grouped_layer(rng, 90, 12),
              _grouped_layer(rng, 48, 12)]
    monkeypatch.setattr(cpu, "SEGMENT_LAYERS", 2)
    shapes = [layer.shape for layer in layers]
    network = Network(LayerFiles(_layer_files(tmp_path, layers), shapes), -0.2)
    inputs = random_inputs(rng, 600, 40, density=0.2)
    expected = forward_categories(layers, -0.2, inputs).tolist()
    assert 0 < len(expected) < 600
    engine = cpu.CpuEngine(threads=2, chunk_rows=150, table_cache=False)
    engine.prepare(network)
    streamed = engine._prepared[1]
    assert cpu._widest(streamed, next(cpu._segments(streamed))[0], True) == 24
    assert engine.infer(network, inputs).categories.tolist() == expected
    assert all(buffers.widest >= 90 for buffers in engine._buffers)


def _layer_files(tmp_path, layers):
    paths = []
    for k, weights in enumerate(layers):
        paths.append(tmp_path / f"layer{k}.tsv")
        io.write_layer(paths[-1], weights)
    return paths


class _CountingFiles(LayerFiles):
    """Layer files that note which layers are read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = []

    def __getitem__(self, index):
        layer = super().__getitem__(index)
        self.read.append(index)
        return layer


def test_a_streamed_network_is_read_no_further_once_every_row_is_settled(tmp_path, rng,
                                                                          monkeypatch):
    # Layer 1 kills every row: inference reads no other layer (the summaries
    # read each layer once, in prepare).
    layers = [random_layer(rng, 30, 30, 3, weight=1 / 64)] + \
        [random_layer(rng, 30, 30, 3) for _ in range(9)]
    files = _CountingFiles(_layer_files(tmp_path, layers), [(30, 30)] * 10)
    lazy = Network(files, -0.3)
    monkeypatch.setattr(cpu, "SEGMENT_LAYERS", 2)
    engine = cpu.CpuEngine(chunk_rows=50)
    engine.prepare(lazy)
    assert sorted(files.read) == list(range(10))
    files.read.clear()
    result = engine.infer(lazy, random_inputs(rng, 200, 30, density=0.2))
    assert result.categories.size == 0 and result.live_rows == [0] * 10
    assert result.details["chunks"] == 4
    assert sorted(set(files.read)) == [0, 1]


@pytest.mark.parametrize("budget, on_disk", [(0, False), (2**30, False), (0, True)],
                         ids=["rebuilt", "kept", "mapped"])
def test_streamed_segments_are_shared_or_rebuilt_within_the_budget(tmp_path, rng, monkeypatch,
                                                                   budget, on_disk):
    layers = [random_layer(rng, 40, 40, 4) for _ in range(7)]
    files = _CountingFiles(_layer_files(tmp_path, layers), [(40, 40)] * 7)
    lazy = Network(files, -0.3)
    monkeypatch.setattr(cpu, "SEGMENT_LAYERS", 3)
    engine = cpu.CpuEngine(threads=2, chunk_rows=100, streamed_bytes=budget,
                           table_cache=tmp_path / "tables" if on_disk else False)
    inputs = random_inputs(rng, 400, 40, density=0.2)
    expected = forward_categories(layers, -0.3, inputs).tolist()
    assert 0 < len(expected) < 400
    engine.prepare(lazy)
    files.read.clear()
    for _ in range(2):
        assert engine.infer(lazy, inputs).categories.tolist() == expected
    reads = np.bincount(files.read, minlength=7)
    if budget or on_disk:
        # Each segment converted once, for every chunk and run (kept in memory, or on disk).
        assert reads.tolist() == [1] * 7
    else:
        assert reads.min() > 1  # over the budget: converted again by later chunks
    assert engine._prepared[1].kept_bytes <= budget
    if on_disk:
        assert len(list((tmp_path / "tables").glob("*.tables"))) == 3 + 1  # segments, summaries


def test_a_layer_with_a_weak_column_brings_saturated_rows_back(engine, rng):
    n = 32
    strong = [random_layer(rng, n, n, 4, weight=1.0) for _ in range(10)]
    # Column 0 sums to 0.5: an all-32 row gives 16 - 0.3 there, not 32.
    weak = random_layer(rng, n, n, 4, weight=1.0).tolil()
    weak[:, 0] = 0.0
    weak[3, 0] = 0.5
    weak = weak.tocsr()
    # The last layer reads only neuron 0: 15.7 * 0.015 < 0.3 < 32 * 0.015.
    last = sp.csr_matrix((np.full(n, 0.015), (np.zeros(n, dtype=int), np.arange(n))), shape=(n, n))
    assert not _layer(weak, -0.3).keeps_saturated
    network = Network(strong + [weak, last], -0.3)
    inputs = random_inputs(rng, 100, n, density=0.5)
    y = inputs
    for weights in strong:
        y = apply_layer(y, weights, -0.3)
    assert np.count_nonzero((y.toarray() == 32).all(axis=1)) > 50  # saturated before the weak layer
    result = engine.infer(network, inputs)
    assert result.categories.tolist() == _expected(network, inputs) == []


def test_saturation_test_is_conservative_at_the_boundary():
    # 32 * 1.009375 - 0.3 = 32 exactly: the rounding band says "not provably".
    column = sp.csr_matrix(np.full((1, 1), 1.009375))
    assert not _layer(column, -0.3).keeps_saturated
    assert _layer(sp.csr_matrix(np.full((1, 1), 1.02)), -0.3).keeps_saturated
    # 32 s + bias >= 32 with s = 0 and a huge bias: zero sums get no bias at all.
    assert not _layer(sp.csr_matrix((1, 1)), 40.0).keeps_saturated


@needs_numba
# ------------------------------------------------------------ streaming, inputs, availability

def test_lazy_layers_stream_from_files(tmp_path, rng):
    layers = [random_layer(rng, 50, 50, 5) for _ in range(6)]
    paths = []
    for k, weights in enumerate(layers):
        paths.append(tmp_path / f"layer{k}.tsv")
        io.write_layer(paths[-1], weights)
    lazy = Network(LayerFiles(paths, [(50, 50)] * 6), -0.3)
    inputs = random_inputs(rng, 300, 50, density=0.15)
    engine = cpu.CpuEngine(chunk_rows=100)
    result = engine.infer(lazy, inputs)
    assert result.categories.tolist() == forward_categories(layers, -0.3, inputs).tolist()
    assert isinstance(engine._prepared[1], cpu._Streamed)


# ------------------------------------------------------------ converted tables on disk

def _keyed_network(tmp_path, rng, n_layers=6, n=48):
    layers = [random_layer(rng, n, n, 4, weight=0.4 if k % 2 else None)
              for k in range(n_layers)]
    files = LayerFiles(_layer_files(tmp_path, layers), [(n, n)] * n_layers)
    return Network(files.read_all(), -0.3, layer_keys=files.layer_keys()), layers


def _no_conversion(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a layer was converted although its tables are on disk")

    monkeypatch.setattr(cpu, "_Layer", refuse)
    monkeypatch.setattr(cpu, "_summarize", refuse)


def test_a_second_engine_maps_the_tables_the_first_converted(tmp_path, rng, monkeypatch):
    network, layers = _keyed_network(tmp_path, rng)
    inputs = random_inputs(rng, 300, 48, density=0.2)
    expected = forward_categories(layers, -0.3, inputs).tolist()
    assert 0 < len(expected) < 300
    folder = tmp_path / "tables"
    first = cpu.CpuEngine(table_cache=folder).infer(network, inputs)
    assert first.categories.tolist() == expected
    (stored,) = folder.glob("*.tables")
    _no_conversion(monkeypatch)
    engine = cpu.CpuEngine(table_cache=folder)
    assert engine.infer(network, inputs).categories.tolist() == expected
    packed = engine._prepared[1]
    assert not packed.g_indices.flags.writeable and not packed.g_indices.flags.owndata
    assert packed.first_layer is not None  # the scatter tables came back too


def test_truncated_or_foreign_table_files_are_converted_again(tmp_path, rng):
    network, layers = _keyed_network(tmp_path, rng)
    inputs = random_inputs(rng, 200, 48, density=0.2)
    expected = forward_categories(layers, -0.3, inputs).tolist()
    folder = tmp_path / "tables"
    cpu.CpuEngine(table_cache=folder).prepare(network)
    (stored,) = folder.glob("*.tables")
    size = stored.stat().st_size
    with open(stored, "r+b") as handle:
        handle.truncate(size - 100)
    assert cpu.CpuEngine(table_cache=folder).infer(network, inputs).categories.tolist() == expected
    assert stored.stat().st_size == size  # written again, whole
    stored.write_bytes(b"not a table file")
    assert cpu.CpuEngine(table_cache=folder).infer(network, inputs).categories.tolist() == expected
    assert stored.stat().st_size == size


def test_changed_layers_bias_or_original_get_their_own_tables(tmp_path, rng):
    network, layers = _keyed_network(tmp_path, rng)
    cache = cpu._TableCache(tmp_path / "tables")
    originals = [None] * network.n_layers
    key = cache.key(network, originals, 0, 6, "network")
    other_bias = Network(network.layers, -0.25, layer_keys=network.layer_keys)
    assert cache.key(other_bias, originals, 0, 6, "network") != key
    assert cache.key(network, [(2.0, 32)] + originals[1:], 0, 6, "network") != key
    assert cache.key(network, originals, 0, 6, "segment") != key
    assert cache.key(network, originals, 0, 3, "network") != key
    assert cache.key(Network(network.layers, -0.3), originals, 0, 6, "network") is None
    # A layer file written again (new size or mtime) names new tables.
    path = tmp_path / "layer2.tsv"
    io.write_layer(path, random_layer(rng, 48, 48, 4))
    os.utime(path, ns=(1, 1))
    files = LayerFiles([tmp_path / f"layer{k}.tsv" for k in range(6)], [(48, 48)] * 6)
    assert cache.key(Network(network.layers, -0.3, layer_keys=files.layer_keys()), originals,
                     0, 6, "network") != key


def test_networks_without_layer_keys_or_a_cache_write_no_tables(tmp_path, rng, caplog):
    network, layers = _keyed_network(tmp_path, rng)
    inputs = random_inputs(rng, 100, 48, density=0.2)
    expected = forward_categories(layers, -0.3, inputs).tolist()
    folder = tmp_path / "tables"
    unkeyed = Network(network.layers, -0.3)
    assert cpu.CpuEngine(table_cache=folder).infer(unkeyed, inputs).categories.tolist() == expected
    assert cpu.CpuEngine(table_cache=False).infer(network, inputs).categories.tolist() == expected
    assert not folder.exists()
    # A folder that cannot be written: a warning, and the run goes on.
    blocked = tmp_path / "file"
    blocked.write_text("in the way")
    with caplog.at_level("WARNING"):
        result = cpu.CpuEngine(table_cache=blocked / "tables").infer(network, inputs)
    assert result.categories.tolist() == expected
    assert "cannot keep converted layer tables" in caplog.text


def test_a_streamed_network_maps_its_summaries_and_segments(tmp_path, rng, monkeypatch):
    layers = [random_layer(rng, 40, 40, 4) for _ in range(7)]
    files = _CountingFiles(_layer_files(tmp_path, layers), [(40, 40)] * 7)
    lazy = Network(files, -0.3)
    monkeypatch.setattr(cpu, "SEGMENT_LAYERS", 3)
    inputs = random_inputs(rng, 300, 40, density=0.2)
    expected = forward_categories(layers, -0.3, inputs).tolist()
    folder = tmp_path / "tables"
    assert cpu.CpuEngine(table_cache=folder).infer(lazy, inputs).categories.tolist() == expected
    files.read.clear()
    _no_conversion(monkeypatch)
    engine = cpu.CpuEngine(table_cache=folder)
    assert engine.infer(lazy, inputs).categories.tolist() == expected
    assert files.read == []  # neither the summaries nor the segments read a layer
    assert isinstance(engine._prepared[1], cpu._Streamed)


def test_inputs_of_the_wrong_width_are_a_data_error(engine, rng):
    network = Network([random_layer(rng, 20, 20, 3)], -0.3)
    with pytest.raises(DataError, match="columns"):
        engine.infer(network, random_inputs(rng, 5, 21))


def test_no_inputs(engine, rng):
    network = Network([random_layer(rng, 20, 20, 3)], -0.3)
    result = engine.infer(network, sp.csr_matrix((0, 20)))
    assert result.categories.size == 0 and result.live_rows == [0]


def test_without_numba_the_engine_is_unavailable_with_a_clear_message():
    program = (
        "import sys; sys.modules['numba'] = None\n"
        "from graphchallenge import engines\n"
        "from graphchallenge.errors import EngineUnavailable\n"
        "print(engines.availability('cpu'))\n"
        "try:\n"
        "    engines.get_engine('cpu')\n"
        "except EngineUnavailable as exc:\n"
        "    print('raised:', exc)\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=True).stdout
    assert "(False, 'numba is not installed: pip install numba')" in out
    assert "raised: engine 'cpu' cannot run here: numba is not installed" in out


@pytest.mark.parametrize("scatter", [True, False], ids=["scattered", "gathered"])
@pytest.mark.parametrize("positive_bias", [False, True])
def test_first_layer_scattered_or_gathered_equals_the_reference(engine, rng, monkeypatch,
                                                                 scatter, positive_bias):
    calls = []

    def forced(*args):
        calls.append(scatter)
        return scatter

    monkeypatch.setattr(cpu, "_scatter_pays", forced)
    # A wide, sparse first layer into a narrow one, as after compaction, signed weights;
    # the bias sits at the median of the rows' largest sums, so that half the rows
    # are categories and a small error in any sum changes some verdicts.
    first = random_layer(rng, 200, 12, per_column=20)
    first.data[::7] *= -1
    inputs = random_inputs(rng, 700, 200, density=0.05)
    largest = (inputs @ first).toarray().max(axis=1)
    bias = -float(np.median(largest))
    if positive_bias:
        first.data *= -1  # sums mostly negative: a positive bias wakes only the structure
        bias = 0.05
    network = Network([first], bias)
    expected = forward_categories(network.layers, bias, inputs).tolist()
    assert 50 < len(expected) < 650
    assert engine.infer(network, inputs).categories.tolist() == expected
    deeper = Network([first, random_layer(rng, 12, 12, 4), random_layer(rng, 12, 5, 3)], bias)
    assert engine.infer(deeper, inputs).categories.tolist() == \
        forward_categories(deeper.layers, bias, inputs).tolist()
    assert calls and set(calls) == {scatter}


@pytest.mark.parametrize("one_weight", [True, False], ids=["one weight", "weights"])
def test_a_first_layer_of_equal_degree_is_scattered_without_pointers(engine, rng, monkeypatch,
                                                                     one_weight):
    # Every input feeds exactly two outputs (as in every challenge layer, copies
    # aside): rows of W are found at k * 2, and one stored weight serves all.
    n_in, n_out = 120, 30
    rows = np.repeat(np.arange(n_in), 2)
    cols = np.concatenate([rng.choice(n_out, size=2, replace=False) for _ in range(n_in)])
    weights = np.full(rows.size, 0.2) if one_weight else rng.uniform(0.1, 0.3, rows.size)
    first = sp.csr_matrix((weights, (rows, cols)), shape=(n_in, n_out))
    layer = cpu._Layer(first, -0.3, first=True)
    assert layer.n_stored == n_out  # no two columns equal
    assert layer.scatter[3].tolist() == [2, 0 if one_weight else 1]
    assert layer.scatter[2].size == (1 if one_weight else rows.size)
    uneven = cpu._Layer(random_layer(rng, n_in, n_out, per_column=5), -0.3, first=True)
    assert uneven.scatter[3][0] == 0  # degrees differ: pointers are read
    monkeypatch.setattr(cpu, "_scatter_pays", lambda *args: True)
    inputs = random_inputs(rng, 500, n_in, density=0.1)
    for layers in ([first, random_layer(rng, n_out, 20, 4)], [random_layer(rng, n_in, n_out, 5)]):
        network = Network(layers, -0.3)
        expected = forward_categories(layers, -0.3, inputs).tolist()
        assert 0 < len(expected) < 500
        result = engine.infer(network, inputs)
        assert result.categories.tolist() == expected
        assert result.details["first_layer"] == "scatter"


def test_the_real_network_and_its_compaction_are_both_scattered(real_challenge):
    # Scattered, the original's first layer sums only its 64 distinct columns
    # (2 computed weights per input, as after compaction, and 64 tile rows); measured faster
    # than gathering on the real and on generated inputs.
    from graphchallenge import compress

    rows = np.arange(real_challenge.inputs.shape[0])
    indptr = real_challenge.inputs.indptr
    original = next(cpu._layers(real_challenge.network))
    compact = next(cpu._layers(compress.compact(real_challenge.network).network))
    assert original.scatter[0][-1] == 2 * 1024 and original.n_stored == 64
    assert cpu._scatter_pays(original, indptr, rows)
    assert cpu._scatter_pays(compact, indptr, rows)
    # A layer whose columns all differ is still gathered from these images.
    assert not cpu._scatter_pays(cpu._Layer(sp.random(1024, 1024, density=1 / 32, format="csr",
                                                      random_state=1), -0.3, first=True),
                                 indptr, rows)
