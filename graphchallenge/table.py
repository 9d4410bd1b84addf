"""The challenge's results table: many configurations, one child process per row.

This is the library call behind ``graphchallenge table``::

    >>> from graphchallenge import catalog, table
    >>> report = table.run_table(catalog.all_configs(), data_dir="data", engines=["cpu"],
    ...                          out_csv="results.csv")                          # doctest: +SKIP
    >>> print(report.markdown())                                                 # doctest: +SKIP

Every (configuration, engine) runs as ``python -m graphchallenge run ...
--json`` in a child process of its own, so that

* the row's peak resident memory is the child's own (its ``VmHWM``), not
  that of every row before it;
* a child that crashes, runs out of memory or exceeds ``memory_budget_gb``
  (its resident memory is polled and it is killed past the budget) becomes
  an ``ERROR`` row with the reason, and the other rows are unaffected;
* a configuration missing from the data folder can be generated first
  (``graphchallenge generate`` in a child too), bounded the same way.

Rows are written to the CSV file as each finishes (a temporary file renamed
into place), so an interrupted table loses at most the row in progress, and
a second call skips the configurations already measured.
"""

import csv
import io as text_io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import catalog, engines, io, layout, network
from .errors import DataError, GraphChallengeError

log = logging.getLogger(__name__)

#: ``result`` of a row: validated and equal to the truth, validated and not,
#: not validated (no truth), or the run did not complete.
RESULTS = ("PASS", "FAIL", "NO TRUTH", "ERROR")

_RSS_POLL_SECONDS = 0.05
_ERROR_PREFIX = "graphchallenge: error: "
_STDERR_TAIL = 8192


@dataclass
class TableRow:
    """One (configuration, engine) of the table; the CSV's columns, in order.

    ``truth`` says where the truth came from: ``file`` (a truth file, e.g.
    downloaded), ``generated`` (the float64 reference's categories, written
    when the challenge was generated), ``reference on first K inputs``
    (computed by the run itself on its first K inputs), or empty.
    ``peak_rss_gb`` is the child process's peak resident memory (10**9 bytes).
    """

    neurons: int
    layers: int
    edges: int
    inputs: int = None
    engine: str = ""
    infer_seconds: float = None
    prepare_seconds: float = None
    edges_per_second: float = None
    peak_rss_gb: float = None
    result: str = "ERROR"
    truth: str = ""
    note: str = ""
    wall_seconds: float = None

    def to_dict(self):
        return asdict(self)


COLUMNS = tuple(field.name for field in fields(TableRow))
_TYPES = {field.name: field.type for field in fields(TableRow)}


@dataclass
class TableReport:
    """The outcome of :func:`run_table`; ``to_dict()`` is what ``--json`` prints.

    ``rows`` are those of the configurations asked for (measured now or
    read back from the CSV); ``ran`` and ``reused`` count each kind;
    ``file_rows`` is every row of the CSV file after the call (what
    ``--plot`` draws: the whole table, measured over several calls).
    """

    rows: list
    ran: int = 0
    reused: int = 0
    csv: str = None
    file_rows: list = None

    @property
    def passed(self):
        """True when every row asked for passed."""
        return bool(self.rows) and all(row.result == "PASS" for row in self.rows)

    def to_dict(self):
        return {"rows": [row.to_dict() for row in self.rows], "ran": self.ran,
                "reused": self.reused, "csv": self.csv, "passed": self.passed}

    def markdown(self):
        """The table in Markdown, as the challenge's results are tabulated."""
        header = ["neurons", "layers", "edges", "inputs", "engine", "inference (s)",
                  "preparation (s)", "edges/s", "peak RSS (GB)", "result", "truth", "note"]
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---:" if k < 4 or 5 <= k <= 8 else "---"
                                for k in range(len(header))) + "|"]
        for row in self.rows:
            cells = [str(row.neurons), str(row.layers), f"{row.edges:,}",
                     _number(row.inputs, "{:,}"), row.engine, _number(row.infer_seconds, "{:.4g}"),
                     _number(row.prepare_seconds, "{:.3g}"),
                     _number(row.edges_per_second, "{:.4g}"),
                     _number(row.peak_rss_gb, "{:.2f}"), row.result, row.truth,
                     row.note.replace("|", "/")]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _number(value, form):
    return "-" if value is None else form.format(value)


# ---------------------------------------------------------------- the CSV file

def read_csv(path):
    """The rows of a table CSV written by :func:`run_table` (none if the file is absent)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                return []
            if set(reader.fieldnames) != set(COLUMNS):
                raise DataError(f"{path}: not a table written by `graphchallenge table` (columns "
                                f"{', '.join(reader.fieldnames)}); choose another --csv file")
            return [_row_from_text(record) for record in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    except ValueError as exc:
        raise DataError(f"{path}: a malformed row ({exc}); fix or delete the file") from None


def _row_from_text(record):
    values = {}
    for name, text in record.items():
        kind = _TYPES[name]
        if text in ("", None) and kind is not str:
            values[name] = None
        else:
            values[name] = kind(text or "")
    return TableRow(**values)


def write_csv(path, rows):
    """Write ``rows`` to ``path`` atomically (a temporary file renamed into place)."""
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: "" if value is None else value
                         for name, value in row.to_dict().items()})
    data = buffer.getvalue().encode()
    io._write_atomic(path, lambda handle: handle.write(data))


def _same_run(row, cfg, engine, n_inputs):
    """Whether ``row`` measured ``cfg`` on ``engine`` with the inputs asked for."""
    return (row.neurons == cfg.neurons and row.layers == cfg.layers and row.engine == engine
            and (n_inputs is None or row.inputs == n_inputs))


# ---------------------------------------------------------------- child processes

@dataclass
class ChildOutcome:
    """How a child process ended: its exit status, output and peak memory."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_gb: float
    over_budget: bool = False
    seconds: float = 0.0

    @property
    def reason(self):
        """One line saying why the child failed."""
        if self.over_budget:
            return f"killed: resident memory above the budget ({self.peak_rss_gb:.2f} GB)"
        for line in reversed(self.stderr.replace("\r", "\n").splitlines()):
            line = line.strip()
            if line.startswith(_ERROR_PREFIX):
                return line[len(_ERROR_PREFIX):]
        if self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            hint = " (out of memory?)" if -self.returncode == signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        lines = [line.strip() for line in self.stderr.replace("\r", "\n").splitlines()
                 if line.strip()]
        return lines[-1][:200] if lines else f"exit status {self.returncode}"


def _memory_bytes(pid):
    """``(VmRSS, VmHWM)`` of process ``pid`` in bytes: resident now and its peak; None if gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line[:5]] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    if len(values) < 2:  # a zombie has no memory lines left
        return None
    return values["VmRSS"], values["VmHWM"]


def run_child(command, memory_budget_gb=None, forward_stderr=False, env=None):
    """Run ``command``, measuring its peak resident memory; returns a :class:`ChildOutcome`.

    The peak is the child's own high-water mark (``VmHWM``), polled every
    50 ms while it runs. Not ``ru_maxrss`` from ``wait4`` alone: on Linux the
    kernel folds the parent's peak into it when the child execs, so every
    row would show at least the parent's memory; ``ru_maxrss`` serves only
    for a child too short to be polled. With ``memory_budget_gb`` the
    child's resident memory is checked at each poll and the child killed
    when it passes the budget (a polled limit, unlike ``RLIMIT_AS``, which
    counts the address space numba and pyarrow reserve but never touch).
    With ``forward_stderr`` the child's stderr (its progress bars) is copied
    to ours as it comes.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out_chunks, err_tail = [], bytearray()

    def read_stdout():
        out_chunks.append(proc.stdout.read())

    def read_stderr():
        while True:
            chunk = proc.stderr.read1(65536)
            if not chunk:
                return
            if forward_stderr:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            err_tail.extend(chunk)
            del err_tail[:-_STDERR_TAIL]

    over_budget = threading.Event()
    finished = threading.Event()
    peak = [None]
    limit = memory_budget_gb * 1e9 if memory_budget_gb is not None else None

    def watch():
        while True:
            memory = _memory_bytes(proc.pid)
            if memory is not None:
                rss, hwm = memory
                peak[0] = max(peak[0] or 0, hwm)
                if limit is not None and rss > limit:
                    over_budget.set()
                    proc.kill()
                    return
            if finished.wait(_RSS_POLL_SECONDS):
                return

    threads = [threading.Thread(target=target, daemon=True)
               for target in (read_stdout, read_stderr, watch)]
    for thread in threads:
        thread.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        finished.set()
    # wait4 reaped the child: tell Popen, so that it never waits for it again.
    proc.returncode = os.waitstatus_to_exitcode(status)
    for thread in threads:
        thread.join()
    proc.stdout.close()
    proc.stderr.close()
    peak_bytes = peak[0] if peak[0] is not None else usage.ru_maxrss * 1024
    return ChildOutcome(returncode=proc.returncode,
                        stdout=b"".join(out_chunks).decode(errors="replace"),
                        stderr=err_tail.decode(errors="replace"), peak_rss_gb=peak_bytes / 1e9,
                        over_budget=over_budget.is_set(), seconds=time.perf_counter() - start)


def _command(*args):
    return [sys.executable, "-m", "graphchallenge", *map(str, args)]


def _child_env():
    # The child must import this very package, wherever it was imported from.
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


# ---------------------------------------------------------------- data

def _truth_label(cfg, root, source):
    """The ``truth`` column: where a run's truth came from."""
    from . import synthetic

    if not source:
        return ""
    if source != "file":
        return source
    try:
        entry = synthetic.read_record(root)["neurons"].get(str(cfg.neurons))
    except DataError:
        entry = None
    return "generated" if entry and cfg.layers in entry.get("layers", []) else "file"


# ---------------------------------------------------------------- the table

def _parse_run(cfg, engine, outcome, root, n_inputs):
    """The row of a finished ``graphchallenge run`` child."""
    row = TableRow(neurons=cfg.neurons, layers=cfg.layers, edges=cfg.edges, inputs=n_inputs,
                   engine=engine, peak_rss_gb=round(outcome.peak_rss_gb, 3),
                   wall_seconds=round(outcome.seconds, 3))
    report = None
    if outcome.returncode in (0, 1) and not outcome.over_budget:
        try:
            report = json.loads(outcome.stdout)
        except ValueError:
            report = None
    if report is None:
        row.note = outcome.reason
        return row
    row.inputs = report["n_inputs"]
    row.infer_seconds = report["infer_seconds"]
    row.prepare_seconds = report["prepare_seconds"]
    row.edges_per_second = report["edges_per_second"]
    row.truth = _truth_label(cfg, root, report.get("truth_source"))
    validation = report.get("validation")
    if validation is None:
        row.result = "NO TRUTH"
        row.note = f"{report['n_categories']} categories, not validated"
    elif validation["passed"]:
        row.result = "PASS"
        row.note = f"{report['n_categories']} categories"
        if report.get("truth_inputs"):
            row.note += f", {validation['n_categories']} of them validated"
        if report.get("rechecked_rows"):
            row.note += f"; {report['rechecked_rows']} rows rechecked in float64"
    else:
        row.result = "FAIL"
        row.note = (f"{validation['n_missing']} missing, {validation['n_extra']} extra of "
                    f"{validation['n_truth']} truth categories")
    return row


def run_table(configs=None, data_dir=None, engines_wanted=("auto",), n_inputs=None, out_csv=None,
              generate=False, rerun=False, memory_budget_gb=None, truth_inputs=None, seed=0,
              generate_format="binary", generate_inputs=None, progress=False, echo=False):
    """Run every configuration of ``configs`` on every engine, one child process each.

    Parameters
    ----------
    configs : list of catalog.Config, optional
        Default: the twelve challenge configurations.
    data_dir : path-like, optional
        Read as ``graphchallenge run`` reads it (see :mod:`graphchallenge.layout`).
    engines_wanted : sequence of str
        Engine names; ``auto`` stands for the best one available here.
    n_inputs : int, optional
        Run the first ``n_inputs`` inputs (default: all the folder holds).
    out_csv : path-like, optional
        The table file: rows already in it (same neurons, layers, engine and,
        if given, inputs; ``ERROR`` rows excepted) are not run again unless
        ``rerun``; every new row is written as soon as it is measured.
    generate : bool
        Generate, into ``data_dir``, the configurations it lacks first
        (seeded by ``seed``, truth included, ``generate_format``), each in a
        child process of its own.
    rerun : bool
        Run every configuration, replacing the rows already in ``out_csv``.
    memory_budget_gb : float, optional
        Kill a child whose resident memory passes this; its row says so.
    truth_inputs : int, optional
        Validate each run against the float64 reference on its first
        ``truth_inputs`` inputs (``run --truth-inputs``): no truth file needed.
    generate_inputs : int, optional
        Inputs of a generated challenge; default ``n_inputs``, else 60,000.
    progress : bool
        Show the children's progress bars on stderr.
    echo : bool
        Print a line per configuration and per finished row on stderr.

    Returns
    -------
    TableReport
    """
    configs = list(configs) if configs is not None else catalog.all_configs()
    root = layout.data_dir(data_dir)
    rows = read_csv(out_csv) if out_csv is not None else []
    asked, ran, reused = [], 0, 0
    tasks = []
    for name in engines_wanted:
        try:
            tasks.append((engines.resolve(name), None))
        except GraphChallengeError as exc:
            tasks.append((name, str(exc)))
    total = len(configs) * len(tasks)
    env = _child_env()
    count = 0
    for cfg in configs:
        generation_error = None
        for engine, engine_error in tasks:
            count += 1
            done = [row for row in rows if _same_run(row, cfg, engine, n_inputs)]
            if done and not rerun and done[-1].result != "ERROR":
                asked.append(done[-1])
                reused += 1
                if echo:
                    _say(f"[{count}/{total}] {cfg.name} {engine}: already in the table "
                         f"({done[-1].result}), skipped")
                continue
            if echo:
                _say(f"[{count}/{total}] {cfg.name} {engine}: running")
            if engine_error is not None:
                row = TableRow(cfg.neurons, cfg.layers, cfg.edges, n_inputs, engine,
                               note=engine_error)
            else:
                if generate and generation_error is None and not network.has_challenge(
                        cfg, root, need_truth=truth_inputs is None):
                    generation_error = _generate(cfg, root, seed, generate_format,
                                                 generate_inputs or n_inputs or catalog.N_IMAGES,
                                                 truth_inputs is None, memory_budget_gb, progress,
                                                 env, echo) or ""
                if generation_error:
                    row = TableRow(cfg.neurons, cfg.layers, cfg.edges, n_inputs, engine,
                                   note=f"generation failed: {generation_error}")
                else:
                    row = _run_one(cfg, engine, root, n_inputs, truth_inputs, memory_budget_gb,
                                   progress, env)
            ran += 1
            rows = [old for old in rows if not _same_run(old, cfg, engine, n_inputs)] + [row]
            asked.append(row)
            if out_csv is not None:
                write_csv(out_csv, rows)
            if echo:
                _say(f"[{count}/{total}] {cfg.name} {engine}: {row.result}"
                     + (f", {row.infer_seconds:.3f} s, {row.edges_per_second:.3g} edges/s"
                        if row.infer_seconds is not None else "")
                     + (f", peak {row.peak_rss_gb:.2f} GB" if row.peak_rss_gb is not None else "")
                     + (f" ({row.note})" if row.note and row.result != "PASS" else ""))
    return TableReport(rows=asked, ran=ran, reused=reused,
                       csv=str(out_csv) if out_csv is not None else None,
                       file_rows=rows if out_csv is not None else asked)


def _say(line):
    print(line, file=sys.stderr, flush=True)


def _progress_flag(progress):
    return "--progress" if progress else "--quiet"


def _run_one(cfg, engine, root, n_inputs, truth_inputs, memory_budget_gb, progress, env):
    command = _command("run", "--neurons", cfg.neurons, "--layers", cfg.layers, "--engine", engine,
                       "--data-dir", root, "--json", _progress_flag(progress))
    if n_inputs is not None:
        command += ["--inputs", str(n_inputs)]
    if truth_inputs is not None:
        command += ["--truth-inputs", str(truth_inputs)]
    log.info("running %s", " ".join(command))
    outcome = run_child(command, memory_budget_gb, forward_stderr=progress, env=env)
    return _parse_run(cfg, engine, outcome, root, n_inputs)


def _generate(cfg, root, seed, fmt, n_inputs, truth, memory_budget_gb, progress, env, echo):
    """Generate ``cfg`` into ``root`` in a child; returns None, or why it failed.

    Without ``truth`` (the runs compute their own on a subset) the
    generation skips the reference, the part that grows with depth.
    """
    if echo:
        _say(f"    generating {cfg.name} ({n_inputs:,} inputs, {fmt}"
             + ("" if truth else ", no truth") + f") into {root}")
    command = _command("generate", "--neurons", cfg.neurons, "--layers", cfg.layers,
                       "--inputs", n_inputs, "--seed", seed, "--format", fmt, "--data-dir", root,
                       "--json", _progress_flag(progress))
    if not truth:
        command.append("--no-truth")
    outcome = run_child(command, memory_budget_gb, forward_stderr=progress, env=env)
    if outcome.returncode != 0 or outcome.over_budget:
        return outcome.reason
    if echo:
        _say(f"    generated in {outcome.seconds:.1f} s, peak {outcome.peak_rss_gb:.2f} GB")
    return None
