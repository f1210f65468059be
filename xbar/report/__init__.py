"""Figures and tables from a sweep store (`xbar report`).

What is drawn follows what the spec swept (the grid keys stored with the file):

- accuracy vs bits (or vs the first numeric swept key), one line per rule (else update, else
  network), panels range x quant where those were swept — the seed study's figures; one figure per
  combination of the remaining swept keys (network, dataset, ...); mean and min-max over seeds;
- accuracy vs each swept device parameter (`device.<field>` grid keys), e.g. read noise, with a
  table of the same numbers;
- per-epoch test-accuracy curves of every group;
- final conductance histograms per layer of the best run of every line;
- pivot tables (Markdown and CSV) like the seed study's Tables 6.1/6.2: rows network x rule,
  columns bits, one table per dataset x range x quant.

Every title names the network, dataset and device where one figure holds one of each; accuracy
axes show chance level (100 / classes); swept values spanning two decades or more get a log axis;
pruning plots start each line at the unpruned network. Runs still in the store's journal (a sweep
running, or killed before its merge) are included.

The output folder keeps a list of what the report wrote (`.xbar-report.json`): the next report
into it replaces exactly those files, and never touches others.

`compare(A, B)` sets two stores side by side: runs matched by their resolved config.

Modules: :mod:`~xbar.report.layout` (output folder, plan, titles), :mod:`~xbar.report.figures`,
:mod:`~xbar.report.tables`, :mod:`~xbar.report.build` (report, compare).
"""


from .build import compare, report
from .layout import (
    CONTEXT_KEYS,
    LINE_KEYS,
    LOG_DECADES,
    MANIFEST,
    METRIC,
    OWN_NAMES,
    PANEL_KEYS,
    RESULT_X,
    UNPRUNED_X,
    OutputFolder,
)

__all__ = ["CONTEXT_KEYS", "LINE_KEYS", "LOG_DECADES", "MANIFEST", "METRIC", "OWN_NAMES", "PANEL_KEYS", "RESULT_X",
           "UNPRUNED_X", "OutputFolder", "compare", "report"]
