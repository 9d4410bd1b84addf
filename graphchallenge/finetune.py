"""The FSSL library under its earlier name: ``graphchallenge.finetune`` is :mod:`graphchallenge.fssl`.

FSSL lives in the :mod:`graphchallenge.fssl` package (training, array
kernels, experiment). This module only re-exports that package's public
names, so that calls written against it, such as
``graphchallenge.finetune.finetune_challenge``, keep working; new code
should import :mod:`graphchallenge.fssl`.
"""

from .fssl import (FINETUNE_INPUTS, GROUPINGS, EpochRecord, FinetuneReport,  # noqa: F401
                   FsslExperiment, FsslOptions, FsslResult, NothingLeft, SweepReport,
                   finetune_challenge, magnitude_prune, meets_target, plot_finetune, plot_sweep,
                   prune_network, reachable_neurons, stratified_split, time_networks, train_fssl)
from .fssl import __all__  # noqa: F401
