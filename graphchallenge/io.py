"""Reading and writing the challenge's TSV files, with a binary cache.

The challenge stores every sparse matrix as text, one nonzero a line::

    row<TAB>col<TAB>value        (1-based; layers write values as 6.250000e-02)

Parsing goes through pyarrow's multithreaded C CSV reader (about twice as
fast as ``numpy.loadtxt`` on the 120 real neuron1024 layers); anything the
fast path rejects is re-read line by line, which accepts any whitespace (as
the reference's ``sscanf('%f')`` does) and otherwise names the first bad
line. Parsed matrices are kept in a binary cache (one file per TSV, keyed by
the TSV's absolute path, size and modification time), so a second load skips
the text entirely; a changed TSV is never served stale.
"""

import functools
import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import DataError

log = logging.getLogger(__name__)

CACHE_ENV = "GRAPHCHALLENGE_CACHE"
_CACHE_MAGIC = b"GCCSR001"
_CACHE_VERSION = 4


# ---------------------------------------------------------------- text parsing

def _open_text(path):
    # By content, not name: a gzipped file without ".gz" is read all the same.
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="ascii", errors="replace")
    return open(path, "rt", encoding="ascii", errors="replace")


def _read_fast(path):
    """Three columns via pyarrow, or None when pyarrow cannot parse the file as is."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:  # pragma: no cover - pyarrow is a core dependency
        return None
    names = ["row", "col", "value"]
    try:
        table = pacsv.read_csv(
            str(path),
            # One thread: the files are small and per-file thread start-up dominated.
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(
                column_types={"row": pa.int64(), "col": pa.int64(), "value": pa.float64()}))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, EOFError, zlib.error):
        return None
    columns = [table.column(name) for name in names]
    if any(column.null_count for column in columns):
        return None
    return tuple(column.to_numpy() for column in columns)


def _read_slow(path):
    """Parse line by line (any whitespace); raise DataError at the first bad line."""
    blocks = list(_blocks_slow(path))
    if not blocks:
        return tuple(np.empty(0) for _ in range(3))
    return tuple(np.concatenate(parts) for parts in zip(*blocks))


def _index_error(path, position, message):
    """A DataError naming the line of the ``position``-th triple (blank lines skipped)."""
    count = -1
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():
                count += 1
                if count == position:
                    return DataError(f"{path}:{lineno}: {message}: {line.strip()[:60]!r}")
    return DataError(f"{path}: {message}")


def _require_file(path):
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")


def _check_indices(path, name, values, limit, offset=0):
    """0-based int64 indices from 1-based ``values``; ``offset`` triples precede them in the file."""
    if values.dtype.kind == "i":
        if values.size == 0 or (values.min() >= 1 and (limit is None or values.max() <= limit)):
            return values - 1
    bad = ~((values >= 1) & (values == np.floor(values)))
    if limit is not None:
        bad |= values > limit
    if bad.any():
        where = int(np.flatnonzero(bad)[0])
        bound = f"in 1..{limit}" if limit is not None else ">= 1"
        raise _index_error(path, offset + where,
                           f"{name} index {values[where]:g} is not an integer {bound}")
    return values.astype(np.int64) - 1


def _check_values(path, values, offset=0):
    if not np.isfinite(values).all():
        where = int(np.flatnonzero(~np.isfinite(values))[0])
        raise _index_error(path, offset + where, "value is not finite")


def read_triples(path, n_rows=None, n_cols=None):
    """Read a ``row col value`` file into 0-based index arrays and values.

    Parameters
    ----------
    path : path-like
        ``.tsv`` or ``.tsv.gz``.
    n_rows, n_cols : int, optional
        Largest allowed 1-based row and column index.

    Returns
    -------
    rows, cols : ndarray of int64 (0-based)
    values : ndarray of float64

    Raises
    ------
    DataError
        Missing or unreadable file, a line without three numbers, an index
        that is not a positive integer within range, a non-finite value.
    """
    path = Path(path)
    _require_file(path)
    triples = _read_fast(path)
    if triples is None:
        triples = _read_slow(path)
    rows, cols, values = triples
    rows = _check_indices(path, "row", rows, n_rows)
    cols = _check_indices(path, "column", cols, n_cols)
    _check_values(path, values)
    return rows, cols, values


# ---------------------------------------------------------------- reading in blocks

#: Bytes of text parsed at a time by :func:`read_inputs`: the 65536 input
#: file (392 million lines) is never held as text or as parsed columns whole.
#: pyarrow reads ahead a few blocks, so smaller blocks hold less: on the
#: 60,000 generated neuron1024 inputs, 64 MB blocks peaked at 567 MB
#: resident, 4 MB blocks at 317 MB and were no slower.
INPUT_BLOCK_BYTES = 4 << 20

_SLOW_BLOCK_LINES = 1 << 20


class _NotFast(Exception):
    """pyarrow cannot read the file as is: re-read it line by line."""


def _is_gzipped(path):
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _blocks_fast(path, block_bytes):
    """``(rows, cols, values)`` a block of text at a time through pyarrow's streaming reader."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = ["row", "col", "value"]
    try:
        stream = pa.input_stream(str(path), compression="gzip" if _is_gzipped(path) else None)
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=names, block_size=int(block_bytes)),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(
                column_types={"row": pa.int64(), "col": pa.int64(), "value": pa.float64()}))
        for batch in reader:
            columns = [batch.column(k) for k in range(3)]
            if any(column.null_count for column in columns):
                raise _NotFast
            yield tuple(column.to_numpy(zero_copy_only=False) for column in columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, EOFError, zlib.error):
        raise _NotFast from None


def _blocks_slow(path, block_lines=None):
    """``(rows, cols, values)`` ``block_lines`` lines at a time, any whitespace; DataError at a bad line."""
    rows, cols, values = [], [], []

    def block():
        arrays = tuple(np.array(column, dtype=np.float64) for column in (rows, cols, values))
        for column in (rows, cols, values):
            column.clear()
        return arrays

    try:
        with _open_text(path) as handle:
            for lineno, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 3:
                    raise DataError(f"{path}:{lineno}: expected 3 fields (row, column, value), "
                                    f"got {len(fields)}: {line.strip()[:60]!r}")
                try:
                    row, col, value = (float(field) for field in fields)
                except ValueError:
                    raise DataError(f"{path}:{lineno}: not a number: {line.strip()[:60]!r}") from None
                rows.append(row)
                cols.append(col)
                values.append(value)
                if len(rows) >= (block_lines or _SLOW_BLOCK_LINES):
                    yield block()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); the file may be truncated or corrupt; "
                        "delete it and download it again") from None
    if rows:
        yield block()


def _inputs_from_blocks(path, blocks, neurons, progress=False):
    """Assemble the CSR input matrix from ``blocks`` of triples, one block in memory at a time.

    Input files list their rows in order: then only the columns (int32)
    and a count per row are kept, about 4 bytes a pixel instead of the 24 of
    parsed triples (values are kept only where some pixel is not 1). A file
    whose rows are out of order falls back on keeping the rows as well.
    """
    from tqdm import tqdm

    index = np.int32 if neurons < 2**31 else np.int64
    pieces = []  # (first_row, row counts or None, rows or None, cols, values or None)
    offset, last_row, in_order = 0, 0, True
    with tqdm(desc="read inputs", unit=" pixels", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for rows, cols, values in blocks:
            rows = _check_indices(path, "row", rows, None, offset)
            cols = _check_indices(path, "column", cols, neurons, offset)
            _check_values(path, values, offset)
            offset += rows.size
            bar.update(rows.size)
            if rows.size == 0:
                continue
            values = None if (values == 1.0).all() else values
            if in_order and rows[0] >= last_row and (rows.size < 2 or (np.diff(rows) >= 0).all()):
                counts = np.bincount(rows - rows[0]).astype(np.int64)
                pieces.append((int(rows[0]), counts, None, cols.astype(index), values))
                last_row = int(rows[-1])
            else:
                in_order = False
                pieces.append((None, None, rows, cols.astype(index), values))
    if not pieces:
        raise DataError(f"{path}: no inputs (empty file)")
    n_rows = max(first + counts.size if rows is None else int(rows.max()) + 1
                 for first, counts, rows, _, _ in pieces)
    indices = np.concatenate([cols for _, _, _, cols, _ in pieces])
    if all(values is None for _, _, _, _, values in pieces):
        data = np.ones(indices.size)
    else:
        data = np.concatenate([np.ones(cols.size) if values is None else values
                               for _, _, _, cols, values in pieces])
    if in_order:
        row_nnz = np.zeros(n_rows, dtype=np.int64)
        for first, counts, _, _, _ in pieces:
            row_nnz[first:first + counts.size] += counts
        del pieces
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(row_nnz, out=indptr[1:])
        big = indices.size >= 2**31
        matrix = sp.csr_matrix((data, indices.astype(np.int64) if big else indices,
                                indptr if big else indptr.astype(np.int32)),
                               shape=(n_rows, neurons))
        # Duplicate (row, col) pairs add up, as MATLAB's sparse() does.
        matrix.sum_duplicates()
        return matrix
    rows = np.concatenate([np.repeat(np.arange(first, first + counts.size), counts)
                           if rows is None else rows for first, counts, rows, _, _ in pieces])
    del pieces
    return _to_csr(rows, indices, data, (n_rows, neurons))


# ---------------------------------------------------------------- binary cache

def cache_root():
    """Folder of the binary cache: ``$GRAPHCHALLENGE_CACHE``, else ``~/.cache/graphchallenge``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graphchallenge"


def _cache_path(path, kind):
    # abspath, not resolve(): resolving links costs a system call per path
    # component, which dominated loading a cached layer.
    path = os.path.abspath(path)
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    return cache_root() / f"{os.path.basename(path)}.{kind}.{digest}.csr"


def file_stat(path):
    """``{"size", "mtime_ns"}`` of ``path``; DataError when it is missing or unreadable."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_key(path):
    """A string naming ``path``'s current content: its absolute path, size and mtime."""
    stat = file_stat(path)
    return f"file:{os.path.abspath(path)}:{stat['size']}:{stat['mtime_ns']}"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(dest, write):
    """Call ``write(handle)`` on a temporary file beside ``dest``, then rename it into place.

    Raises DataError when ``dest`` cannot be written (a folder in its way, no
    permission, a full disk); nothing is left behind then.
    """
    dest = Path(dest)
    if dest.is_dir():
        raise DataError(f"cannot write {dest}: it is a folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        # mkstemp creates the file private (0600); give it a normal file's permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataError(f"cannot write {dest}: {exc.strerror or exc}") from None
        raise


def save_csr(dest, matrix, key=None):
    """Write ``matrix`` to the binary cache format at ``dest`` (atomically).

    Stored compactly but losslessly: a matrix whose nonzeros all hold one
    value (every challenge layer: 1/16) stores that value once, so a
    challenge layer of 1024 neurons takes 135 KB instead of 400 KB. Indices
    stay in the dtype scipy uses: converting narrower ones on every load
    cost more than reading them.
    """
    matrix = sp.csr_matrix(matrix)
    # One index dtype for both arrays, as scipy expects of a CSR matrix.
    index = np.int32 if matrix.nnz < 2**31 else np.int64
    # copy=False: the 65536 input matrix is gigabytes; a copy per array doubled the peak.
    arrays = {"indptr": matrix.indptr.astype(index, copy=False),
              "indices": matrix.indices.astype(index, copy=False)}
    data = matrix.data.astype(np.float64, copy=False)
    constant = float(data[0]) if data.size and (data.min() == data.max() == data[0]) else None
    if constant is None:
        arrays["data"] = data
    header = {"version": _CACHE_VERSION, "shape": list(matrix.shape), "key": key,
              "index": np.dtype(index).str, "nnz": int(matrix.nnz), "constant": constant,
              "arrays": {}}
    _save_headed(dest, _CACHE_MAGIC, header, arrays)


def _save_headed(dest, magic, header, arrays, align=1, shapes=False):
    """Write ``magic``, the JSON ``header`` and ``arrays`` to ``dest`` (atomically).

    ``header["arrays"]`` gets each array's ``[offset, dtype, size]`` (its
    shape instead of its size with ``shapes``), offsets counted from the
    end of the header and rounded up to ``align`` bytes; ``header`` gets
    ``data_bytes``, the bytes after the header.
    """
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    places, offset = header.setdefault("arrays", {}), 0
    for name, array in arrays.items():
        places[name] = [offset, array.dtype.str, list(array.shape) if shapes else array.size]
        offset += -(-array.nbytes // align) * align
    header["data_bytes"] = offset
    head = json.dumps(header).encode()
    head += b" " * (-(len(head) + 16) % 64)

    def write(handle):
        handle.write(magic)
        handle.write(len(head).to_bytes(8, "little"))
        handle.write(head)
        for array in arrays.values():
            handle.write(memoryview(array.reshape(-1)).cast("B"))
            handle.write(b"\0" * (-array.nbytes % align))

    _write_atomic(dest, write)


#: Largest nonzero count whose indices fit scipy's int32 index arrays.
_INT32_LIMIT = 2**31
_STREAMED_HEAD_BYTES = 4096 - 16


def save_csr_rows(dest, blocks, n_cols, value=1.0):
    """Write a matrix, a block of rows at a time, in :func:`save_csr`'s format (atomically).

    For matrices too large to assemble first (the 60,000 generated inputs of
    65536 neurons are 392 million pixels): only one block and a count per
    row are held. Every nonzero holds ``value``, stored once.

    Parameters
    ----------
    dest : path-like
    blocks : iterable of (row_nnz, indices)
        Rows in order: nonzeros per row, then their 0-based columns.
    n_cols : int
    value : float

    Returns
    -------
    (n_rows, nnz)
    """
    row_counts = []
    shape = []

    def write(handle):
        # Indices first (their count is known only at the end), then indptr,
        # then the header over the space reserved for it: load_csr finds every
        # array by the offsets the header gives.
        handle.write(_CACHE_MAGIC)
        handle.write(_STREAMED_HEAD_BYTES.to_bytes(8, "little"))
        handle.write(b" " * _STREAMED_HEAD_BYTES)
        nnz = 0
        for row_nnz, indices in blocks:
            handle.write(memoryview(np.ascontiguousarray(indices, dtype=np.int32)).cast("B"))
            row_counts.append(np.asarray(row_nnz, dtype=np.int64))
            nnz += int(np.asarray(indices).size)
        counts = np.concatenate(row_counts) if row_counts else np.zeros(0, dtype=np.int64)
        # Past int32, scipy needs int64 indices: load_csr widens the stored
        # int32 ones to the header's index dtype as it reads them.
        index = np.int32 if nnz < _INT32_LIMIT else np.int64
        indptr = np.zeros(counts.size + 1, dtype=index)
        np.cumsum(counts, out=indptr[1:])
        handle.write(memoryview(indptr).cast("B"))
        header = {"version": _CACHE_VERSION, "shape": [int(counts.size), int(n_cols)], "key": None,
                  "index": np.dtype(index).str, "nnz": nnz, "constant": float(value),
                  "arrays": {"indices": [0, np.dtype(np.int32).str, nnz],
                             "indptr": [4 * nnz, indptr.dtype.str, indptr.size]}}
        head = json.dumps(header).encode()
        if len(head) > _STREAMED_HEAD_BYTES:  # pragma: no cover - a fixed-size header
            raise ValueError("header does not fit its reserved space")
        handle.seek(16)
        handle.write(head)
        shape[:] = [int(counts.size), nnz]

    _write_atomic(dest, write)
    return tuple(shape)


_CONSTANT_ARRAYS = {}


def constant_array(size, value):
    """A read-only array of ``size`` copies of ``value``, shared by every caller.

    All layers of a challenge network hold the same value (1/16) in the same
    number of nonzeros: sharing one array spares a fresh allocation (and its
    page faults, which dominated loading from the cache) per layer. Read-only,
    so no layer can change another's weights.
    """
    key = (size, value)
    array = _CONSTANT_ARRAYS.get(key)
    if array is None:
        array = np.full(size, value)
        array.flags.writeable = False
        _CONSTANT_ARRAYS.clear()  # keep one: a network has one such shape
        _CONSTANT_ARRAYS[key] = array
    return array


def _read_head(handle, magic):
    """``(header, offset of the data)`` of a file :func:`_save_headed` wrote with ``magic``;
    ``(None, 0)`` when the file starts otherwise (ValueError when its header is not JSON)."""
    if handle.read(8) != magic:
        return None, 0
    head_len = int.from_bytes(handle.read(8), "little")
    return json.loads(handle.read(head_len)), 16 + head_len


def load_csr(path, key=None, mmap=False, one_value_view=False, progress=False):
    """Read a matrix written by :func:`save_csr`; None if absent, stale or damaged.

    With ``mmap``, arrays stored in their final dtype are memory-mapped
    (processes that load the same cache share the pages). A matrix whose
    nonzeros all hold one value gets that value as a shared read-only array
    (:func:`constant_array`), or with ``one_value_view`` as a read-only
    stride-0 view of one number, which takes no memory however many
    nonzeros it has (scipy copies it where it needs contiguous data).
    ``progress`` draws a bar on stderr while the file is read (the 60,000
    inputs of 65536 neurons are 1.6 GB).
    """
    try:
        with open(path, "rb") as handle:
            header, start = _read_head(handle, _CACHE_MAGIC)
            if header is None or header.get("version") != _CACHE_VERSION or \
                    (key is not None and header.get("key") != key):
                return None
            if not mmap:
                arrays = _read_arrays(handle, path, header["arrays"], progress)
    except (OSError, ValueError):
        return None
    if mmap:
        buffer = np.memmap(path, dtype=np.uint8, mode="r")
        arrays = {}
        for name, (offset, dtype, size) in header["arrays"].items():
            dtype = np.dtype(dtype)
            end = start + offset + size * dtype.itemsize
            if end > buffer.size:
                return None
            arrays[name] = buffer[start + offset:end].view(dtype)
    index = np.dtype(header["index"])
    data = arrays.get("data")
    if data is None and one_value_view:
        data = np.broadcast_to(np.float64(header["constant"]), (header["nnz"],))
    elif data is None:
        data = constant_array(header["nnz"], header["constant"])
    matrix = sp.csr_matrix(tuple(header["shape"]), dtype=np.float64)
    matrix.data = data
    matrix.indices = arrays["indices"].astype(index, copy=False)
    matrix.indptr = arrays["indptr"]
    return matrix


_ARRAYS_MAGIC = b"GCARR001"


def save_arrays(dest, arrays, key):
    """Write named arrays to ``dest`` (atomically), for :func:`load_arrays` to map back.

    Every array starts on a 64-byte boundary; the header records ``key``,
    each array's place, dtype and shape, and the file's total size, so a
    truncated file is recognised as such.
    """
    _save_headed(dest, _ARRAYS_MAGIC, {"key": key}, arrays, align=64, shapes=True)


def load_arrays(path, key, populate=False):
    """The arrays :func:`save_arrays` wrote to ``path`` under ``key``, memory-mapped read-only.

    None when the file is absent, written under another key, truncated or
    not such a file: the caller builds the arrays again. With ``populate``
    every page is read in now (``MAP_POPULATE``, else by touching each
    page), so that first use does not fault them in one by one, and a timed
    run does not pay for reading the file.
    """
    import mmap

    try:
        with open(path, "rb") as handle:
            header, start = _read_head(handle, _ARRAYS_MAGIC)
            if header is None or header.get("key") != key or \
                    os.fstat(handle.fileno()).st_size != start + header["data_bytes"]:
                return None
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            buffer = mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if populate and not hasattr(mmap, "MAP_POPULATE"):
        np.frombuffer(buffer, dtype=np.uint8)[::mmap.PAGESIZE].sum()
    arrays = {}
    try:
        for name, (offset, dtype, shape) in header["arrays"].items():
            # np.frombuffer gives plain read-only arrays (a np.memmap is a subclass
            # numba would compile for separately).
            arrays[name] = np.frombuffer(buffer, dtype=np.dtype(dtype), count=math.prod(shape),
                                         offset=start + offset).reshape(shape)
    except (ValueError, TypeError, KeyError):
        return None  # a header that does not describe this file
    return arrays


def _read_arrays(handle, path, places, progress, block=64 << 20):
    """The arrays :func:`_save_headed` placed (``places``), read from open file ``handle``
    (just after the header) in blocks, with a bar; ValueError if the file ends early.

    Each array gets its own memory: a view into one buffer for the whole file
    would be copied whole by scipy (it copies index arrays that view a much
    larger buffer), 1.6 GB inside the timer for the 60,000 inputs of 65536
    neurons.
    """
    from tqdm import tqdm

    start = handle.tell()
    arrays = {name: np.empty(size, dtype=np.dtype(dtype))
              for name, (_, dtype, size) in places.items()}
    total = sum(array.nbytes for array in arrays.values())
    with tqdm(total=total, desc=f"read {os.path.basename(path)}", unit="B", unit_scale=True,
              disable=not progress or total < block, leave=False) as bar:
        for name, array in sorted(arrays.items(), key=lambda item: places[item[0]][0]):
            handle.seek(start + places[name][0])
            view = memoryview(array).cast("B")
            done = 0
            while done < view.nbytes:
                got = handle.readinto(view[done:done + block])
                if not got:
                    raise ValueError("file ended early")
                done += got
                bar.update(got)
    return arrays


def _from_cache(path, kind, one_value_view=False):
    """The cached matrix for ``path``, or None when absent or stale."""
    return load_csr(_cache_path(path, kind), key=dict(file_stat(path), kind=kind),
                    one_value_view=one_value_view)


def _cached(path, kind, build, cache, one_value_view=False):
    """``build()`` the matrix for ``path``, through the binary cache when ``cache``."""
    if not cache:
        return build()
    matrix = _from_cache(path, kind, one_value_view)
    if matrix is not None:
        return matrix
    matrix = build()
    cache_file = _cache_path(path, kind)
    try:
        save_csr(cache_file, matrix, key=dict(file_stat(path), kind=kind))
    except (OSError, DataError) as exc:
        log.warning("cannot write the cache %s (%s); continuing without it", cache_file, exc)
    return matrix


# ---------------------------------------------------------------- matrices

def _to_csr(rows, cols, values, shape):
    # Duplicate (row, col) pairs add up, as MATLAB's sparse() does.
    matrix = sp.csr_matrix((values, (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    return matrix


def read_layer(path, neurons=None, shape=None, cache=True):
    """Read one weight matrix ``W`` (``W[i, j]`` is the edge from neuron i to j).

    Parameters
    ----------
    path : path-like
        A layer TSV such as ``n1024-l1.tsv``.
    neurons : int, optional
        Square size N of a challenge layer.
    shape : (int, int), optional
        Shape of a rectangular (compacted) layer; overrides ``neurons``.
    cache : bool
        Use the binary cache.

    Returns
    -------
    scipy.sparse.csr_matrix of float64
        From the cache, a layer whose weights all hold one value (every
        challenge layer) shares one read-only ``data`` array with the other
        such layers: 1920 layers of 65536 neurons would otherwise repeat 16
        MB of 1/16 each. Copy the matrix before changing its weights in place.
    """
    if shape is None:
        if neurons is None:
            raise ValueError("read_layer needs neurons or shape")
        shape = (neurons, neurons)
    shape = tuple(int(n) for n in shape)

    def build():
        rows, cols, values = read_triples(path, n_rows=shape[0], n_cols=shape[1])
        if rows.size == 0:
            raise DataError(f"{path}: no weights (empty layer file)")
        return _to_csr(rows, cols, values, shape)

    return _cached(path, _layer_kind(shape), build, cache)


def _layer_kind(shape):
    return f"layer{shape[0]}x{shape[1]}"


def read_layers(paths, shapes, cache=True, threads=None, progress=False):
    """Read several layers (:func:`read_layer` each), on ``threads`` threads at once.

    pyarrow and the cache reader release the GIL, so the layers of a network
    parse side by side (2.4-2.8x faster than one at a time on the 120 real
    neuron1024 layers with 2 cores). ``threads`` defaults to the CPUs this
    process may use, at most 8. ``progress`` draws a bar on stderr (layers
    read from text and cached take seconds at the larger sizes).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if threads is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = min(8, cpus or 1)
    shapes = [tuple(int(n) for n in shape) for shape in shapes]
    with tqdm(total=len(paths), desc="read layers", unit="layer", disable=not progress,
              leave=False) as bar:
        # Cached layers load faster one after the other than through a pool.
        layers = []
        for path, shape in zip(paths, shapes):
            layer = (_from_cache(path, _layer_kind(shape)) if cache and Path(path).is_file()
                     else None)
            layers.append(layer)
            if layer is not None:
                bar.update()
        missing = [k for k, layer in enumerate(layers) if layer is None]

        def parse(k):
            layer = read_layer(paths[k], shape=shapes[k], cache=cache)
            bar.update()
            return layer

        if threads <= 1 or len(missing) <= 1:
            parsed = [parse(k) for k in missing]
        else:
            with ThreadPoolExecutor(threads) as pool:
                parsed = list(pool.map(parse, missing))
    for k, layer in zip(missing, parsed):
        layers[k] = layer
    return layers


def read_inputs(path, neurons, n_inputs=None, cache=True, progress=False, block_bytes=None):
    """Read the input images as an ``n_inputs x neurons`` CSR matrix.

    The row count is the largest row index in the file (as in the reference),
    unless ``n_inputs`` is given, in which case only the first ``n_inputs``
    rows are kept.

    Parameters
    ----------
    path : path-like
        A TSV (plain or gzipped), or a binary input file
        (``sparse-images-{N}.csr``, :func:`save_csr`'s format, written by a
        binary generated challenge), which is read as is.
    neurons : int
    n_inputs : int, optional
    cache : bool
        Keep the parsed TSV in the binary cache.
    progress : bool
        Draw a progress bar on stderr while the text is parsed (or a binary file read).
    block_bytes : int, optional
        Text parsed at a time (default :data:`INPUT_BLOCK_BYTES`): the file
        is read and converted block by block, never whole.

    Inputs read from a binary file whose pixels all hold one value (every
    challenge's: 1) hold it as a read-only stride-0 view (see
    :func:`load_csr`), not one float64 per pixel.
    """
    path = Path(path)
    _require_file(path)
    if path.suffix == ".csr":
        matrix = load_csr(path, one_value_view=True, progress=progress)
        if matrix is None:
            raise DataError(f"{path}: not a readable binary input file (damaged or truncated); "
                            "generate it again")
        if matrix.shape[1] != neurons:
            raise DataError(f"{path}: holds inputs of {matrix.shape[1]} neurons, not {neurons}")
    else:
        def build():
            try:
                blocks = _blocks_fast(path, block_bytes or INPUT_BLOCK_BYTES)
                return _inputs_from_blocks(path, blocks, neurons, progress)
            except _NotFast:
                return _inputs_from_blocks(path, _blocks_slow(path), neurons, progress)

        matrix = _cached(path, f"inputs{neurons}", build, cache, one_value_view=True)
    # Checked once here, not inside an engine's timer: scipy keeps the answer on the
    # matrix (one pass over 392 million pixels at 65536 neurons), and row blocks inherit it.
    if not matrix.has_canonical_format:
        log.debug("%s: pixels out of order or given twice; engines sum them on a copy", path)
    if n_inputs is not None:
        if n_inputs < 1:
            raise DataError(f"--inputs must be at least 1 (got {n_inputs})")
        if n_inputs > matrix.shape[0]:
            raise DataError(f"{path} holds {matrix.shape[0]} inputs; cannot take the first {n_inputs}")
        matrix = row_block(matrix, 0, n_inputs)
    return matrix


def as_csr(matrix, dtype=None):
    """``matrix`` itself when already CSR (of ``dtype``, if given), else a CSR copy.

    Not wrapped again: scipy's constructor may copy index arrays that view a
    larger buffer, and a new object forgets a canonical format already
    checked.
    """
    if sp.issparse(matrix) and matrix.format == "csr" and (dtype is None or matrix.dtype == dtype):
        return matrix
    return sp.csr_matrix(matrix, dtype=dtype)


def row_block(matrix, start, stop):
    """Rows ``start:stop`` of CSR ``matrix``, sharing its indices and values (no copy).

    Unlike ``matrix[start:stop]`` it keeps a stride-0 value view (see
    :func:`read_inputs`) as such: scipy's slicing would first write all the
    matrix's values out (3.2 GB for the 60,000 inputs of 65536 neurons).
    """
    matrix = as_csr(matrix)
    start, stop, _ = slice(start, stop).indices(matrix.shape[0])
    stop = max(start, stop)
    first, last = int(matrix.indptr[start]), int(matrix.indptr[stop])
    indptr = matrix.indptr[start:stop + 1] - first
    block = sp.csr_matrix((stop - start, matrix.shape[1]), dtype=matrix.dtype)
    block.data, block.indices, block.indptr = (matrix.data[first:last],
                                               matrix.indices[first:last], indptr)
    if matrix.has_canonical_format:
        block.has_canonical_format = True
    return block


def select_rows(matrix, rows):
    """Rows ``rows`` (in that order) of CSR ``matrix``, reading only their entries.

    scipy's ``matrix[rows]`` first writes out a stride-0 value view whole
    (see :func:`read_inputs`): 0.5 s for two rows of the 60,000 inputs of
    4096 neurons, and 3.2 GB at 65536.
    """
    matrix = as_csr(matrix)
    rows = np.asarray(rows, dtype=np.int64)
    starts = matrix.indptr[rows].astype(np.int64)
    counts = matrix.indptr[rows + 1].astype(np.int64) - starts
    indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # Entry q of the result is entry starts[row] + (q - indptr[row]) of the matrix.
    take = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
    return sp.csr_matrix((matrix.data[take], matrix.indices[take], indptr),
                         shape=(rows.size, matrix.shape[1]))


def read_categories(path):
    """Read a categories (truth) file: one 1-based row index a line.

    Returns the sorted unique indices as int64.
    """
    path = Path(path)
    _require_file(path)
    categories = []
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, 1):
            text = line.strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"{path}:{lineno}: not a row number: {text[:60]!r}") from None
            if not (math.isfinite(value) and value >= 1 and value == int(value)):
                raise DataError(f"{path}:{lineno}: not a positive integer row number: {text[:60]!r}")
            categories.append(int(value))
    return np.unique(np.array(categories, dtype=np.int64))


# ---------------------------------------------------------------- writing

def _format_value(value):
    # The challenge's own format where it is exact (all challenge weights),
    # else the shortest text that reads back as the same double.
    text = f"{value:.6e}"
    return text if float(text) == value else repr(float(value))


def write_layer(path, matrix):
    """Write a weight matrix in the challenge's layer format (sorted by column, then row)."""
    coo = sp.csc_matrix(matrix).tocoo()  # CSC order: by column, then row
    lines = _triples_text(coo.row + 1, coo.col + 1, coo.data, _format_value)
    _write_atomic(path, lambda handle: handle.write(lines))


def write_inputs(path, matrix, rows_per_chunk=4096):
    """Write input images (``n_inputs x N``) as a TSV, gzipped when ``path`` ends in ``.gz``.

    Rows are formatted a chunk at a time, so 60,000 images of 65536 pixels
    never sit in memory as one string.
    """
    matrix = sp.csr_matrix(matrix)

    def write(handle):
        stream = (gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=6, mtime=0)
                  if str(path).endswith(".gz") else handle)
        for start in range(0, matrix.shape[0], rows_per_chunk):
            stream.write(inputs_text(matrix[start:start + rows_per_chunk], start))
        if stream is not handle:
            stream.close()

    _write_atomic(path, write)


def inputs_text(matrix, first_row=0):
    """The TSV lines (bytes) of input rows ``matrix``, numbered from ``first_row + 1``."""
    coo = sp.csr_matrix(matrix).tocoo()
    return _triples_text(coo.row + first_row + 1, coo.col + 1, coo.data, "{:g}".format)


def write_categories(path, categories):
    """Write 1-based category row numbers, one a line, ascending."""
    text = "".join(f"{int(c)}\n" for c in np.unique(np.asarray(categories, dtype=np.int64)))
    _write_atomic(path, lambda handle: handle.write(text.encode()))


@functools.lru_cache(maxsize=8)
def _labels(first, last):
    """``"k\t"`` for k = first..last, as an object array (a lookup table of index texts)."""
    return np.array([f"{k}\t" for k in range(first, last + 1)], dtype=object)


def _triples_text(rows, cols, values, value_format):
    """``row<TAB>col<TAB>value`` lines (bytes) of 1-based ``rows``, ``cols`` and float ``values``.

    Every distinct index and value is formatted once and the lines are
    assembled from those texts: 2.5x faster than formatting line by line
    (a neuron4096 layer: 0.074 s instead of 0.186 s).
    """
    if rows.size == 0:
        return b""
    unique, inverse = np.unique(values, return_inverse=True)
    value_text = np.array([value_format(value) + "\n" for value in unique], dtype=object)
    row_first, col_first = int(rows.min()), int(cols.min())
    row_text = _labels(row_first, int(rows.max()))[rows - row_first]
    col_text = _labels(col_first, int(cols.max()))[cols - col_first]
    return "".join((row_text + col_text + value_text[inverse.ravel()]).tolist()).encode()
