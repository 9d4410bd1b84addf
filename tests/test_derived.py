"""The derived-network format: manifest, save, load, checks (graphchallenge.derived)."""

import json
import re
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from graphchallenge import compress, derived
from graphchallenge.engines.reference import ReferenceEngine, forward_categories
from graphchallenge.errors import DataError
from graphchallenge.network import Network

from conftest import dense, radix_like, random_inputs, random_layer


@pytest.fixture
def small_compaction(rng):
    network = Network(radix_like(rng, 8, 4, 6, 3, (0.5, 1.0)), -0.3, name="radix32-l6")
    return compress.compact(network)


def test_manifest_round_trip(small_compaction, tmp_path, rng):
    out = compress.save_compact(small_compaction, tmp_path / "compact", None,
                                {"network": "/somewhere/radix32"})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "graphchallenge-compact" and manifest["version"] == 1
    assert manifest["kind"] == "exact" and manifest["bias"] == -0.3
    assert manifest["source"]["config"] == "radix32-l6" and manifest["source"]["layers"] == 6
    assert manifest["source"]["files"] == {"network": "/somewhere/radix32"}
    assert len(manifest["source"]["layer_sha256"]) == 6
    assert manifest["report"]["compact_edges"] == small_compaction.network.edges
    for k, entry in enumerate(manifest["layers"]):
        assert entry["file"] == f"layer-{k + 1:04d}.tsv"
        assert tuple(entry["shape"]) == small_compaction.network.shapes[k]
        assert entry["neurons"] == small_compaction.groups[k]
    original = small_compaction.source
    loaded = derived.load(out, original=original)
    assert loaded.origin is original and loaded.bias == -0.3
    for written, read in zip(small_compaction.network.layers, loaded.layers):
        assert np.array_equal(dense(written), dense(read))
    inputs = random_inputs(rng, 100, 32, density=0.2)
    assert (ReferenceEngine().infer(loaded, inputs).categories.tolist()
            == forward_categories(original.layers, -0.3, inputs).tolist())
    # the layer files are in the challenge's own TSV format
    first = (out / "layer-0001.tsv").read_text().splitlines()[0].split("\t")
    assert len(first) == 3 and first[2].endswith("e-01")


def test_save_replaces_an_earlier_compact_network_but_nothing_else(small_compaction, tmp_path):
    out = tmp_path / "compact"
    compress.save_compact(small_compaction, out)
    (out / "stale.txt").write_text("from before")
    compress.save_compact(small_compaction, out)
    assert not (out / "stale.txt").exists()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(DataError, match="not a compact-network folder"):
        compress.save_compact(small_compaction, other)
    assert (other / "thesis.tex").read_text() == "do not delete"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_a_plain_network_with_groups_and_extra_for_fine_tuning(rng, tmp_path):
    original = Network([random_layer(rng, 16, 16, 4) for _ in range(3)], -0.3, name="toy")
    pruned = Network([original.layers[0][:, :10], original.layers[1][:10, :12],
                      original.layers[2][:12, :]], -0.3)
    groups = [[[j] for j in range(10)], [[j] for j in range(12)], [[j] for j in range(16)]]
    out = derived.save(pruned, tmp_path / "fssl", None, None, "fssl", groups,
                       extra={"lambda": 0.01, "epochs": 3}, source_network=original)
    assert derived.read_manifest(out)["extra"] == {"lambda": 0.01, "epochs": 3}
    assert derived.load(out).origin is None
    assert derived.load(out, original=original).origin is None
    with pytest.raises(ValueError, match="kind"):
        derived.save(pruned, tmp_path / "x", groups=groups)
    with pytest.raises(ValueError, match="neuron groups"):
        derived.save(pruned, tmp_path / "x", kind="fssl", groups=groups[::-1])


def test_an_exact_network_loaded_without_its_original_warns(small_compaction, tmp_path):
    out = compress.save_compact(small_compaction, tmp_path / "compact")
    with pytest.warns(UserWarning, match="cannot be rechecked"):
        loaded = derived.load(out)
    assert loaded.origin is None


def _shrink_layer_2(manifest):
    del manifest["layers"][1]["neurons"]
    manifest["layers"][1]["shape"] = [8, 7]


def _edit_manifest(folder, change):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d), "no such compact-network folder"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "manifest.json").write_text('{"format": "graphchallenge-compact",\n "version": }'),
     "manifest.json: not valid JSON (line 2"),
    (lambda d: _edit_manifest(d, lambda m: m.update(format="something-else")),
     "not a compact-network manifest"),
    (lambda d: _edit_manifest(d, lambda m: m.update(version=99)), "version 99 is not supported"),
    (lambda d: _edit_manifest(d, lambda m: m["layers"][2]["shape"].__setitem__(0, 5)),
     "layer 3 (layer-0003.tsv) takes 5 inputs but layer 2 gives"),
    (lambda d: _edit_manifest(d, lambda m: m["layers"][0].update(file="../etc/passwd")), "file name"),
    (lambda d: _edit_manifest(d, lambda m: m["layers"][1].update(edges=1)), "layer-0002.tsv: holds"),
    (lambda d: _edit_manifest(d, _shrink_layer_2),
     "layer 3 (layer-0003.tsv) takes 8 inputs but layer 2 gives 7"),
    (lambda d: (d / "layer-0004.tsv").unlink(), "layer-0004.tsv: missing"),
    (lambda d: (d / "layer-0002.tsv").write_text("1\t1\t0.5\n"), "layer-0002.tsv: changed or damaged"),
    (lambda d: _edit_manifest(d, lambda m: m.update(bias="x")), "bias"),
])
def test_bad_manifests_are_clear_errors(small_compaction, tmp_path, damage, message):
    out = compress.save_compact(small_compaction, tmp_path / "compact")
    damage(out)
    with pytest.raises(DataError, match=re.escape(message)):
        derived.load(out, original=small_compaction.source)


def test_a_file_too_small_for_its_shape_is_caught(small_compaction, tmp_path):
    out = compress.save_compact(small_compaction, tmp_path / "compact")
    # Shrink layer 1's declared outputs; the file (no hash to catch it) names column 8.
    _edit_manifest(out, lambda m: (m["layers"][0].pop("sha256"), m["layers"][0].update(
        shape=[32, 7], neurons=m["layers"][0]["neurons"][:7]),
        m["layers"][1]["shape"].__setitem__(0, 7)))
    with pytest.raises(DataError, match="layer-0001.tsv:.*column index 8"):
        derived.load(out, original=small_compaction.source)


def test_a_different_original_is_refused(small_compaction, tmp_path, rng):
    out = compress.save_compact(small_compaction, tmp_path / "compact")
    source = small_compaction.source
    changed = list(source.layers)
    changed[3] = changed[3] * 2.0
    for other, message in [
            (Network(changed, -0.3, name="radix32-l6"), "layer 4 differs"),
            (Network(source.layers[:5], -0.3), "6 layers against 5"),
            (Network(source.layers, -0.25), "bias -0.3 against -0.25")]:
        with pytest.raises(DataError, match=f"made from radix32-l6 .*{message}"):
            derived.load(out, original=other)


def test_layer_digest_ignores_storage_details():
    matrix = sp.csr_matrix(np.array([[0.0, 0.5], [0.25, 0.0]]))
    with_zero = sp.csr_matrix((np.array([0.5, 0.0, 0.25]), np.array([1, 0, 0]), np.array([0, 2, 3])),
                              shape=(2, 2))
    assert derived.layer_digest(matrix) == derived.layer_digest(with_zero)
    assert derived.layer_digest(matrix) == derived.layer_digest(matrix.tocsc())
    assert derived.layer_digest(matrix) != derived.layer_digest(matrix * 2)
    taller = sp.vstack([matrix, sp.csr_matrix((1, 2))])
    assert derived.layer_digest(matrix) != derived.layer_digest(taller)
