"""The README's main job: the demo runs end to end and shows what it promises."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import require_version


def test_demo_shows_sync_replay_and_waiting_commits() -> None:
    require_version(15)
    cmd = [sys.executable, "-m", "walstream.demo", "--pg-version", "15", "--seconds", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    rows = [ln.split() for ln in out.splitlines() if re.match(r"\s*\d+\s+\d+/[0-9A-F]+\s", ln)]
    assert rows, out
    # t, primary flush, write, flush, replayed, state, sync, ... (the first second may
    # still be connecting)
    assert rows[-1][5:7] == ["streaming", "sync"], out
    assert rows[-1][4] != "0/0", "no replay position reported"
    assert "commits completed in the 3 s without it: 0 (they wait)" in out
    assert "Completed segments identical to the primary's pg_wal files: True" in out
    assert "Cleaned up." in out
