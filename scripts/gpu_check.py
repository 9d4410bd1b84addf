#!/usr/bin/env python3
"""Check the GPU engines on a CUDA machine: the gpu tests, then one benchmark table.

Run from the repository root, with nothing installed beyond NumPy, SciPy and CuPy::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 scripts/gpu_check.py

Steps, each in its own process under a time limit (a step that fails or
runs out of time becomes a row saying so; the table is always printed):

1. ``pytest -m gpu tests/test_gpu.py tests/test_engines.py``;
2. the real neuron1024 x 120 challenge from ``.device-data/`` (server
   layout: ``dnn/neuron1024/n1024-l{k}.tsv``, ``dnn/neuron1024-l120-categories.tsv``,
   ``mnist/sparse-images-1024.tsv.gz``), its images tiled to 60,000, on
   ``gpu``, ``gpu-cusparse`` and ``cpu`` (where numba is present), each
   validated against the tiled truth;
3. a generated neuron65536 x 1920 challenge (RadiX-Net column tables made
   on the host and uploaded, 60,000 MNIST-like images): ``gpu`` on all
   inputs, validated against ``gpu-cusparse`` (float64) on the first 2,000.

The table (engine, configuration, inputs, seconds, TE/s, PASS) goes to
stdout and, as ``gpu_check.md`` and ``gpu_check.json``, to ``$OUT`` (else
``./gpu_check_results/``). TE/s is the challenge rate: original edges x
inputs / inference seconds, in 10**12 edges per second. Pure-Python packages
missing on the machine (pytest, tqdm) can be carried in
``.device-data/pylib`` (``pip install --target .device-data/pylib pytest tqdm``).
Exit status 0 when every row passes and the targets of the issue are met.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_DATA = REPO / ".device-data"
PYLIB = DEVICE_DATA / "pylib"

REAL_ENGINES = ("gpu", "gpu-cusparse", "cpu")
# Seconds each step may take: about 9 minutes if every one runs out, ~8 expected.
STEP_LIMITS = {"pytest": 120, "real gpu": 60, "real gpu-cusparse": 60, "real cpu": 45,
               "generated": 270}
TARGETS = {"real_te_s": 20.0, "real_speedup_over_cusparse": 10.0, "generated_te_s": 55.0}


def _environment():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(REPO)] + ([str(PYLIB)] if PYLIB.is_dir() else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _row(engine, configuration, inputs, seconds=None, te_s=None, passed=None, note=""):
    return {"engine": engine, "configuration": configuration, "inputs": inputs,
            "seconds": seconds, "te_s": te_s, "pass": passed, "note": note}


# ---------------------------------------------------------------- steps (child processes)

def _details(result):
    return ", ".join(f"{key} {value}" for key, value in result.details.items())


def _best_of(engine, network, inputs, repeat):
    results = [engine.infer(network, inputs) for _ in range(repeat)]
    return min(results, key=lambda result: result.infer_seconds), results


def step_real(args):
    """Real neuron1024 x 120, images tiled to ``args.inputs``, on ``args.engine``."""
    from graphchallenge import catalog, engines, network, runner

    cfg = catalog.config(1024, 120)
    available, reason = engines.availability(args.engine)
    if not available and args.engine == "cpu":  # a timing for comparison only
        return [_row("cpu", f"real {cfg.name}", args.inputs, note=f"not run: {reason}")]
    challenge = network.load_challenge(cfg, DEVICE_DATA)
    tile = max(1, math.ceil(args.inputs / challenge.n_inputs))
    inputs, truth = runner.tile_inputs(challenge.inputs, challenge.truth, tile)
    options = {"device": args.device} if args.engine.startswith("gpu") else {}
    engine = engines.get_engine(args.engine, **options)
    best, results = _best_of(engine, challenge.network, inputs, args.repeat)
    report = runner.make_report(challenge, inputs, truth, best, tile)
    note = (f"best of {len(results)}: " + ", ".join(f"{r.infer_seconds:.4f}" for r in results)
            + f" s (+{best.prepare_seconds:.2f} s preparation); rechecked "
            f"{best.rechecked_rows}; {_details(best)}")
    return [_row(args.engine, f"real {cfg.name}, {challenge.n_inputs} images x {tile}",
                 report.n_inputs, report.infer_seconds, report.edges_per_second / 1e12,
                 report.passed, note)]


def step_generated(args):
    """Generated RadiX-Net challenge: ``gpu`` on all inputs, ``gpu-cusparse`` truth on a subset."""
    from graphchallenge import catalog, synthetic
    from graphchallenge.engines.gpu import ColumnTableLayers, CusparseEngine, GpuEngine
    from graphchallenge.network import Network
    from graphchallenge.validate import validate

    neurons, n_layers = args.neurons, args.layers
    cfg = catalog.config(neurons, n_layers)
    started = time.perf_counter()
    layers = ColumnTableLayers(
        lambda k: synthetic.radixnet_column_indices(neurons, k + 1, seed=0), n_layers, neurons,
        synthetic.WEIGHT, cache=True)
    generated = Network(layers, cfg.bias, name=f"{cfg.name}-generated")
    inputs = synthetic.mnist_like_inputs(neurons, args.inputs, seed=0)
    print(f"generated {args.inputs:,} inputs in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    edges = layers.column_indices(0).shape[0] * neurons * n_layers
    fast, results = _best_of(GpuEngine(args.device), generated, inputs, args.repeat)
    print(f"gpu: {fast.infer_seconds:.3f} s (+{fast.prepare_seconds:.1f} s preparation)",
          file=sys.stderr)
    n_truth = min(args.truth_inputs, args.inputs)
    truth = CusparseEngine(args.device).infer(generated, inputs[:n_truth])
    subset = fast.categories[fast.categories <= n_truth]
    passed = bool(validate(subset, truth.categories).passed)
    configuration = f"generated {cfg.name}"
    times = ", ".join(f"{r.infer_seconds:.3f}" for r in results)
    return [
        _row("gpu", configuration, args.inputs, fast.infer_seconds,
             args.inputs * edges / fast.infer_seconds / 1e12, passed,
             f"best of {len(results)}: {times} s; {fast.categories.size} categories; agrees with "
             f"gpu-cusparse on the first {n_truth:,} inputs ({truth.categories.size} categories); "
             f"rechecked {fast.rechecked_rows}; {_details(fast)}"),
        _row("gpu-cusparse", configuration, n_truth, truth.infer_seconds,
             n_truth * edges / truth.infer_seconds / 1e12, None, "float64 truth for the subset"),
    ]


STEPS = {"real": step_real, "generated": step_generated}


def run_step(argv):
    """Child process: run one step and write its rows as JSON to ``--rows-out``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--rows-out", required=True)
    parser.add_argument("--engine", default="gpu")
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--inputs", type=int, default=60000)
    parser.add_argument("--truth-inputs", type=int, default=2000)
    parser.add_argument("--neurons", type=int, default=65536)
    parser.add_argument("--layers", type=int, default=1920)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows = STEPS[args.step](args)
    Path(args.rows_out).write_text(json.dumps(rows))
    return 0


# ---------------------------------------------------------------- the parent

def _spawn(label, command, timeout, rows_out=None):
    """Run a child under ``timeout`` seconds, echoing its output.

    Returns ``(rows or None, output, error line or None)``.
    """
    print(f"\n== {label} (limit {timeout} s)", flush=True)
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=REPO, env=_environment(), timeout=timeout,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        print(output or "", flush=True)
        return None, output or "", f"stopped after {timeout} s"
    print(completed.stdout, end="", flush=True)
    print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    if completed.returncode != 0:
        last = completed.stdout.strip().splitlines()[-1:] or [""]
        return None, completed.stdout, f"exit status {completed.returncode}: {last[0][:200]}"
    rows = json.loads(Path(rows_out).read_text()) if rows_out is not None else None
    return rows, completed.stdout, None


def _pytest_row(output, error):
    """The pytest row: PASS when it exited 0 and ran at least one test."""
    summary = [line for line in output.splitlines()
               if re.search(r"\d+ (passed|failed|skipped)", line)]
    note = summary[-1].strip("= ") if summary else "no summary"
    ran = bool(re.search(r"\d+ passed", note))
    return _row("pytest -m gpu", "tests/test_gpu.py tests/test_engines.py", None,
                passed=error is None and ran, note=note if error is None else f"{error}; {note}")


def _device_line():
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        runtime = cupy.cuda.runtime
        return (f"{name}, CuPy {cupy.__version__}, CUDA runtime {runtime.runtimeGetVersion()}, "
                f"driver {runtime.driverGetVersion()}")
    except Exception as exc:  # report, do not stop: the steps say the rest
        return f"no usable CUDA device: {str(exc).splitlines()[0]}"


def _format(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows):
    """The markdown table of the rows."""
    lines = ["| engine | configuration | inputs | seconds | TE/s | PASS |",
             "|---|---|---:|---:|---:|---|"]
    for row in rows:
        verdict = {True: "PASS", False: "FAIL", None: "-"}[row["pass"]]
        inputs = "-" if row["inputs"] is None else f"{row['inputs']:,}"
        lines.append(f"| {row['engine']} | {row['configuration']} | {inputs} | "
                     f"{_format(row['seconds'], 4)} | {_format(row['te_s'], 2)} | {verdict} |")
    return "\n".join(lines)


def targets(rows):
    """The issue's targets, each ``(description, met)``."""
    def find(engine, prefix):
        return next((r for r in rows if r["engine"] == engine and r["seconds"]
                     and r["configuration"].startswith(prefix)), None)

    real_gpu, real_cusparse = find("gpu", "real"), find("gpu-cusparse", "real")
    generated = find("gpu", "generated")
    checks = []
    checks.append((f"real gpu >= {TARGETS['real_te_s']} TE/s and PASS",
                   bool(real_gpu and real_gpu["pass"]
                        and real_gpu["te_s"] >= TARGETS["real_te_s"])))
    speedup = (real_cusparse["seconds"] / real_gpu["seconds"]
               if real_gpu and real_cusparse else None)
    checks.append((f"real gpu >= {TARGETS['real_speedup_over_cusparse']}x gpu-cusparse"
                   + (f" (measured {speedup:.1f}x)" if speedup else ""),
                   bool(speedup and speedup >= TARGETS["real_speedup_over_cusparse"])))
    checks.append((f"generated gpu >= {TARGETS['generated_te_s']} TE/s and PASS",
                   bool(generated and generated["pass"]
                        and generated["te_s"] >= TARGETS["generated_te_s"])))
    return checks


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STEPS:
        return run_step(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0, metavar="ID")
    parser.add_argument("--skip-tests", action="store_true", help="benchmark only")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (6,000 real inputs; generated 4096 x 120 on 6,000)")
    args = parser.parse_args(argv)

    out = Path(os.environ.get("OUT") or REPO / "gpu_check_results")
    out.mkdir(parents=True, exist_ok=True)
    device = _device_line()
    print(f"device: {device}", flush=True)
    python = sys.executable
    rows, started = [], time.perf_counter()
    scale = 10 if args.quick else 1

    if not args.skip_tests:
        _, output, error = _spawn("pytest -m gpu", [
            python, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
            "tests/test_gpu.py", "tests/test_engines.py"], timeout=STEP_LIMITS["pytest"])
        rows.append(_pytest_row(output, error))

    steps = [(f"real {engine}", ["real", "--engine", engine, "--repeat",
                                 "1" if engine == "cpu" else "3"], STEP_LIMITS[f"real {engine}"])
             for engine in REAL_ENGINES]
    generated = ["generated", "--repeat", "1"] + (["--neurons", "4096", "--layers", "120"]
                                                  if args.quick else [])
    steps.append(("generated", generated, STEP_LIMITS["generated"]))
    for label, step, timeout in steps:
        rows_out = out / f"rows-{label.replace(' ', '-')}.json"
        rows_out.unlink(missing_ok=True)
        command = [python, str(Path(__file__).resolve()), *step, "--rows-out", str(rows_out),
                   "--device", str(args.device), "--inputs", str(60000 // scale)]
        produced, _, error = _spawn(label, command, timeout, rows_out)
        if produced is None:
            engine = step[2] if step[0] == "real" else "gpu"
            rows.append(_row(engine, label, 60000 // scale, passed=False, note=error))
        else:
            rows.extend(produced)

    checks = targets(rows)
    markdown = "\n".join([f"GPU check on {device}", "", table(rows), "",
                          *[f"- {'met' if met else 'NOT met'}: {what}" for what, met in checks],
                          "", *[f"- {r['engine']}, {r['configuration']}: {r['note']}"
                                for r in rows if r["note"]],
                          "", f"total {time.perf_counter() - started:.0f} s"])
    print("\n" + markdown, flush=True)
    (out / "gpu_check.md").write_text(markdown + "\n")
    (out / "gpu_check.json").write_text(json.dumps(
        {"device": device, "rows": rows, "targets": [{"target": what, "met": met}
                                                     for what, met in checks]}, indent=1) + "\n")
    succeeded = all(row["pass"] is not False for row in rows) and all(met for _, met in checks)
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
