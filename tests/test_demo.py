"""The README's main job: the demos run end to end and show what they promise."""

from __future__ import annotations

import re
import subprocess
import sys

from walstream.lsn import LSN

from .conftest import require_version

LSN_TEXT = r"[0-9A-F]+/[0-9A-F]+"


def _demo(*args: str) -> str:
    cmd = [sys.executable, "-m", "walstream.demo", "--pg-version", "15", "--seconds", "3", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    # A newcomer sees no traceback, from the load thread or anywhere (issue 12, item 8).
    assert "Traceback" not in done.stderr + out, done.stderr + out
    assert "Cleaned up." in out
    return out


def test_demo_shows_sync_replay_and_waiting_commits() -> None:
    require_version(15)
    out = _demo()
    rows = [ln.split() for ln in out.splitlines() if re.match(rf"\s*\d+\s+{LSN_TEXT}\s", ln)]
    assert rows, out
    # t, primary flush, write, flush, replayed, state, sync, ... (the first second may
    # still be connecting)
    assert rows[-1][5:7] == ["streaming", "sync"], out
    assert rows[-1][4] != "0/0", "no replay position reported"
    assert "commits completed in the 3 s without it: 0 (they wait)" in out
    # The load stops while the receiver still confirms its commits, and the
    # receiver stops once it has all of the primary's WAL up to there.
    ended = re.search(rf"WAL ended at ({LSN_TEXT}) when the load stopped; the receiver "
                      rf"flushed up to ({LSN_TEXT}) \(all of it\)", out)  # fmt: skip
    assert ended, out
    assert "Completed segments identical to the primary's pg_wal files: True" in out


def test_relay_demo_shows_a_commit_waiting_for_the_standby_behind_the_relay() -> None:
    require_version(15)
    out = _demo("--relay")
    rows = [ln.split() for ln in out.splitlines() if re.match(rf"\s*\d+\s+{LSN_TEXT}\s", ln)]
    assert rows, out
    # t, primary flush, relay flush, relay confirmed, standby replay, relay's sync_state
    # on the primary, the standby's on the relay, commits
    assert rows[-1][5:7] == ["sync", "sync"], out
    assert "commits completed in the 3 s without it: 0 (they wait)" in out
    assert "backends on the primary waiting with wait_event SyncRep: 1" in out
    resumed = re.search(r"commits completed since: (\d+)", out)
    assert resumed, out
    assert int(resumed.group(1)) > 0, out
    assert re.search(r"the last row committed on the primary \(id \d+\) is on the standby: True",
                     out), out  # fmt: skip
    replayed = re.search(rf"replayed the primary's WAL up to ({LSN_TEXT}), its end after", out)
    assert replayed, out
    # The last status of each hop: the primary lists the relay, the relay the
    # standby, the standby streams from the relay, each at least where the
    # primary's WAL ended after the load (background WAL may come after it).
    final = out[out.index("Each hop at the end:") :]
    hops = [
        re.search(rf"walstream_relay\s+streaming\s+sync\s+({LSN_TEXT})", final),  # primary's row
        re.search(rf"demo_standby\s+streaming\s+sync\s+({LSN_TEXT})", final),  # relay's row
        re.search(rf"streaming\s+127\.0\.0\.1\s+\d+\s+({LSN_TEXT})", final),  # standby's
    ]
    for hop in hops:
        assert hop, final
        assert LSN.parse(hop.group(1)) >= LSN.parse(replayed.group(1)), final
