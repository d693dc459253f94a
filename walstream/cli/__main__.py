"""``python -m walstream.cli``: the ``walstream`` command."""

import sys

from walstream.cli import main

sys.exit(main())
