"""``graphchallenge info``: versions, engines, GPUs, MPI and the data found."""

from .. import info, parallel
from . import EXIT_OK, _common

HELP = "show versions, available engines, GPUs, MPI, and which challenges the data folder holds"


def add_arguments(parser):
    _common.add_data_dir(parser)
    _common.add_json(parser)


def main(args):
    details = info.collect(_common.resolve_data_dir(args))
    if parallel.launched_rank() == 0:
        _common.emit(args, details, info.text(details))
    return EXIT_OK
