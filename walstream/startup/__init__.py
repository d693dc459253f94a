"""The startup role: follow received WAL, decode and verify it, track replay.

:class:`StartupService` replays a directory as a standby's startup process
does (``python -m walstream.startup``, :mod:`walstream.cli.startup`);
:class:`Replayer` does it beside a receiver in the same process
(:mod:`walstream.standby`).
"""

from walstream.startup.replayer import Replayer
from walstream.startup.service import StartupError, StartupOptions, StartupService, StartupStatus

__all__ = ["Replayer", "StartupError", "StartupOptions", "StartupService", "StartupStatus"]
