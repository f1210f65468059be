"""The `xbar` command line: thin argument parsing over the library; errors print one clear line.

One module per command group (``devices``: devices, mvm-demo, data; ``train``: train, baseline,
eval, demo; ``sweep``: sweep, report; ``prune``: prune, cost; ``interop``: import, export) over
:mod:`xbar.cli.options` (Field specs to options, value parsers, progress, tables, JSON). The
library never imports this package.
"""

from .main import build_parser, main
from .train import parse_train_config, train_config

__all__ = ["build_parser", "main", "parse_train_config", "train_config"]
