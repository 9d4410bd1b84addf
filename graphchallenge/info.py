"""What this installation can do: versions, engines, GPU, MPI, data found."""

import importlib
import os
import platform
import sys

from . import __version__, catalog, engines, layout, synthetic
from .errors import DataError


def _version(module_name):
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None
    return getattr(module, "__version__", "installed")


def _gpus():
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
        names = []
        for device in range(count):
            props = cupy.cuda.runtime.getDeviceProperties(device)
            names.append(props["name"].decode() if isinstance(props["name"], bytes) else props["name"])
        return names
    except Exception:  # noqa: BLE001 - no CuPy, no driver or no device: no GPU
        return []


def _mpi():
    from . import parallel

    if not parallel.mpi_available():
        return {"available": False, "ranks": 1}
    comm, rank, size = parallel.world()
    details = {"available": True, "ranks": size, "rank": rank}
    if comm is not None:
        from mpi4py import MPI

        details["library"] = MPI.Get_library_version().splitlines()[0].strip()
    return details


def _rebuilt(cfg, root):
    try:
        return synthetic.generated_network(cfg, root) is not None
    except DataError:
        return False


def _data(root):
    found = []
    for cfg in catalog.all_configs():
        network_dir = layout.find_network_dir(cfg, root)
        n_layers = 0
        if _rebuilt(cfg, root):
            n_layers = cfg.layers  # a binary generated challenge: layers rebuilt from its record
        elif network_dir is not None:
            while n_layers < cfg.layers and (network_dir / cfg.layer_name(n_layers + 1)).is_file():
                n_layers += 1
        inputs = layout.find_inputs(cfg, root)
        truth = layout.find_truth(cfg, root)
        if n_layers == cfg.layers or (cfg.layers == catalog.LAYERS[0] and (n_layers or inputs)):
            found.append({"config": cfg.name, "layers_present": n_layers,
                          "inputs": str(inputs) if inputs else None,
                          "truth": str(truth) if truth else None,
                          "runnable": bool(n_layers == cfg.layers and inputs and truth)})
    return found


def collect(data_dir=None):
    """A dict describing this installation (what ``graphchallenge info --json`` prints)."""
    root = layout.data_dir(data_dir)
    return {
        "graphchallenge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "libraries": {name: _version(name) for name in
                      ("numpy", "scipy", "pyarrow", "numba", "cupy", "graphblas", "mpi4py",
                       "matplotlib", "tqdm", "requests")},
        "engines": {name: {"available": ok, "reason": reason}
                    for name, (ok, reason) in engines.available_engines().items()},
        "auto_engine": engines.resolve("auto"),
        "gpus": _gpus(),
        "mpi": _mpi(),
        "data_dir": str(root),
        "data_dir_exists": root.is_dir(),
        "data": _data(root) if root.is_dir() else [],
    }


def text(info):
    """The human-readable form of :func:`collect`'s dict."""
    lines = [f"graphchallenge {info['graphchallenge']}  (Python {info['python']}, "
             f"{info['cpus']} CPUs, {info['platform']})", "", "libraries"]
    for name, version in info["libraries"].items():
        lines.append(f"  {name:<12} {version or '-'}")
    lines += ["", f"engines (auto -> {info['auto_engine']})"]
    for name, state in info["engines"].items():
        lines.append(f"  {name:<13} {'yes' if state['available'] else 'no  ' + state['reason']}")
    lines += ["", f"GPUs         {', '.join(info['gpus']) or 'none'}"]
    mpi = info["mpi"]
    if not mpi["available"]:
        lines.append("MPI          no (pip install graphchallenge[mpi])")
    else:
        lines.append(f"MPI          mpi4py available; {mpi['ranks']} rank(s) running"
                     + (f" ({mpi['library']})" if "library" in mpi else
                        " (start under mpiexec or srun to use several)"))
    lines += ["", f"data in {info['data_dir']}"]
    if not info["data_dir_exists"]:
        lines.append("  the folder does not exist (--data-dir, $GRAPHCHALLENGE_DATA, or ./data)")
    elif not info["data"]:
        lines.append("  nothing found (graphchallenge download ... or graphchallenge generate ...)")
    for entry in info["data"]:
        state = "ready" if entry["runnable"] else "incomplete"
        lines.append(f"  {entry['config']:<18} {entry['layers_present']} layers, inputs "
                     f"{'yes' if entry['inputs'] else 'no'}, truth {'yes' if entry['truth'] else 'no'}"
                     f"  [{state}]")
    return "\n".join(lines)
