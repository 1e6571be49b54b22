"""``ccpulse same-day --short`` end to end: its own broker, two real workers of this tree, the verdict.

The same code on both sides must come out identical; this proves the plumbing
(publish, both workers to final, read back, compare) and the exit status.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_same_day_short_current_tree_against_itself_is_identical(tmp_path: Path) -> None:
    # The tool bounds its own waits (SHORT.timeout); this timeout only stops a hung run.
    out = subprocess.run([sys.executable, "-m", "ccpulse.cli", "same-day", "--short", "--old", str(ROOT)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]
    verdict = out.stdout.strip().splitlines()[0]
    assert verdict.startswith("IDENTICAL: kpi.windows: "), verdict
    windows = int(verdict.split("kpi.windows: ")[1].split(" keys")[0].replace(",", ""))
    assert windows > 100  # a real day's hour: 1m/15m/1h/1d windows of several queues and channels
    assert "0 differing, 0 only in old, 0 only in new" in verdict
