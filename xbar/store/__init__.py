"""The sweep store: one HDF5 file of finished runs, written by one process, safe against kills.

Schema (format "xbar-store", version 1)::

    /                       attrs: format, version, spec (JSON), spec_hash, spec_file, created, xbar_version
    /runs/<key>/            one group per run; key = run_key(config), a stable hash of the resolved config
        attrs:  config (JSON of the resolved TrainConfig; pruning sweeps add command = "prune" and the
                PruneConfig fields), point (JSON of the grid values of this run), metrics (JSON of
                extra final results: pruning's tiles, energy_pj, accuracy_before, ... before/after),
                key, status ("ok" | "stopped" | "diverged" | "error"), message, seed, test_accuracy,
                train_accuracy (NaN when not measured or not ok), wall_seconds, train_seconds,
                diverged_epoch (status "diverged" only: the epoch the loss exploded in),
                xbar_version, numpy_version, numba_version, python, host, finished (UTC ISO time)
        history/<name>      per-epoch float64 vectors: epoch, test_accuracy, train_accuracy (a full
                            pass after the epoch, if eval_train), step_accuracy (running accuracy of
                            the epoch's batches), loss, test_loss, step_loss, seconds, lr (NaN where
                            not measured)
        layers/<name>       (epochs, layers) float64: w_min, w_max (stored weights), g_min, g_max
                            (programmed conductances in µS, NaN for layers without a crossbar)
        hist/<i>/counts     final conductance histogram of layer i (all devices of the layer), int64
        hist/<i>/edges      its bin edges in µS (counts + 1)
        traceback           (status "error" only) the worker's traceback, a string

Crash safety: workers never touch the file. Finished runs go first to a journal folder beside it
(`<file>.journal/<key>.json`, each written to a temporary name and renamed). The writer merges
journal entries into a copy of the store and swaps it in with an atomic rename, so the store on
disk is always a complete, readable file; a kill (even SIGKILL) at any moment loses at most the
runs in flight, and the next start merges whatever the journal still holds. Readers (`load`,
`history`, `xbar report`) see the journal's finished runs too, before they are merged.

Damage: a journal entry that cannot be stored (torn, `{}`, no config, a key that is not its
config's) is moved to `<file>.journal/bad/` with a warning, and its run is done again. Stores
are written with HDF5's checksummed metadata (format 1.10), Fletcher-32 checksums on every
array and a SHA-256 digest of each run's attributes (HDF5 keeps many attributes in dense
storage, which it does not checksum), so flipped bits are found by :func:`verify` and reported
with the run group they hit.

Modules: :mod:`~xbar.store.journal` (run keys, the journal, cleanup), :mod:`~xbar.store.write`
(create, merge, combine), :mod:`~xbar.store.read` (info, verify, load, history, histograms).
"""

from .journal import (
    BAD_DIR,
    FORMAT,
    HISTORY_KEYS,
    KEY_PATTERN,
    LAYER_KEYS,
    LIBVER,
    NEUTRAL_DEFAULTS,
    NOT_IDENTITY,
    NUMBERS,
    STATUSES,
    VERSION,
    StoreError,
    Warn,
    bad_entry,
    check_record,
    cleanup,
    h5py_module,
    is_number,
    journal_dir,
    pending,
    read_entry,
    read_journal,
    run_key,
    supersedes,
    warn_stderr,
    write_journal,
    writer_alive,
)
from .read import (
    DAMAGED_ADVICE,
    check_writable,
    histograms,
    history,
    info,
    load,
    open_store,
    records,
    stored_keys,
    verify,
)
from .write import (
    combine,
    create,
    histograms_of,
    merge,
    run_arrays,
)

__all__ = ['BAD_DIR', 'DAMAGED_ADVICE', 'FORMAT', 'HISTORY_KEYS', 'KEY_PATTERN', 'LAYER_KEYS', 'LIBVER', 'NEUTRAL_DEFAULTS', 'NOT_IDENTITY', 'NUMBERS', 'STATUSES', 'VERSION', 'StoreError', 'Warn', 'bad_entry', 'check_record', 'check_writable', 'cleanup', 'combine', 'create', 'h5py_module', 'histograms', 'histograms_of', 'history', 'info', 'is_number', 'journal_dir', 'load', 'merge', 'open_store', 'pending', 'read_entry', 'read_journal', 'records', 'run_arrays', 'run_key', 'stored_keys', 'supersedes', 'verify', 'warn_stderr', 'write_journal', 'writer_alive']
