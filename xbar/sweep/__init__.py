"""Experiment grids: a TOML spec expanded into runs, run in parallel, stored in one HDF5 file.

A spec (``experiments/*.toml``)::

    name = "quickstart"
    description = "..."
    seeds = [1, 2]                 # optional; default [base seed]
    missing_data = "skip"          # optional: "error" (default) or "skip" runs whose dataset is absent

    [base]                         # any `xbar train` option (TrainConfig field)
    dataset = "digits"
    epochs = 30

    [grid]                         # lists, expanded as a cartesian product in this order
    bits = [2, 3, 4]
    update = ["qat", "stochastic"]
    "device.read_noise_rel" = [0.0, 0.02]   # device fields: become the run's device_set

    [[exclude]]                    # optional: drop runs matching every key of a table
    update = "stochastic"          # a list matches any of its values
    bits = 2

Every run is validated (resolved) before any work starts; a run's identity is a stable hash of its
resolved config, so re-running a sweep skips what its store already holds (see xbar.store).

Modules: :mod:`~xbar.sweep.spec` (Experiment, Run), :mod:`~xbar.sweep.worker` (one run, time
estimates), :mod:`~xbar.sweep.execute` (run_sweep: workers or Dask, progress, the store's writer).
"""


from ..store import NOT_IDENTITY, run_key
from .execute import (
    Progress,
    exit_with_parent,
    filter_runs,
    parse_only,
    run_sweep,
)
from .groups import STACK_MODES, Group, plan_groups
from .spec import (
    COMMANDS,
    DEVICE_PREFIX,
    HIST_BINS,
    MISSING_DATA,
    SPEC_KEYS,
    Experiment,
    Run,
    prune_fields,
)
from .worker import (
    diverged_epoch,
    environment,
    estimate_seconds,
    fmt_time,
    layer_probe,
    run_group,
    run_one,
)

__all__ = [
    'COMMANDS',
    'DEVICE_PREFIX',
    'HIST_BINS',
    'MISSING_DATA',
    'NOT_IDENTITY',
    'SPEC_KEYS',
    'STACK_MODES',
    'Experiment',
    'Group',
    'Progress',
    'Run',
    'diverged_epoch',
    'environment',
    'estimate_seconds',
    'exit_with_parent',
    'filter_runs',
    'fmt_time',
    'layer_probe',
    'parse_only',
    'plan_groups',
    'prune_fields',
    'run_group',
    'run_key',
    'run_one',
    'run_sweep',
]
