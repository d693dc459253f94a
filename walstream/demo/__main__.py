"""``python -m walstream.demo``: see :mod:`walstream.demo`."""

import sys

from walstream.demo import main

sys.exit(main())
