"""FSSL: Fine-tune Structured Sparsity Learning (Wang et al., HPEC 2019) on the challenge networks.

One method, three modules, each depending only on the ones before it:

* :mod:`~graphchallenge.fssl.ops`: array kernels, written once for numpy
  and CuPy (the only code that knows which);
* :mod:`~graphchallenge.fssl.training`: the method itself (group lasso on
  neurons, pruning, fine-tuning) and why each choice was made;
* :mod:`~graphchallenge.fssl.experiment`: the experiment behind
  ``graphchallenge finetune`` (split, baselines, timing, reports, figures).

The public names of training and experiment are re-exported here.
``graphchallenge.finetune`` is the same set of names under the module's
earlier name.

>>> from graphchallenge import catalog, fssl
>>> report = fssl.finetune_challenge(catalog.config(1024, 120), "fssl-1024", "data",
...                                  options=fssl.FsslOptions(lam=0.0003))   # doctest: +SKIP
>>> report.compression_rate, report.f1                                      # doctest: +SKIP
"""

from .experiment import (FinetuneReport, FsslExperiment, SweepReport, finetune_challenge,
                         magnitude_prune, meets_target, plot_finetune, plot_sweep,
                         reachable_neurons, stratified_split, time_networks)
from .training import (FINETUNE_INPUTS, GROUPINGS, EpochRecord, FsslOptions, FsslResult,
                       NothingLeft, prune_network, train_fssl)

__all__ = ["FsslOptions", "FsslResult", "EpochRecord", "FsslExperiment", "FinetuneReport",
           "SweepReport", "GROUPINGS", "FINETUNE_INPUTS", "NothingLeft", "train_fssl",
           "prune_network", "finetune_challenge", "magnitude_prune", "meets_target",
           "plot_finetune", "plot_sweep", "reachable_neurons", "stratified_split", "time_networks"]
