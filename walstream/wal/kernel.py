"""Which WAL-scan path runs: the compiled kernel or the pure-Python decoder.

The hot loop of ``walstream waldump --stats`` and of the startup role's
replay scan has two implementations that make the same checks and stop at
the same record with the same reason:

* ``"compiled"``: :mod:`walstream.wal.fastscan` built into an extension
  module with mypyc, which a source build makes when ``WALSTREAM_COMPILE=1``
  is set (``WALSTREAM_COMPILE=1 pip install .``; it needs a C compiler, and
  the build pulls mypy; the extension needs ``librt`` at run time, which
  such a build declares);
* ``"pure"``: the decoder's own loops in :mod:`walstream.wal.decoder`, the
  reference and the default of a plain install (wheels are pure).

The compiled kernel is used when its extension imports; interpreted,
``fastscan.py`` would be slower than the pure path, so it is never used
that way. ``WALSTREAM_PURE_PYTHON=1`` in the environment forces the pure
path. The choice is made once, at import.

In a source tree (an editable install), the extension stays beside
``fastscan.py`` after a pure reinstall and keeps being used: delete
``walstream/wal/fastscan*.so`` or set ``WALSTREAM_PURE_PYTHON=1``. An
extension older than ``fastscan.py`` (the source edited since the build) is
not used.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
from types import ModuleType
from typing import Final, Literal

__all__ = ["FASTSCAN", "implementation", "reason"]

_NAME: Final = "walstream.wal.fastscan"
_STALE_AFTER: Final = 10.0  # seconds between writing the source and the extension at install


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("WALSTREAM_PURE_PYTHON", "") not in ("", "0"):
        return None, "WALSTREAM_PURE_PYTHON is set"
    spec = importlib.util.find_spec(_NAME)
    if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
        # Only the source is there (a pure install): importing it would run it interpreted.
        return None, "the kernel is not compiled (build with WALSTREAM_COMPILE=1)"
    if _stale(spec.origin):
        return None, "the compiled kernel is older than fastscan.py: build it again"
    try:
        module = importlib.import_module(_NAME)
    except (ImportError, ValueError) as e:  # librt missing, or of another ABI (ValueError)
        return None, f"the compiled kernel does not load: {e}"
    return module, f"compiled kernel {module.__file__}"


def _stale(extension: str | None) -> bool:
    """Whether fastscan.py was changed after the extension was built (an editable checkout).

    An install writes both within moments; an edit comes later, and running
    the old kernel then would test something else than the source says.
    """
    if extension is None:
        return False
    source = os.path.join(os.path.dirname(extension), "fastscan.py")
    try:
        return os.stat(source).st_mtime > os.stat(extension).st_mtime + _STALE_AFTER
    except OSError:
        return False


FASTSCAN: ModuleType | None
_REASON: str
FASTSCAN, _REASON = _load()


def implementation() -> Literal["compiled", "pure"]:
    """``"compiled"`` when the compiled kernel runs the WAL scans, else ``"pure"``."""
    return "compiled" if FASTSCAN is not None else "pure"


def reason() -> str:
    """Why that path: the extension's file, or why the pure path runs."""
    return _REASON
