"""`python -m xbar.cli ...`, as the `xbar` script."""

import sys

from . import main

sys.exit(main())
