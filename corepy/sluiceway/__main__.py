"""`python -m sluiceway ...`: the same command line as the `sluiceway` script."""

import sys

from .cli import main

sys.exit(main())
