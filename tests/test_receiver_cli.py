"""The receiver's command line against pg_receivewal's, run side by side.

-n/--no-loop against the default retry loop when the server restarts, and the
password options -W (prompt first), -w (never prompt) and the default (prompt
once when the server asks), typed into a real pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from walstream import LSN
from walstream.embedded import find_bindir
from walstream.wal.segment import parse_segment_name

from .conftest import require_version
from .pgcluster import PgCluster, wait_until

SEG = 1024 * 1024
OURS = [sys.executable, "-m", "walstream.receiver"]
PROG = {"ours": "walstream receive", "ref": "pg_receivewal"}


class _Running:
    """A receiver process whose stderr is collected line by line as it runs."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float = 30) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


def _start_both(cluster: PgCluster, tmp_path: Path, *args: str) -> dict[str, tuple[_Running, Path]]:
    out: dict[str, tuple[_Running, Path]] = {}
    conninfo = cluster.conninfo("scram_user", "scrampass")
    for key, program in (("ours", OURS), ("ref", [str(cluster.program("pg_receivewal"))])):
        directory = tmp_path / key
        directory.mkdir()
        cmd = [*program, "-d", conninfo, "-D", str(directory), "-s", "1", "-v", *args]
        out[key] = (_Running(cmd), directory)
    return out


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def _fill_segment(cluster: PgCluster) -> None:
    """More than a segment of WAL: at least one segment completes."""
    cluster.psql("INSERT INTO t SELECT g, repeat('w', 400) FROM generate_series(1, 3000) g")


@pytest.fixture
def primary(pg_factory) -> PgCluster:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE t(x int, pad text)")
    return cluster


def test_no_loop_exits_1_disconnected_when_the_server_restarts(
    primary: PgCluster, tmp_path: Path
) -> None:
    both = _start_both(primary, tmp_path, "-n")
    try:
        wait_until(
            lambda: primary.psql("SELECT count(*) FROM pg_stat_replication") == "2",
            what="both receivers streaming",
        )
        _fill_segment(primary)
        primary.restart()  # pg_ctl restart -m fast
        codes = {key: run.wait() for key, (run, _) in both.items()}
    finally:
        for run, _ in both.values():
            run.kill()
    errs = {key: run.stderr for key, (run, _) in both.items()}
    assert codes == {"ours": 1, "ref": 1}, errs
    for key, err in errs.items():
        lines = err.splitlines()
        # One line saying why, then "disconnected", as pg_receivewal -n prints it.
        assert lines[-1] == f"{PROG[key]}: error: disconnected", err
        assert lines[-2].startswith(f"{PROG[key]}: error: "), err
    assert "replication stream ended by the server" in errs["ours"]
    assert "replication stream was terminated before stop point" in errs["ref"]

    # A server shutting down sends everything first: both directories hold all of it.
    ours, ref = _files(both["ours"][1]), _files(both["ref"][1])
    assert ours == ref
    assert any(".partial" not in name for name in ours)
    for name, data in ours.items():
        if ".partial" not in name:
            assert data == (primary.datadir / "pg_wal" / name).read_bytes(), name


def test_default_loop_retries_and_continues_without_a_gap(
    primary: PgCluster, tmp_path: Path
) -> None:
    both = _start_both(primary, tmp_path)
    ours_run, ref_run = both["ours"][0], both["ref"][0]
    try:
        wait_until(
            lambda: primary.psql("SELECT count(*) FROM pg_stat_replication") == "2",
            what="both receivers streaming",
        )
        outages: list[str] = []
        for outage in (1, 2):  # the second outage must back off from the start again
            _fill_segment(primary)
            mark = len(ours_run.lines)
            primary.stop("fast")
            # While the server is down walstream keeps trying, backing off ...
            wait_until(
                lambda mark=mark: "".join(ours_run.lines[mark:]).count("retrying in") >= 3,
                what="walstream retrying",
            )
            wait_until(
                lambda n=outage: ref_run.stderr.count("disconnected; waiting 5 seconds") >= n,
                what="pg_receivewal waiting to retry",
            )
            primary.start()
            # ... and both come back by themselves.
            wait_until(
                lambda: primary.psql("SELECT count(*) FROM pg_stat_replication") == "2",
                what="both receivers streaming again",
            )
            outages.append("".join(ours_run.lines[mark:]))
        _fill_segment(primary)
        last = LSN.parse(primary.psql("SELECT pg_switch_wal()")) // SEG
        wait_until(
            lambda: all(
                (d / f"00000001{last >> 12:08X}{last & 0xFFF:08X}").exists()
                for _, d in both.values()
            ),
            what="the switched segment completed in both directories",
        )
        for run, _ in both.values():
            run.proc.send_signal(signal.SIGINT)
        codes = {key: run.wait() for key, (run, _) in both.items()}
    finally:
        for run, _ in both.values():
            run.kill()
    assert codes == {"ours": 0, "ref": 0}, {k: r.stderr for k, (r, _) in both.items()}

    # The retry schedule walstream printed: 0.5 s doubling up to pg_receivewal's 5 s,
    # from the start again for each outage.
    for text in outages:
        delays = [float(x) for x in re.findall(r"retrying in ([\d.]+) s", text)]
        assert delays[:3] == [0.5, 1.0, 2.0], text
        assert all(d <= 5.0 for d in delays)
    assert ours_run.stderr.count("connected to") == 3

    ours, ref = _files(both["ours"][1]), _files(both["ref"][1])
    completed = {n: b for n, b in ours.items() if ".partial" not in n}
    segnos = sorted(n.segno for n in map(lambda f: parse_segment_name(f, SEG), completed) if n)
    assert segnos == list(range(segnos[0], last + 1)), f"gap: {sorted(ours)}"
    assert len(segnos) >= 3
    for name, data in completed.items():
        assert data == (primary.datadir / "pg_wal" / name).read_bytes(), f"{name} != primary's"
    assert completed == {n: b for n, b in ref.items() if ".partial" not in n}


def test_first_connection_failure_is_fatal_even_without_no_loop(tmp_path: Path) -> None:
    require_version(15)
    bindir = find_bindir(15)
    assert bindir is not None
    for program in (OURS, [str(bindir / "pg_receivewal")]):
        result = subprocess.run(
            [*program, "-d", "host=127.0.0.1 port=1 user=x", "-D", str(tmp_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert "Connection refused" in result.stderr
        assert "retry" not in result.stderr
        assert "waiting" not in result.stderr
        assert "disconnected" not in result.stderr


# -- passwords --------------------------------------------------------------


def _in_pty(
    argv: list[str],
    answer: str | None,
    timeout: float = 30,
    *,
    enter: bool = True,
    describe: bool = False,
) -> tuple[int, str]:
    """Run ``argv`` on a new pseudo-terminal; type ``answer`` (and Enter) at "Password: ".

    ``describe``: the child first prints its terminal's state (process group,
    the terminal's foreground group, whether /dev/tty opens), for a failure
    that depends on it.
    """
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    env["PGPASSFILE"] = "/nonexistent/pgpass"  # no stored password either
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty, as for a user
        try:
            # As a shell starts a foreground job: SIGINT at its default and not
            # blocked, whatever the test process (a pytest-xdist worker) holds;
            # both are inherited across exec, and twice in CI-like runs a ^C
            # at the prompt had no effect.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            if describe:
                try:
                    os.close(os.open("/dev/tty", os.O_RDWR))
                    tty = "opens"
                except OSError as e:
                    tty = f"fails: {e}"
                os.write(1, f"[pgrp {os.getpgrp()}, foreground {os.tcgetpgrp(0)}, "
                            f"/dev/tty {tty}]\n".encode())  # fmt: skip
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    out = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if answer is not None and not answered and b"Password: " in out:
                os.write(fd, answer.encode() + (b"\n" if enter else b""))
                answered = True
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def pw_server() -> Iterator[PgCluster]:
    require_version(15)
    cluster = PgCluster.create(15, wal_segsize_mb=1)
    try:
        yield cluster
    finally:
        cluster.destroy()


def _both_in_pty(
    server: PgCluster, tmp_path: Path, flags: list[str], answer: str | None
) -> dict[str, tuple[int, str, Path]]:
    """Both tools, with ``flags``, streaming to just past the server's current position."""
    endpos = LSN.parse(server.current_lsn())
    server.psql("SELECT pg_logical_emit_message(false, 'past', 'endpos')")  # WAL past endpos
    conninfo = server.conninfo("scram_user")  # no password in it
    out = {}
    for key, program in (("ours", OURS), ("ref", [str(server.program("pg_receivewal"))])):
        directory = tmp_path / f"{key}{''.join(flags)}-{answer}"
        directory.mkdir()
        args = [*program, "-d", conninfo, "-D", str(directory), "-n", "-E", str(endpos), *flags]
        rc, text = _in_pty(args, answer)
        out[key] = (rc, text, directory)
    return out


def test_password_prompt_forced_with_W(pw_server: PgCluster, tmp_path: Path) -> None:
    right = _both_in_pty(pw_server, tmp_path, ["-W"], "scrampass")
    for key, (rc, text, directory) in right.items():
        assert rc == 0, text
        # The same prompt, before anything else; the password is not echoed.
        assert text.startswith("Password: \n"), (key, text)
        assert "scrampass" not in text
        assert any(p.name.endswith(".partial") for p in directory.iterdir()), key

    wrong = _both_in_pty(pw_server, tmp_path, ["-W"], "wrong")
    texts = {}
    for key, (rc, text, directory) in wrong.items():
        assert rc == 1, text
        assert text.startswith("Password: \n"), text
        texts[key] = text.replace(PROG[key], "PROG")
        assert not list(directory.iterdir())
    assert 'FATAL:  password authentication failed for user "scram_user"' in texts["ours"]
    assert texts["ours"] == texts["ref"]  # libpq's words, the server's message


def test_default_prompts_once_when_the_server_asks(pw_server: PgCluster, tmp_path: Path) -> None:
    asked = _both_in_pty(pw_server, tmp_path, [], "scrampass")
    for key, (rc, text, _) in asked.items():
        assert rc == 0, text
        assert text.startswith("Password: \n"), (key, text)

    # A server that does not ask gets no prompt.
    trust = tmp_path / "trust"
    trust.mkdir()
    endpos = LSN.parse(pw_server.current_lsn())
    pw_server.psql("SELECT pg_logical_emit_message(false, 'past', 'endpos')")
    conninfo = pw_server.conninfo("trust_user")
    rc, text = _in_pty([*OURS, "-d", conninfo, "-D", str(trust), "-n", "-E", str(endpos)], None)
    assert (rc, text) == (0, "")


def test_no_password_flag_never_prompts(pw_server: PgCluster, tmp_path: Path) -> None:
    refused = _both_in_pty(pw_server, tmp_path, ["-w"], "scrampass")
    for key, (rc, text, directory) in refused.items():
        assert rc == 1, text
        assert "Password:" not in text
        assert text.startswith(f"{PROG[key]}: error: "), text
        assert text.endswith("fe_sendauth: no password supplied\n"), text
        assert not list(directory.iterdir())


def test_no_password_message_names_the_server(pw_server: PgCluster, tmp_path: Path) -> None:
    refused = _both_in_pty(pw_server, tmp_path, ["-w"], None)
    texts = {key: text.replace(PROG[key], "PROG") for key, (_, text, _) in refused.items()}
    assert texts["ours"] == texts["ref"]


def test_ctrl_c_at_the_password_prompt_ends_without_a_traceback(pw_server: PgCluster) -> None:
    """Before streaming's own handlers exist, SIGINT ends the program as the default would."""
    conninfo = pw_server.conninfo("scram_user")
    for program in (OURS, [str(pw_server.program("pg_receivewal"))]):
        args = [*program, "-d", conninfo, "-S", "never_made", "--create-slot", "-W"]
        # The terminal's interrupt character alone, as a person types it.
        rc, text = _in_pty(args, "\x03", enter=False, describe=True)
        here = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
        assert rc in (130, -signal.SIGINT), (rc, text, here)
        assert "Traceback" not in text, text
    assert pw_server.psql(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'never_made'"
    ) == "0"  # fmt: skip


# -- usage errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "ours", "theirs"),
    [
        (["--bogus"], "unrecognized arguments: --bogus", "unrecognized option '--bogus'"),
        (["-s", "-1"], "must be in range 0..2147483", "must be in range 0..2147483"),
        (["-s", "1.5"], 'invalid value "1.5"', 'invalid value "1.5"'),
        (["-s", "99999999999"], "must be in range 0..2147483", "must be in range 0..2147483"),
    ],
)
def test_usage_errors_exit_1_with_a_hint(args: list[str], ours: str, theirs: str) -> None:
    """As pg_receivewal: one error line, a hint to --help, exit status 1 (argparse says 2)."""
    bindir = find_bindir(15)
    if bindir is None:
        pytest.skip("no PostgreSQL 15")
    for key, program, expected in (
        ("ours", OURS, ours),
        ("ref", [str(bindir / "pg_receivewal")], theirs),
    ):
        done = subprocess.run(
            [*program, "-D", "/tmp", *args], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 1, (key, done.stderr)
        assert expected in done.stderr, (key, done.stderr)
        if key == "ours" or args == ["--bogus"]:  # pg_receivewal hints only there
            assert f'hint: Try "{PROG[key]} --help" for more information.' in done.stderr
        assert "usage:" not in done.stderr


def test_a_directory_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    bindir = find_bindir(15)
    if bindir is None:
        pytest.skip("no PostgreSQL 15")
    afile = tmp_path / "afile"
    afile.write_text("")
    for key, program in (("ours", OURS), ("ref", [str(bindir / "pg_receivewal")])):
        done = subprocess.run(
            [*program, "-d", "host=127.0.0.1 port=1", "-D", str(afile)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 1, (key, done.stderr)
        assert f'could not open directory "{afile}": Not a directory' in done.stderr, key


def test_password_from_stdin_without_a_terminal(pw_server: PgCluster, tmp_path: Path) -> None:
    """No controlling terminal (a pipe, a service): -W reads stdin, quietly, as libpq does."""
    endpos = LSN.parse(pw_server.current_lsn())
    pw_server.psql("SELECT pg_logical_emit_message(false, 'past', 'endpos')")
    args = ["-d", pw_server.conninfo("scram_user"), "-D", str(tmp_path), "-n", "-E", str(endpos)]
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    done = subprocess.run(
        [*OURS, *args, "-W"], input="scrampass\n", capture_output=True, text=True,
        timeout=60, check=False, start_new_session=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == "Password: ", done.stderr  # no getpass warnings
