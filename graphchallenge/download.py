"""Resumable, verified downloads of the challenge files, and safe extraction of the layers.

:func:`download` fetches one configuration into a data folder laid out like
the server (see :mod:`graphchallenge.layout`); :func:`fetch` and
:func:`extract_layers` are the two steps it is made of.

How a file is fetched
    Bytes go to ``<name>.part`` next to the target. An interrupted transfer
    leaves the ``.part`` file behind and the next attempt (a retry, or a
    later run) asks only for the missing bytes with an HTTP ``Range``
    request; a server that ignores ``Range`` sends the whole file and the
    ``.part`` file is started over. Connection errors, timeouts and 5xx
    answers are retried with exponential backoff. Once complete, the size is
    checked against the server's ``Content-Length`` / ``Content-Range`` and
    the SHA-256 against the known hash, if any; only then is the ``.part``
    file renamed onto the target (``os.replace``, atomic), so a failed or
    corrupt download never replaces a good file or looks finished.

Where known hashes come from
    Hashes are keyed by (path relative to the base URL, size in bytes), so
    an entry speaks only for one version of a file and never for another
    file of the same name: the 120-layer subset of ``neuron1024.tar.gz``
    this project mirrors and the official 1920-layer tarball differ in size,
    so the subset's hash is never held against the official file.

    * ``registry.txt`` (shipped with the package): ``sha256  size  path``
      lines for files whose hashes are published or checked by hand.
    * ``<data-dir>/.graphchallenge-hashes.json``: the record of this data
      folder. Every file fetched and verified is recorded there (hash, size,
      URL, modification time), trust on first use: a later download of the
      same file at the same size must hash the same. A file whose record
      still matches (same URL, size and modification time) is skipped
      without network access or re-hashing. The record also holds the sizes
      of the extracted layers, so a second run need not re-read the tarball.

Examples
--------
>>> from graphchallenge import config
>>> from graphchallenge.download import download
>>> mirror = "http://127.0.0.1:8000/synthetic/sparsechallenge_2019"
>>> report = download(config(1024, 120), "data", mirror)   # doctest: +SKIP
>>> print(report.summary())                                  # doctest: +SKIP
fetched   data/dnn/neuron1024-l120-categories.tsv (84 B)
fetched   data/mnist/sparse-images-1024.tsv.gz (287.3 KiB)
fetched   data/dnn/neuron1024.tar.gz (10.8 MiB)
extracted 120 layers into data/dnn/neuron1024 (0 already present)
"""

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PureWindowsPath

from . import catalog
from .errors import DataError, DownloadError, GraphChallengeError
from .layout import data_dir, server_paths

log = logging.getLogger(__name__)

#: Environment variable naming a mirror to use instead of :data:`catalog.BASE_URL`.
BASE_URL_ENV = "GRAPHCHALLENGE_BASE_URL"

#: The per-folder record of verified hashes, under the data folder.
RECORD_NAME = ".graphchallenge-hashes.json"

#: What :func:`download` can fetch, in the order it fetches them (small files
#: first, so a wrong ``--layers`` fails before a large tarball is fetched).
WHAT = ("truth", "inputs", "network")

RETRIES = 4
BACKOFF = 1.0
TIMEOUT = 60.0

_CHUNK = 1 << 20

# Ask for the bytes as stored: a Content-Length or Range of a re-encoded
# body would not describe the file.
_HEADERS = {"Accept-Encoding": "identity"}

_MEMBER_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link",
                 tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                 tarfile.FIFOTYPE: "FIFO"}


class CorruptTarball(DataError):
    """The network tarball cannot be read to the end (damaged or truncated)."""


@dataclass
class FileReport:
    """One file of a download: where it lives and what was done to it.

    ``action`` is ``"fetched"`` or ``"skipped"`` (already present and
    verified); ``bytes`` is the file's size and ``transferred`` the bytes
    received by this call (less than ``bytes`` after a resume).
    """

    path: Path
    url: str
    action: str
    bytes: int
    sha256: str
    transferred: int = 0

    def to_dict(self):
        return {"path": str(self.path), "url": self.url, "action": self.action,
                "bytes": self.bytes, "transferred": self.transferred, "sha256": self.sha256}


@dataclass
class Extraction:
    """What :func:`extract_layers` did: layers written, layers already present,
    and the size of every layer it checked (by file name)."""

    directory: Path
    extracted: int
    present: int
    layer_sizes: dict


@dataclass
class DownloadReport:
    """The outcome of :func:`download`; ``to_dict()`` is what ``--json`` prints."""

    config: str
    data_dir: Path
    base_url: str
    files: list = field(default_factory=list)
    network_dir: Path = None
    layers_extracted: int = 0
    layers_present: int = 0

    def to_dict(self):
        return {"config": self.config, "data_dir": str(self.data_dir),
                "base_url": self.base_url, "files": [f.to_dict() for f in self.files],
                "network_dir": str(self.network_dir) if self.network_dir else None,
                "layers_extracted": self.layers_extracted,
                "layers_present": self.layers_present}

    def summary(self):
        """One line per file, and one for the layers."""
        lines = [f"{f.action:<9} {f.path} ({_human(f.bytes)})" for f in self.files]
        if self.network_dir is not None:
            lines.append(f"extracted {self.layers_extracted} layers into {self.network_dir} "
                         f"({self.layers_present} already present)")
        return "\n".join(lines)


def resolve_base_url(base_url=None):
    """``base_url``, else ``$GRAPHCHALLENGE_BASE_URL``, else the official server."""
    return (base_url or os.environ.get(BASE_URL_ENV) or catalog.BASE_URL).rstrip("/")


def file_sha256(path):
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def load_registry(text=None):
    """The shipped hashes: ``{(path, size): sha256}``.

    Parameters
    ----------
    text : str, optional
        Registry text to parse instead of the packaged ``registry.txt``; one
        ``sha256  size  path`` entry a line, ``#`` starts a comment.
    """
    if text is None:
        text = resources.files(__package__).joinpath("registry.txt").read_text()
    registry = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if (len(fields) != 3 or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0])
                or not fields[1].isdigit()):
            raise DataError(f"registry line {number} is not 'sha256  size  path': {line!r}")
        registry[(fields[2], int(fields[1]))] = fields[0].lower()
    return registry


def download(cfg, root=None, base_url=None, what=None, *, progress=False,
             retries=RETRIES, backoff=BACKOFF, timeout=TIMEOUT):
    """Download ``cfg``'s files into the data folder ``root`` (server layout).

    Files already present and verified are skipped, interrupted transfers
    resume, and of the network tarball only layers ``1..cfg.layers`` are
    extracted (to ``dnn/neuron{N}/``). The inputs stay gzipped.

    Parameters
    ----------
    cfg : Config
        The configuration; ``cfg.layers`` is both the number of layers
        extracted and the depth whose truth file is fetched.
    root : path, optional
        Data folder (default: ``$GRAPHCHALLENGE_DATA``, else ``./data``).
    base_url : str, optional
        Server or mirror (default: ``$GRAPHCHALLENGE_BASE_URL``, else
        :data:`catalog.BASE_URL`).
    what : iterable of str, optional
        Any of ``"network"``, ``"inputs"``, ``"truth"``. Default: all three,
        except the truth for a depth the challenge publishes none for.
    progress : bool
        Draw a tqdm progress bar per file on stderr.
    retries : int
        Retries of each request after a connection error, a timeout or a
        5xx answer; an attempt that received data does not use one up.
    backoff : float
        Seconds before the first retry; the wait doubles with each retry.
    timeout : float
        Seconds to wait for the server to connect or send more data.

    Returns
    -------
    DownloadReport

    Raises
    ------
    DownloadError
        Unreachable server, HTTP error, checksum mismatch, full disk.
    DataError
        A tarball that is unreadable, unsafe, or short of layers.
    """
    if what is None:
        what = [item for item in WHAT if item != "truth" or cfg.official]
    unknown = set(what) - set(WHAT)
    if unknown:
        raise GraphChallengeError(f"cannot download {', '.join(sorted(unknown))}; choose from "
                                  f"{', '.join(WHAT)}")
    root = data_dir(root)
    base_url = resolve_base_url(base_url)
    session = _requests().Session()
    getter = _Getter(root, base_url, session, dict(progress=progress, retries=retries,
                                                    backoff=backoff, timeout=timeout))
    report = DownloadReport(cfg.name, root, base_url)
    paths = server_paths(cfg, root)
    with session:
        # WHAT's order, whatever order the caller listed them in.
        for item in [item for item in WHAT if item in what]:
            if item == "truth":
                report.files.append(getter.obtain(cfg.truth_path, paths.truth))
            elif item == "inputs":
                report.files.append(getter.obtain(cfg.inputs_path, paths.inputs))
            else:
                tarball = getter.obtain(cfg.network_path, paths.tarball)
                report.files.append(tarball)
                extraction = getter.layers(cfg, paths, fresh=tarball.action == "fetched",
                                           progress=progress)
                report.network_dir = extraction.directory
                report.layers_extracted = extraction.extracted
                report.layers_present = extraction.present
    return report


class _Getter:
    """Fetches the files of one data folder, consulting and updating its record."""

    def __init__(self, root, base_url, session, options):
        self.base_url, self.session, self.options = base_url, session, options
        self.registry = load_registry()
        self.record = _Record(root)

    def obtain(self, relpath, dest):
        url = f"{self.base_url}/{relpath}"
        if self.record.unchanged(relpath, dest, url):
            return FileReport(dest, url, "skipped", dest.stat().st_size,
                              self.record.files[relpath]["sha256"])
        size = _remote_size(self.session, url, self.options)
        expected = self.registry.get((relpath, size)) or self.record.known(relpath, size)
        if dest.is_file() and size is not None and dest.stat().st_size == size:
            # Present but not recorded (copied in, or recorded from another
            # mirror): adopt it if it is the server's file as far as we can tell.
            digest = file_sha256(dest)
            if expected in (None, digest):
                self.record.put(relpath, dest, url, digest)
                return FileReport(dest, url, "skipped", size, digest)
            log.warning("%s does not match the known SHA-256; downloading it again", dest)
        report = fetch(url, dest, expected, session=self.session, **self.options)
        self.record.put(relpath, dest, url, report.sha256)
        return report

    def layers(self, cfg, paths, fresh, progress):
        names = [cfg.layer_name(k) for k in range(1, cfg.layers + 1)]
        # A fetched tarball has a new record entry, without layer sizes, so
        # this shortcut only serves a tarball that was already there.
        if self.record.layers_present(cfg.network_path, paths.network_dir, names):
            return Extraction(paths.network_dir, 0, len(names), {})
        # A freshly fetched tarball may differ from the one the present
        # layers came from, so they are rewritten rather than trusted by size.
        try:
            extraction = extract_layers(paths.tarball, paths.network_dir, cfg.neurons,
                                        cfg.layers, progress=progress, overwrite=fresh)
        except CorruptTarball as exc:
            # A server can send a damaged file of the announced size: move it
            # aside (kept for inspection) and forget its record, so the next
            # download fetches it again instead of trusting it.
            self.record.forget(cfg.network_path)
            aside = paths.tarball.with_name(paths.tarball.name + ".corrupt")
            os.replace(paths.tarball, aside)
            raise CorruptTarball(f"{exc}; moved it to {aside}: run the download again") from None
        self.record.put_layers(cfg.network_path, extraction.layer_sizes)
        return extraction


class _Record:
    """``<data-dir>/.graphchallenge-hashes.json``: what this folder fetched and verified."""

    def __init__(self, root):
        self.path = Path(root) / RECORD_NAME
        try:
            self.files = json.loads(self.path.read_text())["files"]
        except FileNotFoundError:
            self.files = {}
        except OSError as exc:
            raise DownloadError(f"cannot use the data folder {root}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.path} is not a hash record ({exc}); delete it and "
                            "download again") from None

    def known(self, relpath, size):
        """The recorded hash of ``relpath`` if it was recorded at ``size`` bytes."""
        entry = self.files.get(relpath)
        return entry["sha256"] if entry and size is not None and entry["size"] == size else None

    def unchanged(self, relpath, dest, url):
        """True when ``dest`` is the file recorded from ``url`` and untouched since."""
        entry = self.files.get(relpath)
        if not entry or entry["url"] != url or not dest.is_file():
            return False
        stat = dest.stat()
        return entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns

    def layers_present(self, relpath, directory, names):
        """True when every layer in ``names`` is on disk at its recorded size."""
        sizes = self.files.get(relpath, {}).get("layers", {})
        for name in names:
            path = directory / name
            if name not in sizes or not path.is_file() or path.stat().st_size != sizes[name]:
                return False
        return True

    def put(self, relpath, dest, url, sha256):
        stat = dest.stat()
        self.files[relpath] = {"url": url, "sha256": sha256, "size": stat.st_size,
                               "mtime_ns": stat.st_mtime_ns}
        self._save()

    def put_layers(self, relpath, layer_sizes):
        self.files[relpath].setdefault("layers", {}).update(layer_sizes)
        self._save()

    def forget(self, relpath):
        """Drop what is recorded of ``relpath`` (it proved unusable)."""
        if self.files.pop(relpath, None) is not None:
            self._save()

    def _save(self):
        part = self.path.with_name(self.path.name + ".part")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            part.write_text(json.dumps({"version": 1, "files": self.files}, indent=1) + "\n")
            os.replace(part, self.path)
        except OSError as exc:
            raise DownloadError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def fetch(url, dest, sha256=None, *, progress=False, retries=RETRIES, backoff=BACKOFF,
          timeout=TIMEOUT, session=None):
    """Download ``url`` to ``dest``, resuming ``dest.part`` and verifying before renaming.

    Parameters
    ----------
    url : str
    dest : path
        Target file; its folder is created. An existing ``dest`` is replaced
        only by a download that passed every check.
    sha256 : str, optional
        Expected hex SHA-256. A mismatch discards the download.
    progress : bool
        Draw a tqdm bar (bytes, rate, ETA) on stderr.
    retries, backoff, timeout
        As for :func:`download`.
    session : requests.Session, optional
        Reuse a session's connections.

    Returns
    -------
    FileReport
        ``action`` is ``"fetched"``.

    Raises
    ------
    DownloadError
        HTTP error, unreachable server, retries exhausted (the ``.part``
        file is kept for a later resume), size or checksum mismatch, full disk.

    Examples
    --------
    >>> fetch("https://example.org/file.tsv", "data/file.tsv")  # doctest: +SKIP
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    bar = _Progress(progress, dest.name, "B")
    transferred = 0

    def attempt():
        nonlocal transferred
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with _request(session, "GET", url, headers, timeout) as response:
            if response.status_code == 416:
                # Nothing left to send: either the part file is complete, or it
                # is longer than the server's file and cannot be resumed.
                if _range_total(response) == offset:
                    return
                part.unlink()
                raise _Transient(f"{part.name} is longer than the server's file; starting over")
            start, total = _span(response, url)
            if start not in (offset, 0):
                raise DownloadError(f"cannot download {url}: asked for the bytes from {offset} "
                                    f"and the server sent them from {start}")
            # start == 0 < offset: the server ignored Range and sends the whole file.
            offset = start
            if total is not None:
                _check_disk_space(dest.parent, total - offset, url)
            bar.start(total, offset)
            with open(part, "ab" if offset else "wb") as out:
                for chunk in _body(response):
                    out.write(chunk)
                    transferred += len(chunk)
                    bar.advance(len(chunk))
        size = part.stat().st_size
        if total is not None and size != total:
            if size > total:
                part.unlink()
            raise _Transient(f"transfer ended after {size:,} of {total:,} bytes")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            _retrying(attempt, url, retries, backoff,
                      f"; {part} is kept and the next run resumes it",
                      done=lambda: part.stat().st_size if part.exists() else 0)
        finally:
            bar.close()
        digest = file_sha256(part)
        if sha256 is not None and digest != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: SHA-256 mismatch (got {digest}, expected {sha256}); "
                                f"the download was discarded and {dest} left as it was")
        os.replace(part, dest)
    except OSError as exc:
        raise DownloadError(f"cannot write {dest}: {exc}") from None
    return FileReport(dest, url, "fetched", dest.stat().st_size, digest, transferred)


def extract_layers(tarball, dest_dir, neurons, n_layers, *, progress=False, overwrite=False):
    """Extract layers ``1..n_layers`` of a challenge tarball into ``dest_dir``.

    The tarball is read as a stream and reading stops once every wanted
    layer has been seen. Members are written only under names this function
    builds (``n{N}-l{k}.tsv``), each through a temporary file renamed into
    place. A layer already present with the member's size is kept unless
    ``overwrite``. The whole tarball is refused if a member read on the way
    is unsafe: an absolute path, a ``..`` component, a link or a device.

    Parameters
    ----------
    tarball : path
        ``neuron{N}.tar.gz``, holding ``neuron{N}/n{N}-l{k}.tsv``.
    dest_dir : path
        Folder for the layer files (``<data-dir>/dnn/neuron{N}``).
    neurons, n_layers : int
    progress : bool
        Draw a tqdm bar over the layers on stderr.
    overwrite : bool
        Rewrite layers that are already present.

    Returns
    -------
    Extraction

    Raises
    ------
    DataError
        Unreadable or unsafe tarball, or fewer than ``n_layers`` layers in it.
    """
    tarball, dest_dir = Path(tarball), Path(dest_dir)
    cfg = catalog.config(neurons, n_layers)
    wanted = {f"{cfg.network_dir}/{cfg.layer_name(k)}": cfg.layer_name(k)
              for k in range(1, n_layers + 1)}
    sizes, extracted = {}, 0
    bar = _Progress(progress, f"extract {cfg.network_dir}", "layer")
    bar.start(n_layers, 0)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        # gzip rather than tarfile's own "r|gz": tarfile takes a stream cut
        # short between members for the end of the archive, gzip reports it.
        with gzip.open(tarball) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                _check_member(member, tarball)
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or name in sizes:
                    continue
                target = dest_dir / name
                if (overwrite or not target.is_file()
                        or target.stat().st_size != member.size):
                    _check_disk_space(dest_dir, member.size, f"{tarball}:{member.name}")
                    _extract_member(archive, member, target)
                    extracted += 1
                sizes[name] = member.size
                bar.advance(1)
                if len(sizes) == len(wanted):
                    break
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise CorruptTarball(f"{tarball} is not a readable .tar.gz ({exc}); delete it and "
                        "download again") from None
    except OSError as exc:
        raise DataError(f"cannot extract {tarball} into {dest_dir}: {exc}") from None
    finally:
        bar.close()
    if len(sizes) < n_layers:
        first_missing = next(k for k in range(1, n_layers + 1) if cfg.layer_name(k) not in sizes)
        raise DataError(f"{tarball} holds {len(sizes)} of the {n_layers} layers asked for "
                        f"(layer {first_missing} is missing)")
    return Extraction(dest_dir, extracted, len(sizes) - extracted, sizes)


def _check_member(member, tarball):
    name = member.name
    # Windows rules see both separators, so "a/../b", "a\\..\\b", "/x" and "C:x" all show.
    path = PureWindowsPath(name)
    if path.anchor or ".." in path.parts:
        raise DataError(f"refusing {tarball}: member {name!r} points outside the folder "
                        "it is extracted to")
    if not (member.isreg() or member.isdir()):
        kind = _MEMBER_KINDS.get(member.type, f"special member (type {member.type!r})")
        raise DataError(f"refusing {tarball}: member {name!r} is a {kind}; a challenge "
                        "tarball holds only folders and regular files")


def _extract_member(archive, member, target):
    part = target.with_name(target.name + ".part")
    try:
        with archive.extractfile(member) as source, open(part, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


class _Transient(Exception):
    """A failure worth retrying: dropped connection, timeout, 5xx, short transfer."""


def _retrying(action, url, retries, backoff, after_failure, done=lambda: 0):
    """Call ``action`` until it returns, retrying :class:`_Transient` failures.

    ``done()`` measures progress (bytes on disk): an attempt that moved it
    forward starts the count of failures afresh, so a long transfer over a
    flaky link is not given up while each resume still makes headway.
    """
    if retries < 0:
        raise GraphChallengeError(f"retries must be 0 or more (got {retries})")
    failures = 0
    while True:
        before = done()
        try:
            return action()
        except _Transient as exc:
            failures = 1 if done() > before else failures + 1
            if failures > retries:
                raise DownloadError(f"cannot download {url}: {exc} (gave up after {failures} "
                                    f"failed attempt{'s' * (failures > 1)})"
                                    f"{after_failure}") from None
            delay = backoff * 2 ** (failures - 1)
            log.warning("%s: %s; retrying in %.1f s (retry %d of %d)",
                        url, exc, delay, failures, retries)
            time.sleep(delay)


def _requests():
    try:
        import requests
    except ImportError:
        raise DownloadError("downloading needs the 'requests' package: pip install requests") \
            from None
    return requests


def _request(session, method, url, headers, timeout):
    """Send one request; 2xx and 416 come back, the rest raise."""
    requests = _requests()
    try:
        response = (session or requests).request(
            method, url, headers={**_HEADERS, **headers}, stream=True, timeout=timeout,
            allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as exc:
        cause = _root_cause(exc)
        if isinstance(cause, socket.gaierror):
            # A name that does not resolve will not resolve on retry either.
            raise DownloadError(f"cannot download {url}: unknown host "
                                f"({cause.strerror})") from None
        raise _Transient(_describe(cause)) from None
    except requests.RequestException as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from None
    status = response.status_code
    if status in (408, 429) or status >= 500:
        response.close()
        raise _Transient(f"HTTP {status} {response.reason}")
    if status >= 400 and status != 416:
        response.close()
        raise DownloadError(f"cannot download {url}: HTTP {status} {response.reason}")
    return response


def _remote_size(session, url, options):
    """The size the server announces for ``url`` (HEAD), or None."""

    def head():
        with _request(session, "HEAD", url, {}, options["timeout"]) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None

    return _retrying(head, url, options["retries"], options["backoff"], "")


def _span(response, url):
    """(first byte, total size or None) of a 200 or 206 answer."""
    if response.status_code != 206:
        length = response.headers.get("Content-Length", "")
        return 0, int(length) if length.isdigit() else None
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)",
                         response.headers.get("Content-Range", "").strip())
    if not match:
        raise DownloadError(f"cannot download {url}: the server sent a partial answer with "
                            f"Content-Range {response.headers.get('Content-Range')!r}")
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _range_total(response):
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    return int(match[1]) if match else None


def _body(response):
    """The raw bytes of ``response``; a broken transfer becomes retryable."""
    import urllib3  # installed with requests

    try:
        # decode_content=False: keep the file's bytes even if the server
        # labels a .gz with Content-Encoding: gzip.
        yield from response.raw.stream(_CHUNK, decode_content=False)
    except urllib3.exceptions.HTTPError as exc:
        raise _Transient(f"transfer interrupted ({_describe(_root_cause(exc))})") from None


def _root_cause(exc):
    """The innermost exception under requests' and urllib3's wrappers."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = [getattr(exc, "reason", None), exc.__cause__, exc.__context__, *exc.args]
        inner = [e for e in inner if isinstance(e, BaseException)]
        if not inner:
            break
        exc = inner[0]
    return exc


def _describe(cause):
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(cause) or type(cause).__name__


def _check_disk_space(folder, needed, what):
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(f"not enough disk space in {folder} for {what}: "
                            f"{_human(needed)} needed, {_human(free)} free")


def _human(n_bytes):
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


class _Progress:
    """A tqdm bar when asked for; tqdm is imported only then."""

    def __init__(self, enabled, description, unit):
        self._bar = None
        self._tqdm = None
        self._description, self._unit = description, unit
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                raise DownloadError("progress bars need tqdm: pip install tqdm, or pass "
                                    "--quiet (progress=False)") from None
            self._tqdm = tqdm

    def start(self, total, done):
        """(Re)start at ``done`` of ``total``: a retry may resume or start over."""
        if self._tqdm is None:
            return
        if self._bar is None:
            self._bar = self._tqdm(total=total, initial=done, desc=self._description,
                                   unit=self._unit, unit_scale=self._unit == "B",
                                   unit_divisor=1024, file=sys.stderr)
        else:
            self._bar.reset(total)
            self._bar.update(done)

    def advance(self, n):
        if self._bar is not None:
            self._bar.update(n)

    def close(self):
        if self._bar is not None:
            self._bar.close()
