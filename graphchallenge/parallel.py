"""Data-parallel runs under MPI: ``mpiexec -n P graphchallenge run ...``.

Every rank loads the network itself (the binary cache on disk is shared, so
only the first load parses text), takes a contiguous block of the inputs,
runs its engine on it, and rank 0 gathers the categories (``Gatherv``),
validates and reports. Weights are replicated, inputs are split: the layout
the 2020 champion used across hundreds of GPUs.

The timed region is inference only: every rank warms its engine up on one
input (JIT compilation, uploads), waits at a barrier, and runs its block;
the reported time is the slowest rank's inference.

Any failure on any rank (missing file, bad data, no GPU, a mismatch between
ranks' options) is agreed on collectively after each phase, so every rank
stops promptly and rank 0 prints one message: no rank is left waiting in a
collective call.
"""

import logging
import os

import numpy as np
import scipy.sparse as sp

from . import engines, io, runner
from .engines.base import Engine, InferenceResult
from .errors import GraphChallengeError

log = logging.getLogger(__name__)

# Set by the MPI launchers we know (MPICH/hydra and Intel MPI, Open MPI, PMIx, Slurm's srun).
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                            "SLURM_NTASKS")
_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
                         "SLURM_LOCALID")


_LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def _from_environment(names):
    """The first of the environment variables ``names`` that holds a number, or None."""
    for name in names:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return None


def launched_rank():
    """This process's rank as the launcher announced it (0 when not under a launcher)."""
    if launched_size() <= 1:
        return 0
    return _from_environment(_LAUNCHER_RANK_VARIABLES) or 0


def launched_size():
    """Number of processes the launcher started (1 when not under an MPI launcher)."""
    return _from_environment(_LAUNCHER_SIZE_VARIABLES) or 1


def mpi_available():
    """True when mpi4py can be imported (without initialising MPI)."""
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


def world():
    """``(comm, rank, size)``; ``(None, 0, 1)`` outside an MPI launch.

    MPI is initialised only when a launcher started several processes, so a
    plain ``graphchallenge run`` never pays for (or depends on) MPI.
    """
    if launched_size() <= 1:
        return None, 0, 1
    try:
        from mpi4py import MPI
    except ImportError:
        raise GraphChallengeError(
            "started by an MPI launcher but mpi4py is not installed: "
            "pip install graphchallenge[mpi]") from None
    comm = MPI.COMM_WORLD
    return comm, comm.Get_rank(), comm.Get_size()


def local_rank(comm=None):
    """This process's index among the ranks on its node."""
    rank = _from_environment(_LOCAL_RANK_VARIABLES)
    if rank is not None:
        return rank
    if comm is None:
        return 0
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()


def block(n_items, rank, size):
    """``(start, stop)`` of rank's contiguous share of ``n_items`` (sizes differ by <= 1)."""
    base, extra = divmod(n_items, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class _Collective:
    """Run a phase on every rank and agree on failure: all continue or all stop."""

    def __init__(self, comm):
        self.comm = comm

    def __call__(self, phase, function, *args, **kwargs):
        value, error = None, None
        try:
            value = function(*args, **kwargs)
        except GraphChallengeError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure must reach every rank
            error = f"{type(exc).__name__}: {exc}"
        errors = self.comm.allgather(error)
        failed = [(rank, message) for rank, message in enumerate(errors) if message]
        if failed:
            rank, message = failed[0]
            more = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
            raise GraphChallengeError(f"rank {rank} failed while {phase}{more}: {message}")
        return value


def _node_size(comm):
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()


def _engine_options(name, engine_options, comm):
    """Options for engine ``name`` on this rank: one GPU per rank, by local rank; the
    CPU engine's threads shared out among the ranks of a node."""
    options = dict(engine_options or {})
    if name.startswith("gpu") and "device" not in options:
        import cupy

        options["device"] = local_rank(comm) % cupy.cuda.runtime.getDeviceCount()
    if name == "cpu" and "threads" not in options:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        options["threads"] = max(1, cpus // _node_size(comm))
    return options


def _check_agreement(comm, key, kind):
    kinds = comm.allgather(kind)
    if len(set(kinds)) > 1:
        raise GraphChallengeError(
            "mixing CPU and GPU ranks is not supported: every rank must run the same "
            f"kind of engine (got {', '.join(sorted(set(kinds)))})")
    keys = comm.allgather(key)
    if any(k != keys[0] for k in keys):
        raise GraphChallengeError(
            f"ranks disagree on the run (rank 0: {keys[0]}, others differ); "
            "start every rank with the same options")


def _kind(names):
    return "gpu" if any(name.startswith("gpu") for name in names) else "cpu"


class DistributedEngine(Engine):
    """An engine run data-parallel over the MPI ranks.

    Each rank infers its contiguous block of the inputs; the categories are
    gathered on every rank; the time is the slowest rank's inference, from
    a barrier that follows an untimed warm-up (JIT compilation, uploads).
    """

    def __init__(self, engine, comm):
        self.engine = engine
        self.comm = comm
        self.name = engine.name
        self.description = engine.description
        self._collective = _Collective(comm)
        self._warm = None

    def prepare(self, network):
        """Untimed per-network work of every rank (the wrapped engine's, and a warm-up)."""
        prepare = getattr(self.engine, "prepare", None)
        if prepare is not None:
            self._collective("preparing", prepare, network)
        return self._warm_up(network, None)

    def _warm_up(self, network, inputs):
        if self._warm is network:
            return 0.0
        if inputs is None:
            inputs = sp.csr_matrix((1, network.n_features))
        result = self._collective("warming up", self.engine.infer, network,
                                  io.row_block(inputs, 0, 1))
        self._warm = network
        return result.prepare_seconds + result.infer_seconds

    def infer(self, network, inputs, progress=False):
        comm, rank = self.comm, self.comm.Get_rank()
        warm_seconds = self._warm_up(network, inputs)
        start, stop = block(inputs.shape[0], rank, comm.Get_size())
        comm.Barrier()
        result = self._collective("running inference", self.engine.infer, network,
                                  io.row_block(inputs, start, stop),
                                  progress=progress and rank == 0)
        local = (result.categories + start).astype(np.int64)
        counts = np.array(comm.allgather(local.size), dtype=np.int64)
        categories = np.empty(int(counts.sum()), dtype=np.int64)
        comm.Allgatherv(local, (categories, counts))
        seconds = comm.allgather(result.infer_seconds)
        return InferenceResult(
            categories=np.sort(categories), infer_seconds=max(seconds), engine=self.name,
            prepare_seconds=max(comm.allgather(result.prepare_seconds + warm_seconds)),
            rechecked_rows=sum(comm.allgather(result.rechecked_rows)),
            details={"ranks": comm.Get_size(), "rank_seconds": seconds})


def run(cfg, data_dir=None, engine="auto", n_inputs=None, tile=1, network_dir=None,
        progress=False, engine_options=None, truth_inputs=None):
    """:func:`graphchallenge.runner.run`, data-parallel over the MPI ranks.

    Serial outside an MPI launch. Returns the RunReport on rank 0 and None
    on the other ranks.
    """
    comm, rank, size = world()
    if comm is None:
        return runner.run(cfg, data_dir, engine, n_inputs, tile, network_dir, progress,
                          engine_options, truth_inputs)
    collective = _Collective(comm)
    name = collective("choosing the engine", engines.resolve, engine)
    collective("comparing options", _check_agreement, comm,
               (cfg.name, name, n_inputs, tile, str(network_dir), truth_inputs), _kind([name]))
    options = collective("choosing the device", _engine_options, name, engine_options, comm)
    engine_obj = collective("starting the engine", engines.get_engine, name, **options)
    challenge, challenge_edges = collective("loading the data", runner.load, cfg, data_dir,
                                            n_inputs, network_dir, truth_inputs is None)
    if truth_inputs is not None:
        challenge.truth = None
    report = runner.infer_and_validate(challenge, DistributedEngine(engine_obj, comm), tile,
                                       progress, challenge_edges=challenge_edges,
                                       truth_inputs=truth_inputs)
    return report if rank == 0 else None


def bench(cfg, data_dir=None, engine_names=("cpu", "reference", "graphblas"), repeat=3, tile=1,
          n_inputs=None, network_dir=None, progress=False, truth_inputs=None):
    """:func:`graphchallenge.bench.bench` with every engine data-parallel over the MPI ranks.

    Serial outside an MPI launch. Returns the BenchReport on rank 0 and
    None on the other ranks.
    """
    from . import bench as bench_mod

    comm, rank, _ = world()
    collective = _Collective(comm) if comm is not None else None
    if comm is not None:
        collective("comparing options", _check_agreement, comm,
                   (cfg.name, tuple(engine_names), repeat, tile, n_inputs, str(network_dir),
                    truth_inputs), _kind(engine_names))
        challenge, challenge_edges = collective("loading the data", runner.load, cfg, data_dir,
                                                n_inputs, network_dir, truth_inputs is None)

        def make_engine(name):
            options = _engine_options(name, None, comm)
            return DistributedEngine(engines.get_engine(name, **options), comm)

        report = collective("benchmarking", bench_mod.bench, challenge, engine_names, repeat,
                            tile, progress and rank == 0, challenge_edges, make_engine,
                            truth_inputs)
        report.ranks = comm.Get_size()
        return report if rank == 0 else None
    challenge, challenge_edges = runner.load(cfg, data_dir, n_inputs, network_dir,
                                             truth_inputs is None)
    return bench_mod.bench(challenge, engine_names, repeat, tile, progress, challenge_edges,
                           truth_inputs=truth_inputs)


def exit_status(comm, status):
    """Rank 0's exit status, shared with every rank (so mpiexec reports one status)."""
    if comm is None:
        return status
    return comm.bcast(status, root=0)
