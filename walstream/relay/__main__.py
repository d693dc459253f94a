"""``python -m walstream.relay``: the command line of :mod:`walstream.cli.relay`."""

import os
import sys

from walstream.cli.relay import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
