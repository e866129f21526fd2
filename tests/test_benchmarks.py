"""The performance harness runs: every case on its smallest workloads (its figures mean nothing)."""

import json
import math
import os
import subprocess
import sys

from conftest import REPO


def test_every_benchmark_case_runs(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    sys.path.insert(0, str(REPO))
    from benchmarks.__main__ import CASES

    done = [line.split(":")[0].strip("[") for line in proc.stderr.splitlines() if line.startswith("[") and line.endswith(" s]")]
    assert done == list(CASES)
    rows = json.loads(out.read_text())["cases"]
    assert rows and all(isinstance(r["value"], (int, float)) and math.isfinite(r["value"]) for r in rows), rows
