"""``python -m walstream.startup``: the command line of :mod:`walstream.cli.startup`."""

import sys

from walstream.cli.startup import main

sys.exit(main())
