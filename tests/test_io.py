import os
import gzip
import time

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge import io
from graphchallenge.errors import DataError

from conftest import random_inputs, random_layer as _random_layer


def random_layer(rng, n_in, n_out, per_column=4):
    """Weights in sixteenths, like the challenge's (exact in the %.6e text format)."""
    layer = _random_layer(rng, n_in, n_out, per_column)
    layer.data = rng.integers(1, 9, size=layer.nnz) / 16.0
    return layer


def test_layer_round_trip_exact_format(tmp_path, rng):
    layer = random_layer(rng, 50, 50, per_column=3)
    path = tmp_path / "n50-l1.tsv"
    io.write_layer(path, layer)
    lines = path.read_text().splitlines()
    # Sorted by column, then row; values written as the challenge does.
    triples = [tuple(line.split("\t")) for line in lines]
    keys = [(int(c), int(r)) for r, c, _ in triples]
    assert keys == sorted(keys)
    assert all(len(v) == len("6.250000e-02") and "e" in v for _, _, v in triples)
    back = io.read_layer(path, 50, cache=False)
    assert (back != layer).nnz == 0


def test_real_layer_format_is_reproduced_byte_for_byte(real_data_dir, tmp_path):
    source = real_data_dir / "dnn" / "neuron1024" / "n1024-l7.tsv"
    layer = io.read_layer(source, 1024, cache=False)
    io.write_layer(tmp_path / "copy.tsv", layer)
    assert (tmp_path / "copy.tsv").read_bytes() == source.read_bytes()


def test_inputs_round_trip_gz_and_padding(tmp_path, rng):
    inputs = random_inputs(rng, 30, 64)
    path = tmp_path / "sparse-images-64.tsv.gz"
    io.write_inputs(path, inputs)
    back = io.read_inputs(path, 64, cache=False)
    assert back.shape == (30, 64)
    assert (back != inputs).nnz == 0
    assert io.read_inputs(path, 64, n_inputs=10, cache=False).shape == (10, 64)


def test_categories_round_trip(tmp_path):
    path = tmp_path / "cats.tsv"
    io.write_categories(path, [9, 3, 3, 200])
    assert path.read_text() == "3\n9\n200\n"
    assert io.read_categories(path).tolist() == [3, 9, 200]


def test_any_whitespace_is_accepted(tmp_path):
    path = tmp_path / "spaces.tsv"
    path.write_text("1 1 0.5\n2  2\t0.25\n\n")
    matrix = io.read_layer(path, 2, cache=False)
    assert matrix.toarray().tolist() == [[0.5, 0.0], [0.0, 0.25]]


def test_duplicates_add_up_like_matlab_sparse(tmp_path):
    path = tmp_path / "dup.tsv"
    path.write_text("1\t1\t0.5\n1\t1\t0.25\n")
    assert io.read_layer(path, 1, cache=False)[0, 0] == 0.75


@pytest.mark.parametrize("text, message", [
    ("1\t1\t0.5\n2\t1\n", ":2: expected 3 fields"),
    ("1\t1\t0.5\n2\tx\t1\n", ":2: not a number"),
    ("1\t1\t0.5\n\n3\t1\t1\n", ":3: row index 3 is not an integer in 1..2"),
    ("1\t0\t0.5\n", ":1: column index 0"),
    ("1.5\t1\t0.5\n", ":1: row index 1.5"),
    ("1\t1\tnan\n", ":1: value is not finite"),
])
def test_bad_layer_names_file_and_line_and_writes_no_cache(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        io.read_layer(path, 2)
    assert str(path) in str(info.value)
    assert not list(io.cache_root().glob("bad.tsv.*"))


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        io.read_inputs(empty, 4, cache=False)
    with pytest.raises(DataError, match="no such file"):
        io.read_layer(tmp_path / "nope.tsv", 4)


def test_truncated_gzip_is_a_clear_error(tmp_path, rng):
    path = tmp_path / "sparse-images-64.tsv.gz"
    io.write_inputs(path, random_inputs(rng, 200, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        io.read_inputs(path, 64, cache=False)


def test_garbage_truth(tmp_path):
    path = tmp_path / "truth.tsv"
    path.write_text("3\n7\nbanana\n")
    with pytest.raises(DataError, match=":3: not a row number"):
        io.read_categories(path)
    path.write_text("3\n-2\n")
    with pytest.raises(DataError, match=":2: not a positive integer"):
        io.read_categories(path)


def test_cache_serves_the_same_matrix_and_notices_changes(tmp_path, rng):
    path = tmp_path / "n40-l1.tsv"
    io.write_layer(path, random_layer(rng, 40, 40))
    first = io.read_layer(path, 40)
    assert len(list(io.cache_root().glob("n40-l1.tsv.*"))) == 1
    again = io.read_layer(path, 40)
    assert (first != again).nnz == 0
    # Rewrite the file: the cache key (size, mtime) changes and the new content is served.
    changed = random_layer(np.random.default_rng(7), 40, 40, per_column=5)
    time.sleep(0.01)
    io.write_layer(path, changed)
    assert (io.read_layer(path, 40) != changed).nnz == 0


def test_damaged_cache_is_rebuilt(tmp_path, rng):
    path = tmp_path / "n20-l1.tsv"
    layer = random_layer(rng, 20, 20)
    io.write_layer(path, layer)
    io.read_layer(path, 20)
    (cache_file,) = io.cache_root().glob("n20-l1.tsv.*")
    cache_file.write_bytes(cache_file.read_bytes()[:40])
    assert (io.read_layer(path, 20) != layer).nnz == 0


def test_full_precision_weights_survive_the_text_format(tmp_path, rng):
    layer = _random_layer(rng, 30, 30)  # arbitrary doubles, as fine-tuning produces
    io.write_layer(tmp_path / "w.tsv", layer)
    assert (io.read_layer(tmp_path / "w.tsv", 30, cache=False) != layer).nnz == 0


def test_cache_is_at_least_20x_faster_on_real_layers(real_data_dir, tmp_path):
    # Fresh copies: other tests may have cached the originals already.
    paths = []
    for k in range(1, 121):
        path = tmp_path / f"n1024-l{k}.tsv"
        path.write_bytes((real_data_dir / "dnn" / "neuron1024" / path.name).read_bytes())
        paths.append(path)
    start = time.perf_counter()
    parsed = [io.read_layer(p, 1024) for p in paths]  # parses and writes the cache
    first = time.perf_counter() - start
    second = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        cached = [io.read_layer(p, 1024) for p in paths]
        second = min(second, time.perf_counter() - start)
    assert all((a != b).nnz == 0 for a, b in zip(parsed, cached))
    assert first / second >= 20, (first, second)


def test_mmap_load_matches(tmp_path, rng):
    layer = random_layer(rng, 30, 30)
    io.save_csr(tmp_path / "x.csr", layer)
    mapped = io.load_csr(tmp_path / "x.csr", mmap=True)
    assert (mapped != layer).nnz == 0
    assert isinstance(mapped, sp.csr_matrix)


def test_cached_matrix_converts_like_a_parsed_one(tmp_path, rng):
    path = tmp_path / "n30-l1.tsv"
    io.write_layer(path, random_layer(rng, 30, 30))
    io.read_layer(path, 30)
    cached = io.read_layer(path, 30)
    assert cached.indptr.dtype == cached.indices.dtype
    assert (cached.tocoo().tocsc() != io.read_layer(path, 30, cache=False)).nnz == 0


def test_written_files_follow_the_umask_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_categories(tmp_path / "c.tsv", [1])
    finally:
        os.umask(old)
    assert (tmp_path / "c.tsv").stat().st_mode & 0o777 == 0o644


def test_inputs_written_in_chunks_read_back_whole(tmp_path, rng):
    inputs = random_inputs(rng, 25, 16)
    io.write_inputs(tmp_path / "a.tsv.gz", inputs, rows_per_chunk=4)
    io.write_inputs(tmp_path / "b.tsv", inputs)
    assert gzip.decompress((tmp_path / "a.tsv.gz").read_bytes()) == (tmp_path / "b.tsv").read_bytes()
    assert (io.read_inputs(tmp_path / "a.tsv.gz", 16, cache=False) != inputs).nnz == 0


def test_cache_keeps_arbitrary_values_and_wide_layers(tmp_path, rng):
    mixed = _random_layer(rng, 20, 20)  # varied doubles: stored in full
    io.save_csr(tmp_path / "m.csr", mixed)
    assert (io.load_csr(tmp_path / "m.csr") != mixed).nnz == 0
    wide = sp.csr_matrix(([0.0625, 0.0625], ([0, 1], [70000, 3])), shape=(2, 70001))
    io.save_csr(tmp_path / "w.csr", wide)  # column indices beyond 16 bits
    back = io.load_csr(tmp_path / "w.csr")
    assert (back != wide).nnz == 0 and back.indices.dtype == back.indptr.dtype


def test_uniform_cached_layers_share_one_read_only_weight_array(tmp_path, rng):
    paths = []
    for k in range(2):
        path = tmp_path / f"n40-l{k}.tsv"
        layer = _random_layer(rng, 40, 40, per_column=4, weight=0.0625)
        io.write_layer(path, layer)
        io.read_layer(path, 40)  # fills the cache
        paths.append(path)
    first, second = (io.read_layer(p, 40) for p in paths)
    assert first.data is second.data and not first.data.flags.writeable
    with pytest.raises(ValueError):
        first.data[0] = 1.0
    copy = first.copy()
    copy.data[0] = 1.0  # a copy is the caller's own
    assert io.read_layer(paths[0], 40).data[0] == 0.0625


def test_read_layers_side_by_side_matches_one_by_one_and_reports_the_bad_file(tmp_path, rng):
    paths = []
    for k in range(6):
        paths.append(tmp_path / f"n30-l{k}.tsv")
        io.write_layer(paths[-1], random_layer(rng, 30, 30))
    shapes = [(30, 30)] * len(paths)
    together = io.read_layers(paths, shapes, cache=False, threads=3)
    assert all((a != io.read_layer(p, 30, cache=False)).nnz == 0 for a, p in zip(together, paths))
    paths[4].write_text("1\t1\tbad\n")
    with pytest.raises(DataError, match="n30-l4.tsv:1: not a number"):
        io.read_layers(paths, shapes, cache=False, threads=3)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    path = tmp_path / "categories.tsv"
    path.write_bytes(gzip.compress(b"4\n2\n"))
    assert io.read_categories(path).tolist() == [2, 4]


def test_unwritable_cache_only_warns(tmp_path, rng, monkeypatch, caplog):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(io.CACHE_ENV, str(tmp_path / "file" / "cache"))
    path = tmp_path / "n10-l1.tsv"
    layer = random_layer(rng, 10, 10)
    io.write_layer(path, layer)
    assert (io.read_layer(path, 10) != layer).nnz == 0
    assert "cannot write the cache" in caplog.text


# ---------------------------------------------------------------- inputs read in blocks

def _same(a, b):
    return a.shape == b.shape and (a != b).nnz == 0 and np.array_equal(a.toarray(), b.toarray())


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_inputs_read_in_small_blocks_equal_the_whole_reading(tmp_path, rng, suffix):
    inputs = random_inputs(rng, 300, 256)
    path = tmp_path / f"in{suffix}"
    io.write_inputs(path, inputs)
    whole = io.read_inputs(path, 256, cache=False, block_bytes=1 << 30)
    assert _same(whole, inputs)
    # ~60 lines per block: dozens of blocks, rows split across them.
    blocks = io.read_inputs(path, 256, cache=False, block_bytes=700)
    assert _same(blocks, inputs)
    assert blocks.has_canonical_format


def test_inputs_out_of_order_with_values_and_duplicates_read_in_blocks(tmp_path, rng):
    inputs = random_inputs(rng, 200, 64)
    coo = inputs.tocoo()
    values = rng.integers(1, 5, size=coo.nnz) / 4.0
    order = rng.permutation(coo.nnz)
    lines = [f"{r + 1}\t{c + 1}\t{v}\n" for r, c, v in zip(coo.row[order], coo.col[order], values[order])]
    lines.append(f"{coo.row[0] + 1}\t{coo.col[0] + 1}\t0.5\n")  # a duplicate: adds up
    path = tmp_path / "shuffled.tsv"
    path.write_text("".join(lines))
    expected = sp.csr_matrix((values, (coo.row, coo.col)), shape=inputs.shape)
    expected[coo.row[0], coo.col[0]] += 0.5
    for block_bytes in (500, 1 << 30):
        assert _same(io.read_inputs(path, 64, cache=False, block_bytes=block_bytes), expected)


def test_slow_path_in_blocks_equals_the_fast_one(tmp_path, rng, monkeypatch):
    inputs = random_inputs(rng, 120, 64)
    coo = inputs.tocoo()
    # Spaces, not tabs: pyarrow refuses it, the line-by-line reader takes it.
    (tmp_path / "spaces.tsv").write_text("".join(
        f"{r + 1}  {c + 1} 1\n" for r, c in zip(coo.row, coo.col)))
    monkeypatch.setattr(io, "_SLOW_BLOCK_LINES", 37)
    assert _same(io.read_inputs(tmp_path / "spaces.tsv", 64, cache=False), inputs)


@pytest.mark.parametrize("bad, message", [("1500\t99\t1", "column index 99"),
                                          ("1500\tx\t1", "not a number"),
                                          ("0\t3\t1", "row index 0"),
                                          ("1500\t3\tinf", "not finite")])
def test_a_bad_line_in_a_later_block_is_named(tmp_path, bad, message, monkeypatch):
    lines = [f"{k // 2 + 1}\t{k % 50 + 1}\t1\n" for k in range(3000)]
    lines[1499] = bad + "\n"
    path = tmp_path / "bad.tsv"
    path.write_text("".join(lines))
    monkeypatch.setattr(io, "_SLOW_BLOCK_LINES", 100)
    with pytest.raises(DataError, match=f"bad.tsv:1500: .*{message}"):
        io.read_inputs(path, 64, cache=False, block_bytes=2000)
    assert not list(io.cache_root().glob("bad.tsv.*")), "a bad file must not be cached"


def test_binary_input_file_is_read_as_is(tmp_path, rng):
    inputs = random_inputs(rng, 40, 64)
    io.save_csr(tmp_path / "sparse-images-64.csr", inputs)
    assert _same(io.read_inputs(tmp_path / "sparse-images-64.csr", 64), inputs)
    assert _same(io.read_inputs(tmp_path / "sparse-images-64.csr", 64, n_inputs=7), inputs[:7])
    with pytest.raises(DataError, match="not 128"):
        io.read_inputs(tmp_path / "sparse-images-64.csr", 128)


def test_reading_shows_progress_when_asked(tmp_path, rng, capsys):
    inputs = random_inputs(rng, 30, 16)
    io.write_inputs(tmp_path / "in.tsv", inputs)
    io.read_inputs(tmp_path / "in.tsv", 16, cache=False, progress=True)
    assert "read inputs" in capsys.readouterr().err
    io.write_layer(tmp_path / "w.tsv", random_layer(rng, 16, 16))
    io.read_layers([tmp_path / "w.tsv"], [(16, 16)], cache=False, progress=True)
    assert "read layers" in capsys.readouterr().err
    io.read_inputs(tmp_path / "in.tsv", 16, cache=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("limit", [2**31, 10])
def test_csr_written_a_block_of_rows_at_a_time_reads_back(tmp_path, rng, monkeypatch, limit):
    # limit 10: the int64 index path of matrices past 2**31 nonzeros, on a small one.
    monkeypatch.setattr(io, "_INT32_LIMIT", limit)
    inputs = random_inputs(rng, 50, 64)
    blocks = [(np.diff(inputs[k:k + 7].indptr), inputs[k:k + 7].indices) for k in range(0, 50, 7)]
    assert io.save_csr_rows(tmp_path / "x.csr", blocks, 64) == (50, inputs.nnz)
    back = io.load_csr(tmp_path / "x.csr")
    assert back.shape == inputs.shape and (back != inputs).nnz == 0
    assert back.indices.dtype == back.indptr.dtype == (np.int32 if limit > inputs.nnz else np.int64)
    assert (back @ back.T != inputs @ inputs.T).nnz == 0


def test_saved_arrays_map_back_read_only_with_their_shapes(tmp_path):
    arrays = {"a": np.arange(5, dtype=np.int64), "empty": np.zeros((0, 5), dtype=np.int32),
              "b": np.linspace(0, 1, 15).reshape(3, 5), "flags": np.array([True, False])}
    path = tmp_path / "x.tables"
    io.save_arrays(path, arrays, key="k1")
    loaded = io.load_arrays(path, "k1")
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        assert np.array_equal(loaded[name], array) and not loaded[name].flags.writeable
        assert type(loaded[name]) is np.ndarray
    assert io.load_arrays(path, "k2") is None  # another key
    assert io.load_arrays(tmp_path / "absent", "k1") is None
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 1)
    assert io.load_arrays(path, "k1") is None


def test_a_row_block_shares_the_values_and_keeps_a_one_value_view(tmp_path, rng):
    inputs = random_inputs(rng, 40, 30, density=0.2)
    for start, stop in ((0, 40), (5, 17), (39, 40), (10, 10), (0, 1)):
        assert (io.row_block(inputs, start, stop) != inputs[start:stop]).nnz == 0
        assert io.row_block(inputs, start, stop).shape == (stop - start, 30)
    inputs.data[:] = 1.0
    io.save_csr(tmp_path / "x.csr", inputs)
    read = io.read_inputs(tmp_path / "x.csr", 30)
    block = io.row_block(read, 3, 20)
    assert block.data.strides == (0,) and (block != inputs[3:20]).nnz == 0
    assert io.read_inputs(tmp_path / "x.csr", 30, n_inputs=7).data.strides == (0,)


def test_selected_rows_match_scipy_and_keep_a_one_value_view_small(tmp_path, rng):
    inputs = random_inputs(rng, 40, 30, density=0.2)
    inputs.data[:] = rng.uniform(0.5, 2.0, inputs.nnz)
    for rows in ([3, 17, 4], [39], [], [5, 5, 0]):
        assert (io.select_rows(inputs, rows) != inputs[rows]).nnz == 0
        assert io.select_rows(inputs, rows).shape == (len(rows), 30)
    inputs.data[:] = 1.0
    io.save_csr(tmp_path / "x.csr", inputs)
    read = io.read_inputs(tmp_path / "x.csr", 30)
    assert read.data.strides == (0,)
    picked = io.select_rows(read, [8, 2])
    assert (picked != inputs[[8, 2]]).nnz == 0 and picked.data.size == picked.nnz


def test_a_row_block_is_known_canonical_only_where_its_matrix_is(rng):
    inputs = random_inputs(rng, 20, 30)
    assert io.row_block(inputs, 2, 9).has_canonical_format
    # Row 1 gives neuron 4 twice, after neuron 1 out of order: not canonical.
    twice = sp.csr_matrix((np.ones(4), np.array([3, 4, 4, 1]), np.array([0, 1, 4])), shape=(2, 30))
    assert not twice.has_canonical_format
    assert not io.row_block(twice, 0, 2).has_canonical_format
    assert io.row_block(twice, 0, 1).has_canonical_format


@pytest.mark.parametrize("populate_flag", [True, False], ids=["MAP_POPULATE", "touched"])
def test_populated_arrays_read_the_same(tmp_path, monkeypatch, populate_flag):
    import mmap

    if not populate_flag:
        monkeypatch.delattr(mmap, "MAP_POPULATE", raising=False)
    arrays = {"a": np.arange(3 * mmap.PAGESIZE, dtype=np.int64), "b": np.ones(7)}
    io.save_arrays(tmp_path / "x.tables", arrays, key="k")
    loaded = io.load_arrays(tmp_path / "x.tables", "k", populate=True)
    assert all(np.array_equal(loaded[name], arrays[name]) for name in arrays)


def test_binary_inputs_read_in_blocks_are_whole(tmp_path, rng, capsys):
    inputs = random_inputs(rng, 50, 40, density=0.3)
    io.save_csr(tmp_path / "x.csr", inputs)
    with open(tmp_path / "x.csr", "rb") as handle:
        header, _ = io._read_head(handle, io._CACHE_MAGIC)
        arrays = io._read_arrays(handle, tmp_path / "x.csr", header["arrays"], progress=True,
                                 block=100)
    assert "read x.csr" in capsys.readouterr().err  # the bar, on stderr
    assert sorted(arrays) == ["indices", "indptr"]  # one value, stored in the header
    for name, array in (("indptr", inputs.indptr), ("indices", inputs.indices)):
        assert np.array_equal(arrays[name], array)
        assert arrays[name].base is None  # its own memory: scipy would copy a view of more
    read = io.read_inputs(tmp_path / "x.csr", 40, progress=True)
    assert (read != inputs).nnz == 0
