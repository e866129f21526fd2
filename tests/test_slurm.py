"""The tiny study through a real single-node SLURM cluster (Debian's slurm-wlm), as CI runs it."""

import copy
import subprocess

import pyarrow.parquet as pq
import pytest
from conftest import REPO, TINY, has, preempt_on_slurm, run_workflow, slurm_args

from scaledyn.layout import Layout

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not has("sbatch"), reason="sbatch not installed")]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def slurm():
    up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    yield
    subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, text=True)


def schema_of(study: Layout) -> dict:
    root = study.losses.dir
    return {p.relative_to(root).as_posix(): pq.read_schema(p).remove_metadata()
            for p in sorted(root.rglob("*.parquet")) if p != study.losses.guard}  # the guard is text: "not one table"


def test_tiny_study_on_slurm_matches_local_run(slurm, tiny_study, tmp_path):
    run_workflow(tmp_path, TINY, *slurm_args())
    remote, local = Layout(tmp_path / "results"), tiny_study
    assert schema_of(remote).keys() == schema_of(local).keys()
    for key, schema in schema_of(remote).items():
        assert schema.equals(schema_of(local)[key]), key
    for f in (remote.fit_trends, remote.zsl_table, remote.report.summary, remote.run_table):
        assert f.exists(), f
    jobs = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%k %T"], capture_output=True, text=True).stdout
    assert "rule_train" in jobs and "COMPLETED" in jobs


def test_preempted_training_resumes(slurm, tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["model"]["sizes"] = ["tiny-1k"]
    cfg["train"].update(steps=2500, flush_every=1)
    cfg["zsl"]["dt1_steps"] = []
    cfg["data"]["allow_repeat"] = True  # 2,500 steps of 8 sequences is 1.1 passes over the tiny corpus
    preempt_on_slurm(tmp_path, cfg, "tiny-1k_s0")
    run = Layout(tmp_path / "results").run("tiny-1k_s0")
    rows = [line.split(",")[0] for line in run.train_log.read_text().splitlines()[1:]]
    assert rows == [str(s) for s in range(1, 2501)]  # nothing lost, nothing repeated
    log = Layout(tmp_path / "results").log("train", "tiny-1k_s0").read_text()
    assert "resuming from checkpoint" in log, log[-2000:]
    assert (run.checkpoint(2048) / "COMPLETE").exists()
