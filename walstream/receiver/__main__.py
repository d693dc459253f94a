"""``python -m walstream.receiver``: the command line of :mod:`walstream.cli.receive`."""

import os
import sys

from walstream.cli.receive import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
