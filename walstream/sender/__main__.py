"""``python -m walstream.sender``: the command line of :mod:`walstream.cli.send`."""

import sys

from walstream.cli.send import main

sys.exit(main())
