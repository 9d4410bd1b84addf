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
from dataclasses import dataclass

import numpy as np

from . import engines, runner
from .engines.base import InferenceResult
from .errors import GraphChallengeError

log = logging.getLogger(__name__)

# Set by the MPI launchers we know (MPICH/hydra and Intel MPI, Open MPI, PMIx, Slurm's srun).
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                            "SLURM_NTASKS")
_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
                         "SLURM_LOCALID")


_LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def launched_rank():
    """This process's rank as the launcher announced it (0 when not under a launcher)."""
    if launched_size() <= 1:
        return 0
    for name in _LAUNCHER_RANK_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


def launched_size():
    """Number of processes the launcher started (1 when not under an MPI launcher)."""
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


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
    for name in _LOCAL_RANK_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
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

    def __init__(self, comm, rank):
        self.comm, self.rank = comm, rank

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


@dataclass
class _Plan:
    engine: str
    options: dict


def _choose_engine(engine, engine_options, comm, rank):
    name = engines.resolve(engine)
    options = dict(engine_options or {})
    if name.startswith("gpu"):
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        if "device" not in options:
            options["device"] = local_rank(comm) % count
    return _Plan(name, options)


def _check_agreement(comm, key):
    keys = comm.allgather(key)
    if any(k != keys[0] for k in keys):
        kinds = {k[-1] for k in keys}
        if len(kinds) > 1:
            raise GraphChallengeError(
                "mixing CPU and GPU ranks is not supported: every rank must run the same "
                f"kind of engine (got {', '.join(sorted(kinds))})")
        raise GraphChallengeError(
            f"ranks disagree on the run (rank 0: {keys[0][:-1]}, others differ); "
            "start every rank with the same options")


def run(cfg, data_dir=None, engine="auto", n_inputs=None, tile=1, network_dir=None,
        progress=False, engine_options=None):
    """:func:`graphchallenge.runner.run`, data-parallel over the MPI ranks.

    Returns the RunReport on rank 0 and None on the other ranks.
    """
    comm, rank, size = world()
    if comm is None:
        return runner.run(cfg, data_dir, engine, n_inputs, tile, network_dir, progress,
                          engine_options)
    collective = _Collective(comm, rank)
    plan = collective("choosing the engine", _choose_engine, engine, engine_options, comm, rank)
    kind = "gpu" if plan.engine.startswith("gpu") else "cpu"
    collective("comparing options", _check_agreement, comm,
               (cfg.name, plan.engine, n_inputs, tile, str(network_dir), kind))
    challenge, challenge_edges = collective("loading the data", runner.load, cfg, data_dir,
                                            n_inputs, network_dir)
    inputs, truth = runner.tile_inputs(challenge.inputs, challenge.truth, tile)
    start, stop = block(inputs.shape[0], rank, size)
    mine = inputs[start:stop]
    engine_obj = collective("starting the engine", engines.get_engine, plan.engine, **plan.options)
    # Warm-up outside the timer: JIT compilation, device uploads, per-network preparation.
    warm = collective("warming up", engine_obj.infer, challenge.network, inputs[:1])
    comm.Barrier()
    result = collective("running inference", engine_obj.infer, challenge.network, mine,
                        progress=progress and rank == 0)
    local = (result.categories + start).astype(np.int64)
    counts = np.array(comm.allgather(local.size), dtype=np.int64)
    gathered = np.empty(int(counts.sum()), dtype=np.int64) if rank == 0 else None
    comm.Gatherv(local, (gathered, counts) if rank == 0 else None, root=0)
    seconds = comm.allgather(result.infer_seconds)
    rechecked = comm.allreduce(result.rechecked_rows)
    prepare = comm.allreduce(result.prepare_seconds + warm.prepare_seconds + warm.infer_seconds,
                             op=_max_op())
    if rank != 0:
        return None
    combined = InferenceResult(categories=np.sort(gathered), infer_seconds=max(seconds),
                               engine=result.engine, prepare_seconds=prepare,
                               rechecked_rows=rechecked)
    report = runner.make_report(challenge, inputs, truth, combined, tile, challenge_edges)
    report.ranks = size
    report.rank_seconds = seconds
    return report


def _max_op():
    from mpi4py import MPI

    return MPI.MAX


def exit_status(comm, status):
    """Rank 0's exit status, shared with every rank (so mpiexec reports one status)."""
    if comm is None:
        return status
    return comm.bcast(status, root=0)
