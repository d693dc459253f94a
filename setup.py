"""Build hook: compile the WAL-scan kernel with mypyc when ``WALSTREAM_COMPILE=1`` is set.

Everything else is declared in pyproject.toml. Without the variable the
build is pure Python (the wheels published are), and a source install needs
no compiler. With it, ``WALSTREAM_COMPILE=1 pip install .`` (or ``-e .``)
compiles :mod:`walstream.wal.fastscan` into an extension module
(:mod:`walstream.wal.kernel` then selects it at import), which needs a C
compiler and, at run time, mypy's ``librt``: such a build declares it.

mypy and librt are pinned together: the kernel is type-checked and
compiled by one mypy, whose bundled ``librt`` stubs and C headers must
match the ``librt`` the extension is built and run against.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

MYPY: str = "mypy==2.4.1"
LIBRT: str = "librt==0.17.0"
# The librt C API the extension is compiled against: a newer librt of the same ABI loads it.
LIBRT_RUNTIME: str = "librt>=0.17.0,<1"
KERNEL: list[str] = ["walstream/wal/fastscan.py"]


def _compile() -> bool:
    value = os.environ.get("WALSTREAM_COMPILE", "")
    if value not in ("", "0", "1"):
        raise SystemExit(f"WALSTREAM_COMPILE must be 0 or 1, not {value!r}")
    return value == "1"


if _compile():
    try:
        from mypyc.build import mypycify
    except ImportError:
        if sys.argv[-1] != "egg_info":
            raise SystemExit(
                f"WALSTREAM_COMPILE=1: compiling the kernel needs {MYPY} and {LIBRT} in the build "
                "environment (pip's build isolation installs them)"
            ) from None
        # The first pass of a PEP 517 build only asks what the build needs: say it.
        ext_modules = []
    else:
        ext_modules = mypycify(KERNEL, opt_level="3", debug_level="0")
    setup(
        ext_modules=ext_modules,
        # Always compile and link afresh: walstream.wal.kernel refuses an
        # extension older than fastscan.py, and an unchanged C file would
        # otherwise leave the old one in place.
        options={"build_ext": {"force": True}},
        setup_requires=[MYPY, LIBRT],
        install_requires=["scramp>=1.4", LIBRT_RUNTIME],
    )
else:
    setup(install_requires=["scramp>=1.4"])
