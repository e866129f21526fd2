"""The tiny study through a real single-node SLURM cluster (Debian's slurm-wlm), as CI runs it."""

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, TINY, has, run_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not has("sbatch"), reason="sbatch not installed")]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def slurm():
    up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    yield
    subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, text=True)


def slurm_args(*extra):
    # This node has 2 CPUs: a group of 4 evaluation jobs (the profile's default) would never start.
    return ["--group-components", "eval=2", "--profile", str(REPO / "profiles" / "slurm"), "--jobs", "4",
            "--latency-wait", "5", *extra]


def schema_of(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): pq.read_schema(p).remove_metadata()
            for p in sorted(root.glob("losses/*/run=*/step=*/part-0.parquet"))}


def test_tiny_study_on_slurm_matches_local_run(slurm, tiny_study, tmp_path):
    run_workflow(tmp_path, TINY, *slurm_args())
    remote, local = tmp_path / "results", tiny_study
    assert schema_of(remote).keys() == schema_of(local).keys()
    for key, schema in schema_of(remote).items():
        assert schema.equals(schema_of(local)[key]), key
    for f in ("fits/scaling.csv", "zsl/zsl.parquet", "report/summary.md", "losses/runs.parquet"):
        assert (remote / f).exists(), f
    jobs = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%k %T"], capture_output=True, text=True).stdout
    assert "rule_train" in jobs and "COMPLETED" in jobs


def test_preempted_training_resumes(slurm, tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["model"]["sizes"] = ["tiny-1k"]
    cfg["train"].update(steps=2500, flush_every=1)
    cfg["zsl"]["dt1_steps"] = []
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           *slurm_args(), "results/runs/tiny-1k_s0/run.json"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state_log = tmp_path / "results/runs/tiny-1k_s0/state/train_log.csv"
    t0 = time.time()
    while not (state_log.exists() and sum(1 for _ in open(state_log)) > 300):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300, "training never got going"
        time.sleep(0.5)
    jobid = next(line.split()[0] for line in subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %k"], capture_output=True,
                                                            text=True).stdout.splitlines() if "rule_train" in line)
    subprocess.run(["scancel", "--signal=TERM", jobid], check=True)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    rows = [line.split(",")[0] for line in (tmp_path / "results/runs/tiny-1k_s0/train_log.csv").read_text().splitlines()[1:]]
    assert rows == [str(s) for s in range(1, 2501)]  # nothing lost, nothing repeated
    log = (tmp_path / "results/logs/train/tiny-1k_s0.log").read_text()
    assert "resuming from checkpoint" in log, log[-2000:]
    assert os.path.exists(tmp_path / "results/runs/tiny-1k_s0/checkpoints/step_2048/COMPLETE")
