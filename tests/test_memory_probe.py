"""The benchmark workers' memory probe (ccpulse/tools/memory_probe.py): what it attributes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ccpulse.tools import memory_probe

ROOT = Path(__file__).resolve().parents[1]


class Held:
    __slots__ = ("value",)

    def __init__(self, value: dict) -> None:
        self.value = value


def test_report_attributes_objects_by_type_and_dict_shape() -> None:
    held = [Held({"probe_a": i, "probe_b": "x"}) for i in range(20_000)]
    report = memory_probe.collect(trim=True)
    types = {name: count for name, count, _size in report["types"]}
    assert types.get("Held", 0) >= 20_000
    shapes = {shape: count for shape, count, _size in report["dict_shapes"]}
    assert shapes.get("probe_a,probe_b", 0) >= 20_000
    assert report["status"]["VmRSS"] > 0 and "Anonymous" in report["smaps_rollup"]
    assert "VmRSS" in report["after_trim"]["status"]
    assert "RSS" in memory_probe.format_report(report)
    del held


def test_a_worker_answers_a_report_request_through_its_file(tmp_path: Path) -> None:
    """The bootstrap loads the probe by path and runs ``ccpulse.cli``; here a stand-in
    command that sleeps, so the thread answering requests is what is tested."""
    path = tmp_path / "memory.json"
    env = {**os.environ, memory_probe.ENV: str(path), "PYTHONPATH": str(ROOT)}
    code = memory_probe.BOOTSTRAP.replace('"ccpulse.cli"', '"time"').replace(
        "runpy.run_module", "import time; time.sleep(30) or runpy.run_module")
    proc = subprocess.Popen([sys.executable, "-c", code, memory_probe.__file__], env=env)
    try:
        Path(f"{path}.request").write_text("", encoding="utf-8")
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        report = json.loads(path.read_text(encoding="utf-8"))
        assert report["status"]["VmRSS"] > 0 and "after_trim" not in report
    finally:
        proc.kill()
        proc.wait()
