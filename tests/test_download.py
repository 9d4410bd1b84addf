"""graphchallenge.download against a real HTTP server on 127.0.0.1.

The server (below) serves a small generated mirror in the challenge
server's layout, answers Range requests, and has knobs to misbehave: ignore
Range, cut the connection after K bytes, answer 500, or (for a missing
file) 404. Its request log lets the tests check what went over the wire.
"""

import gzip
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from graphchallenge import catalog, cli
from graphchallenge import download as dl
from graphchallenge.errors import DataError, DownloadError

REPO = Path(__file__).resolve().parents[1]
BASE_PATH = "synthetic/sparsechallenge_2019"
N = 1024
N_LAYERS = 6


# ---------------------------------------------------------------- the server

class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        # Keep the test output clean; the tests read server.log instead.
        pass

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def _answer(self, send_body):
        server = self.server
        entry = {"method": self.command, "path": self.path,
                 "range": self.headers.get("Range"), "status": None, "sent": 0}
        server.log.append(entry)
        if server.fail_times:
            server.fail_times -= 1
            entry["status"] = 500
            self.send_error(500)
            return
        file = server.root / unquote(urlsplit(self.path).path).lstrip("/")
        if not file.is_file():
            entry["status"] = 404
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
        if requested and not server.ignore_range:
            start = int(requested[1])
            if start >= len(data):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = min(len(data), start + server.range_cap) if server.range_cap else len(data)
            entry["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:
            end = len(data)
            entry["status"] = 200
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        if server.label_gzip and file.suffix == ".gz":
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        if not send_body:
            return
        body = data[start:end]
        if server.truncate_times:
            server.truncate_times -= 1
            body = body[:server.truncate_at]
            self.close_connection = True
        self.wfile.write(body)
        entry["sent"] = len(body)


class MirrorServer(ThreadingHTTPServer):
    """Serves ``root`` on 127.0.0.1 with Range support and failure knobs."""

    daemon_threads = True

    def __init__(self, root):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.log = []
        self.ignore_range = False
        self.range_cap = None        # answer a Range request with at most this many bytes
        self.label_gzip = False      # send .gz files with Content-Encoding: gzip, as S3 may
        self.fail_times = 0          # answer this many requests with 500
        self.truncate_times = 0      # cut this many GET bodies ...
        self.truncate_at = 0         # ... after this many bytes
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def gets(self):
        return [entry for entry in self.log if entry["method"] == "GET"]

    def stop(self):
        self.shutdown()
        self.server_close()


# ------------------------------------------------------------ the test data

def layer_tsv(k):
    """A layer in the challenge's format: each column has rows c and c + 2^(k-1)."""
    lines = []
    for col in range(1, N + 1):
        for row in sorted({col, (col - 1 + 2 ** (k - 1)) % N + 1}):
            lines.append(f"{row}\t{col}\t6.250000e-02\n")
    return "".join(lines).encode()


def make_tarball(path, members):
    """Write a .tar.gz of ``members``: (name, bytes) pairs or ready TarInfo objects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def layer_members(n_layers=N_LAYERS):
    folder = tarfile.TarInfo(f"neuron{N}")
    folder.type = tarfile.DIRTYPE
    # Sorted by name, as the challenge's tarball is.
    return [folder] + sorted((f"neuron{N}/n{N}-l{k}.tsv", layer_tsv(k))
                             for k in range(1, n_layers + 1))


@pytest.fixture
def mirror(tmp_path):
    """A small mirror in the server layout: a 6-layer tarball, inputs, truth for l6."""
    base = tmp_path / "mirror" / BASE_PATH
    cfg = catalog.config(N, N_LAYERS)
    make_tarball(base / cfg.network_path, layer_members())
    inputs = "".join(f"{row}\t{col}\t1\n" for row in range(1, 41) for col in (row, row + 500))
    (base / cfg.inputs_path).parent.mkdir(parents=True)
    (base / cfg.inputs_path).write_bytes(gzip.compress(inputs.encode(), mtime=0))
    (base / cfg.truth_path).write_text("3\n17\n40\n")
    return base


@pytest.fixture
def server(mirror):
    server = MirrorServer(mirror.parents[1])
    yield server
    server.stop()


@pytest.fixture
def base_url(server):
    return f"{server.url}/{BASE_PATH}"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_cli(*args):
    """``python -m graphchallenge ...`` in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "graphchallenge", *args],
                          capture_output=True, text=True, env=env, timeout=60)


FAST = {"retries": 2, "backoff": 0.0, "timeout": 10.0}


# ------------------------------------------------------------------ download()

def test_fresh_download(mirror, server, base_url, tmp_path):
    cfg = catalog.config(N, N_LAYERS)
    root = tmp_path / "data"
    report = dl.download(cfg, root, base_url, what=("network", "inputs", "truth"), **FAST)

    assert [f.action for f in report.files] == ["fetched"] * 3
    for relpath in (cfg.truth_path, cfg.inputs_path, cfg.network_path):
        assert sha256(root / relpath) == sha256(mirror / relpath)
    assert report.layers_extracted == N_LAYERS and report.layers_present == 0
    assert sorted(p.name for p in report.network_dir.iterdir()) == sorted(
        cfg.layer_name(k) for k in range(1, N_LAYERS + 1))
    assert (report.network_dir / "n1024-l4.tsv").read_bytes() == layer_tsv(4)
    assert not list(root.rglob("*.part"))
    record = json.loads((root / dl.RECORD_NAME).read_text())["files"]
    assert record[cfg.inputs_path]["sha256"] == sha256(mirror / cfg.inputs_path)
    payload = report.to_dict()
    assert payload["layers_extracted"] == N_LAYERS
    assert {f["path"] for f in payload["files"]} == {str(root / p) for p in
                                                     (cfg.truth_path, cfg.inputs_path,
                                                      cfg.network_path)}


def test_second_run_skips_without_network(server, base_url, tmp_path):
    cfg = catalog.config(N, N_LAYERS)
    what = ("network", "inputs", "truth")
    dl.download(cfg, tmp_path / "data", base_url, what=what, **FAST)
    requests_before = len(server.log)

    report = dl.download(cfg, tmp_path / "data", base_url, what=what, **FAST)
    assert [f.action for f in report.files] == ["skipped"] * 3
    assert (report.layers_extracted, report.layers_present) == (0, N_LAYERS)
    assert len(server.log) == requests_before
    assert "skipped" in report.summary()


def test_missing_layer_is_extracted_again(server, base_url, tmp_path):
    cfg = catalog.config(N, N_LAYERS)
    report = dl.download(cfg, tmp_path / "data", base_url, what=("network",), **FAST)
    (report.network_dir / "n1024-l3.tsv").unlink()
    report = dl.download(cfg, tmp_path / "data", base_url, what=("network",), **FAST)
    assert report.files[0].action == "skipped"
    assert (report.layers_extracted, report.layers_present) == (1, N_LAYERS - 1)
    assert (report.network_dir / "n1024-l3.tsv").read_bytes() == layer_tsv(3)


def test_present_file_without_record_is_adopted(mirror, server, base_url, tmp_path):
    cfg = catalog.config(N, N_LAYERS)
    dest = tmp_path / "data" / cfg.inputs_path
    dest.parent.mkdir(parents=True)
    dest.write_bytes((mirror / cfg.inputs_path).read_bytes())
    report = dl.download(cfg, tmp_path / "data", base_url, what=("inputs",), **FAST)
    assert report.files[0].action == "skipped"
    assert not server.gets()


def test_present_file_failing_the_known_hash_is_fetched_again(mirror, server, base_url,
                                                               tmp_path, monkeypatch):
    cfg = catalog.config(N, N_LAYERS)
    good = (mirror / cfg.truth_path).read_bytes()
    monkeypatch.setattr(dl, "load_registry", lambda: {
        (cfg.truth_path, len(good)): hashlib.sha256(good).hexdigest()})
    dest = tmp_path / "data" / cfg.truth_path
    dest.parent.mkdir(parents=True)
    dest.write_bytes(good.replace(b"17", b"18"))
    report = dl.download(cfg, tmp_path / "data", base_url, what=("truth",), **FAST)
    assert report.files[0].action == "fetched" and dest.read_bytes() == good


def test_unreadable_record_is_a_clear_error(tmp_path):
    (tmp_path / dl.RECORD_NAME).write_text("{not json")
    with pytest.raises(DataError, match="delete it"):
        dl.download(catalog.config(N, N_LAYERS), tmp_path, "http://127.0.0.1:9")


def test_refetched_tarball_rewrites_the_layers(mirror, server, base_url, tmp_path):
    cfg = catalog.config(N, N_LAYERS)
    report = dl.download(cfg, tmp_path / "data", base_url, what=("network",), **FAST)
    report.files[0].path.unlink()
    # A new tarball whose layer 2 has the size of the old one but other values.
    new_layer2 = layer_tsv(2).replace(b"6.250000e-02", b"1.250000e-01")
    members = layer_members()
    assert members[2][0] == f"neuron{N}/n{N}-l2.tsv"
    members[2] = (members[2][0], new_layer2)
    make_tarball(mirror / cfg.network_path, members)

    report = dl.download(cfg, tmp_path / "data", base_url, what=("network",), **FAST)
    assert report.files[0].action == "fetched"
    assert (report.layers_extracted, report.layers_present) == (N_LAYERS, 0)
    assert (report.network_dir / "n1024-l2.tsv").read_bytes() == new_layer2


def test_progress_bars_on_stderr(server, base_url, tmp_path, capsys):
    dl.download(catalog.config(N, 2), tmp_path / "data", base_url, progress=True, **FAST)
    err = capsys.readouterr().err
    assert f"neuron{N}.tar.gz" in err and f"extract neuron{N}" in err and "100%" in err


def test_progress_without_tqdm_is_a_clear_error(server, base_url, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(DownloadError, match="pip install tqdm"):
        dl.download(catalog.config(N, 2), tmp_path / "data", base_url, progress=True, **FAST)


def test_default_skips_truth_for_unpublished_depth(server, base_url, tmp_path):
    report = dl.download(catalog.config(N, 3), tmp_path / "data", base_url, **FAST)
    assert [Path(f.path).name for f in report.files] == [
        f"sparse-images-{N}.tsv.gz", f"neuron{N}.tar.gz"]
    assert report.layers_extracted == 3


def test_unknown_what_is_refused(tmp_path):
    with pytest.raises(dl.GraphChallengeError, match="weights"):
        dl.download(catalog.config(N, 120), tmp_path, "http://127.0.0.1:9", what=("weights",))


# -------------------------------------------------------------------- fetch()

def test_resume_asks_only_for_the_missing_bytes(mirror, server, base_url, tmp_path):
    source = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    dest = tmp_path / f"neuron{N}.tar.gz"
    half = len(source) // 2
    dest.with_name(dest.name + ".part").write_bytes(source[:half])

    report = dl.fetch(f"{base_url}/dnn/neuron{N}.tar.gz", dest, **FAST)
    assert dest.read_bytes() == source
    assert report.transferred == len(source) - half
    (get,) = server.gets()
    assert get["range"] == f"bytes={half}-"
    assert (get["status"], get["sent"]) == (206, len(source) - half)


def test_complete_part_file_is_only_verified(mirror, server, base_url, tmp_path):
    source = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    dest = tmp_path / f"neuron{N}.tar.gz"
    dest.with_name(dest.name + ".part").write_bytes(source)
    report = dl.fetch(f"{base_url}/dnn/neuron{N}.tar.gz", dest, hashlib.sha256(source).hexdigest(),
                      **FAST)
    assert dest.read_bytes() == source and report.transferred == 0
    assert [g["status"] for g in server.gets()] == [416]


def test_server_sending_short_ranges(mirror, server, base_url, tmp_path):
    source = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    server.range_cap = len(source) // 3
    dest = tmp_path / f"neuron{N}.tar.gz"
    dest.with_name(dest.name + ".part").write_bytes(source[:10])
    dl.fetch(f"{base_url}/dnn/neuron{N}.tar.gz", dest, retries=1, backoff=0.0)
    assert dest.read_bytes() == source
    assert [g["range"] for g in server.gets()] == [
        f"bytes={start}-" for start in range(10, len(source), server.range_cap)]


def test_part_file_longer_than_the_server_file(mirror, server, base_url, tmp_path):
    source = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    dest = tmp_path / f"neuron{N}.tar.gz"
    dest.with_name(dest.name + ".part").write_bytes(source + b"junk")
    dl.fetch(f"{base_url}/dnn/neuron{N}.tar.gz", dest, **FAST)
    assert dest.read_bytes() == source
    assert [g["status"] for g in server.gets()] == [416, 200]


def test_server_ignoring_range_restarts_cleanly(mirror, server, base_url, tmp_path):
    server.ignore_range = True
    source = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    dest = tmp_path / f"neuron{N}.tar.gz"
    dest.with_name(dest.name + ".part").write_bytes(b"stale bytes of another file" * 10)

    dl.fetch(f"{base_url}/dnn/neuron{N}.tar.gz", dest, **FAST)
    assert dest.read_bytes() == source
    (get,) = server.gets()
    assert get["range"] is not None and (get["status"], get["sent"]) == (200, len(source))


def test_checksum_mismatch_keeps_the_good_file(mirror, server, base_url, tmp_path):
    dest = tmp_path / "truth.tsv"
    dest.write_text("the good file\n")
    before = dest.stat().st_mtime_ns
    with pytest.raises(DownloadError, match="SHA-256 mismatch") as caught:
        dl.fetch(f"{base_url}/dnn/neuron{N}-l{N_LAYERS}-categories.tsv", dest, "0" * 64, **FAST)
    assert "left as it was" in str(caught.value)
    assert dest.read_text() == "the good file\n" and dest.stat().st_mtime_ns == before
    assert not dest.with_name(dest.name + ".part").exists()


def test_record_rejects_a_changed_server_file(mirror, server, base_url, tmp_path):
    cfg = catalog.config(N, N_LAYERS)
    root = tmp_path / "data"
    dl.download(cfg, root, base_url, what=("truth",), **FAST)
    (root / cfg.truth_path).unlink()
    # Same size, other content: only the hash recorded at the first fetch tells.
    (mirror / cfg.truth_path).write_text("3\n17\n41\n")
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        dl.download(cfg, root, base_url, what=("truth",), **FAST)
    assert not (root / cfg.truth_path).exists()


def test_registry_entries_apply_only_at_their_size(mirror, server, base_url, tmp_path,
                                                   monkeypatch):
    cfg = catalog.config(N, N_LAYERS)
    size = (mirror / cfg.truth_path).stat().st_size
    registry = dl.load_registry(f"{'0' * 64}  {size + 1}  {cfg.truth_path}\n")
    monkeypatch.setattr(dl, "load_registry", lambda: registry)
    dl.download(cfg, tmp_path / "a", base_url, what=("truth",), **FAST)   # other size: ignored

    registry[(cfg.truth_path, size)] = "0" * 64
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        dl.download(cfg, tmp_path / "b", base_url, what=("truth",), **FAST)
    assert not (tmp_path / "b" / cfg.truth_path).exists()


def test_shipped_registry_parses():
    registry = dl.load_registry()
    assert registry[("dnn/neuron1024-l120-categories.tsv", 84)] == (
        "913402abda55d082697fcde9f706660f5b36958083238d107badc6115adf852e")
    with pytest.raises(DataError, match="line 1"):
        dl.load_registry("not-a-hash  12  dnn/x\n")


def test_truncated_transfer_resumes(mirror, server, base_url, tmp_path):
    source = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    cut = len(source) // 3
    server.truncate_times, server.truncate_at = 1, cut
    dest = tmp_path / f"neuron{N}.tar.gz"
    dl.fetch(f"{base_url}/dnn/neuron{N}.tar.gz", dest, hashlib.sha256(source).hexdigest(), **FAST)
    assert dest.read_bytes() == source
    first, second = server.gets()
    assert first["sent"] == cut
    assert second["range"] == f"bytes={cut}-" and second["sent"] == len(source) - cut


def test_retries_are_not_spent_while_resumes_make_headway(mirror, server, base_url,
                                                         tmp_path):
    source = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    server.truncate_times, server.truncate_at = 100, len(source) // 5 + 1
    dest = tmp_path / f"neuron{N}.tar.gz"
    dl.fetch(f"{base_url}/dnn/neuron{N}.tar.gz", dest, retries=1, backoff=0.0)
    assert dest.read_bytes() == source and len(server.gets()) == 5


def test_exhausted_retries_keep_the_part_file(mirror, server, base_url, tmp_path):
    source = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    cut = len(source) // 5
    server.truncate_times, server.truncate_at = 1, cut
    server.fail_times = 1
    url = f"{base_url}/dnn/neuron{N}.tar.gz"
    dest = tmp_path / f"neuron{N}.tar.gz"
    with pytest.raises(DownloadError, match="gave up after 1 failed attempt") as caught:
        dl.fetch(url, dest, retries=0, backoff=0.0)
    assert url in str(caught.value) and "500" in str(caught.value)
    with pytest.raises(DownloadError, match="resumes"):
        dl.fetch(url, dest, retries=0, backoff=0.0)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == cut and not dest.exists()

    server.truncate_times = 0
    dl.fetch(url, dest, **FAST)
    assert dest.read_bytes() == source
    assert server.gets()[-1]["range"] == f"bytes={cut}-"


def test_gzip_label_does_not_unpack_the_file(mirror, server, base_url, tmp_path):
    server.label_gzip = True
    dest = tmp_path / "inputs.tsv.gz"
    dl.fetch(f"{base_url}/mnist/sparse-images-{N}.tsv.gz", dest, **FAST)
    assert dest.read_bytes() == (mirror / "mnist" / f"sparse-images-{N}.tsv.gz").read_bytes()


def test_unknown_host_is_not_retried(tmp_path, monkeypatch, caplog):
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "challenge.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(DownloadError, match="unknown host") as caught:
        dl.fetch("http://challenge.invalid/x.tsv", tmp_path / "x.tsv", retries=3, backoff=30.0)
    assert "http://challenge.invalid/x.tsv" in str(caught.value)
    assert "retrying" not in caplog.text


def test_server_error_is_retried(mirror, server, base_url, tmp_path):
    server.fail_times = 1
    dest = tmp_path / "truth.tsv"
    dl.fetch(f"{base_url}/dnn/neuron{N}-l{N_LAYERS}-categories.tsv", dest, **FAST)
    assert dest.read_text() == "3\n17\n40\n"
    assert [g["status"] for g in server.gets()] == [500, 200]


def test_404_names_the_url(server, base_url, tmp_path):
    url = f"{base_url}/dnn/missing.tsv"
    with pytest.raises(DownloadError, match="404") as caught:
        dl.fetch(url, tmp_path / "missing.tsv", **FAST)
    assert url in str(caught.value)
    assert len(server.gets()) == 1          # a 404 is not retried


def test_full_disk_is_refused_before_writing(server, base_url, tmp_path, monkeypatch):
    tiny = dl.shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: tiny)
    dest = tmp_path / f"neuron{N}.tar.gz"
    with pytest.raises(DownloadError, match="not enough disk space"):
        dl.fetch(f"{base_url}/dnn/neuron{N}.tar.gz", dest, **FAST)
    assert not dest.exists()


# ------------------------------------------------------------ extract_layers()

def test_extracts_only_the_first_layers(mirror, tmp_path):
    tarball = mirror / "dnn" / f"neuron{N}.tar.gz"
    extraction = dl.extract_layers(tarball, tmp_path / "net", N, 3)
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == [
        "n1024-l1.tsv", "n1024-l2.tsv", "n1024-l3.tsv"]
    assert (extraction.extracted, extraction.present) == (3, 0)


def test_extraction_stops_once_the_layers_are_read(tmp_path):
    link = tarfile.TarInfo(f"neuron{N}/zz-link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tarball = make_tarball(tmp_path / "t.tar.gz", layer_members(3) + [link])
    dl.extract_layers(tarball, tmp_path / "net", N, 3)        # never reaches the link
    with pytest.raises(DataError, match="symbolic link"):
        dl.extract_layers(tarball, tmp_path / "net", N, 4)


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("member, reason", [
    ((f"neuron{N}/../../evil.tsv", b"x"), "points outside"),
    (("../evil.tsv", b"x"), "points outside"),
    (("/tmp/evil.tsv", b"x"), "points outside"),
    ((f"neuron{N}\\..\\..\\evil.tsv", b"x"), "points outside"),
    (_special(f"neuron{N}/n{N}-l1.tsv", tarfile.SYMTYPE, "../../evil.tsv"), "symbolic link"),
    (_special(f"neuron{N}/n{N}-l1.tsv", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
    (_special(f"neuron{N}/dev", tarfile.CHRTYPE), "character device"),
])
def test_unsafe_tarball_is_refused(tmp_path, member, reason):
    tarball = make_tarball(tmp_path / "t.tar.gz", [member] + layer_members(2))
    with pytest.raises(DataError, match=reason):
        dl.extract_layers(tarball, tmp_path / "a" / "b" / "net", N, 2)
    assert not list(tmp_path.rglob("evil*"))
    assert not (tmp_path / "a" / "b" / "net" / f"n{N}-l1.tsv").exists()


def test_tarball_short_of_layers(mirror, tmp_path):
    with pytest.raises(DataError, match="holds 6 of the 8 layers"):
        dl.extract_layers(mirror / "dnn" / f"neuron{N}.tar.gz", tmp_path / "net", N, 8)


def test_corrupt_tarball(mirror, tmp_path):
    tarball = tmp_path / "t.tar.gz"
    whole = (mirror / "dnn" / f"neuron{N}.tar.gz").read_bytes()
    tarball.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match="not a readable"):
        dl.extract_layers(tarball, tmp_path / "net", N, N_LAYERS)
    assert not list((tmp_path / "net").glob("*.part"))


def test_a_served_tarball_that_is_damaged_is_moved_aside_not_trusted(mirror, server, base_url,
                                                                     tmp_path):
    # The server itself holds a truncated tarball and announces its size: the
    # download checks out, the extraction cannot; the next run must fetch it again.
    cfg = catalog.config(N, N_LAYERS)
    served = mirror / cfg.network_path
    good = served.read_bytes()
    served.write_bytes(good[:len(good) // 2])
    data = tmp_path / "data"
    with pytest.raises(dl.CorruptTarball, match="moved it to .*corrupt"):
        dl.download(cfg, data, base_url, what=["network"], **FAST)
    assert not (data / cfg.network_path).exists()
    assert (data / (cfg.network_path + ".corrupt")).exists()
    served.write_bytes(good)
    report = dl.download(cfg, data, base_url, what=["network"], **FAST)
    assert report.files[0].action == "fetched" and report.layers_extracted == N_LAYERS
    assert sha256(data / cfg.network_path) == sha256(served)


def test_data_folder_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_cli("download", "--neurons", str(N), "--layers", "4", "--data-dir",
                     str(tmp_path / "file" / "sub"), "--base-url", "http://127.0.0.1:9",
                     "--retries", "0", "-q")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot use the data folder" in result.stderr


# -------------------------------------------------------------- command line

def test_cli_json_and_base_url_from_environment(server, base_url, tmp_path, capsys,
                                                monkeypatch):
    monkeypatch.setenv(dl.BASE_URL_ENV, base_url)
    rc = cli.main(["download", "--neurons", str(N), "--layers", "4", "--what", "network,inputs",
                   "--data-dir", str(tmp_path), "--quiet", "--json"])
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["base_url"] == base_url and payload["layers_extracted"] == 4
    assert [f["action"] for f in payload["files"]] == ["fetched", "fetched"]


def test_cli_404_exits_2_naming_the_url(server, tmp_path, capsys):
    base = f"{server.url}/nowhere"
    rc = cli.main(["download", "--neurons", str(N), "--layers", "120", "--data-dir",
                   str(tmp_path), "--base-url", base, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{base}/dnn/neuron{N}-l120-categories.tsv" in err and "404" in err


def test_cli_connection_refused_is_one_line(tmp_path):
    with socket.socket() as probe:        # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("download", "--neurons", str(N), "--data-dir", str(tmp_path),
                     "--base-url", f"http://127.0.0.1:{port}", "--retries", "0")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "refused" in lines[0]


def test_script_downloads_several_depths(server, base_url, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "download_datasets.py"), "--neurons", str(N),
         "--layers", "3", str(N_LAYERS), "--what", "network,inputs", "--base-url", base_url,
         "--data-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    deep, shallow = json.loads(result.stdout)["downloads"]
    assert (deep["config"], deep["layers_extracted"]) == (f"neuron{N}-l{N_LAYERS}", N_LAYERS)
    # Deepest first, so the 3-layer configuration finds its layers in place.
    assert (shallow["layers_extracted"], shallow["layers_present"]) == (0, 3)


# ------------------------------------------------- end to end on the real data

@pytest.mark.shared
def test_end_to_end_on_the_shared_mirror(shared_mirror, tmp_path, capsys):
    server = MirrorServer(shared_mirror.parents[1])
    try:
        rc = cli.main(["download", "--neurons", "1024", "--layers", "120", "--quiet", "--json",
                       "--base-url", f"{server.url}/{BASE_PATH}", "--data-dir", str(tmp_path)])
    finally:
        server.stop()
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["layers_extracted"] == 120
    assert len(list((tmp_path / "dnn" / "neuron1024").glob("n1024-l*.tsv"))) == 120
    registry = dl.load_registry()
    cfg = catalog.config(1024, 120)
    for relpath in (cfg.network_path, cfg.inputs_path, cfg.truth_path):
        digest = sha256(shared_mirror / relpath)
        assert sha256(tmp_path / relpath) == digest
        assert registry[(relpath, (shared_mirror / relpath).stat().st_size)] == digest

    rc = cli.main(["run", "--neurons", "1024", "--layers", "120", "--data-dir", str(tmp_path),
                   "--quiet", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["n_categories"] == 19
