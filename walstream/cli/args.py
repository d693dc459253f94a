"""What every walstream command line shares: PostgreSQL's usage errors, --version, the loop.

PostgreSQL's programs answer a usage error with one line, a hint and exit
status 1 (argparse's is a usage block and 2)::

    walstream receive: error: no target directory specified
    walstream receive: hint: Try "walstream receive --help" for more information.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from walstream.errors import AuthenticationError

__all__ = [
    "PgArgumentParser",
    "ask_password",
    "needs_password",
    "run_loop",
    "usage_error",
    "version_line",
]

T = TypeVar("T")


def usage_error(prog: str, message: str) -> str:
    """PostgreSQL's two lines for a usage error (the caller exits 1)."""
    return f'{prog}: error: {message}\n{prog}: hint: Try "{prog} --help" for more information.\n'


class PgArgumentParser(argparse.ArgumentParser):
    """argparse, with PostgreSQL's usage errors: one line, a hint, exit status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, usage_error(self.prog, message))


def version_line(prog: str, *, scan: bool = False) -> str:
    """``--version``'s line, as PostgreSQL's programs print it: ``prog (walstream) 0.1``.

    ``scan`` adds which WAL scan runs (the compiled kernel or pure Python),
    for the commands that decode WAL.
    """
    from walstream import __version__

    line = f"{prog} (walstream) {__version__}"
    if scan:
        from walstream.wal import kernel

        line += f", WAL scan: {kernel.implementation()}"
    return line


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's event loop: uvloop's when the ``fast`` extra installed it.

    uvloop's loop, transports and selector are C: they took a tenth of the
    receiver's CPU time per synchronous commit off (measured), and that CPU
    is shared with the primary's backends on the same machine.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def ask_password(prompt: str = "Password: ") -> str:
    """libpq's simple_prompt: ``prompt`` on the terminal, the answer without echo."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        # No terminal (a pipe, a service): like libpq's simple_prompt, read a
        # line from stdin, without getpass's warnings about echoing.
        sys.stderr.write(prompt)
        sys.stderr.flush()
        return sys.stdin.readline().rstrip("\n")  # "" at end of input: libpq's empty answer
    try:
        return getpass.getpass(prompt)
    except EOFError:  # nothing typed before end of input
        return ""


def needs_password(e: BaseException) -> bool:
    """libpq's PQconnectionNeedsPassword: the server asked for one and we had none."""
    return isinstance(e, AuthenticationError) and "no password supplied" in str(e)
