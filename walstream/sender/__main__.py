"""``python -m walstream.sender``."""

import sys

from walstream.sender import main

sys.exit(main())
