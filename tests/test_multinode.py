"""Training across two SLURM nodes: a cluster of two network namespaces on this machine (each
with its own address and slurmd, one shared filesystem), jobs submitted through the workflow's
SLURM profile, ranks joined by gloo over the namespaces' interfaces."""

import copy
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY, has, log_rows, preempt_on_slurm, run_workflow, slurm_args

from scaledyn.layout import Layout


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not has("ip"):
        return False
    ok = subprocess.run(["ip", "netns", "add", "scaledyn-probe"], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", "scaledyn-probe"], capture_output=True)
    return ok


pytestmark = [
    pytest.mark.multinode,
    pytest.mark.skipif(not has("sbatch") or not has("slurmd"), reason="SLURM (slurm-wlm) not installed"),
    pytest.mark.skipif(not _namespaces_work(), reason="needs root and network namespaces (ip netns)"),
]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
RUN = "tiny-1k_s0"


@pytest.fixture(scope="module")
def two_nodes():
    up = subprocess.run(["bash", str(CLUSTER), "up", "--nodes", "2"], capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    # Each node's interface is sd0; gloo would otherwise pick the address the host name resolves to,
    # which lives outside the namespaces. sbatch passes the environment on (--export=ALL).
    os.environ["GLOO_SOCKET_IFNAME"] = "sd0"
    yield
    os.environ.pop("GLOO_SOCKET_IFNAME")
    down = subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, text=True)
    assert down.returncode == 0, down.stdout + down.stderr
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "scaledyn-n" not in leftovers


def config(steps: int) -> dict:
    """The default study's smallest size on two nodes of one process each."""
    cfg = copy.deepcopy(TINY)
    cfg["model"]["sizes"] = ["tiny-1k"]
    cfg["train"].update(steps=steps, flush_every=1)
    cfg["zsl"]["dt1_steps"] = []
    cfg["data"]["allow_repeat"] = True  # the tiny corpus is short; repetition is not what is tested here
    cfg["slurm"] = {"nodes": {"tiny-1k": 2}, "train_mem_mb": 1000}
    return cfg


def one_node_two_processes(spec: dict, study, run_dir) -> list[tuple]:
    """The same run spec as 2 processes on this host (torchrun), the reference for the 2-node run;
    it runs in the study directory, where the spec's data paths lead."""
    spec = {**spec, "run_dir": str(run_dir)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
                           "-m", "scaledyn", "train", "--spec", json.dumps(spec)], cwd=study,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return log_rows(run_dir / "train_log.csv")


def test_two_node_training_matches_one_node_two_processes(two_nodes, tmp_path):
    t0 = time.time()
    run_workflow(tmp_path / "study", config(200), *slurm_args(f"results/runs/{RUN}/run.json"))
    wall = time.time() - t0
    run = Layout(tmp_path / "study" / "results").run(RUN)
    meta = json.loads(run.run_json.read_text())
    ranks = {r["rank"]: r for r in meta["ranks"]}
    assert meta["processes"] == 2 and ranks.keys() == {0, 1}
    assert {ranks[0]["node"], ranks[1]["node"]} == {"sdnode1", "sdnode2"}  # one rank on each node
    assert {ranks[0]["address"], ranks[1]["address"]} == {"10.213.7.11", "10.213.7.12"}
    # only rank 0 writes: every checkpoint by its node, every log row once
    states = [json.loads((run.checkpoint(s) / "scaledyn_state.json").read_text()) for s in (1, 64, 128, 200)]
    assert {s["node"] for s in states} == {ranks[0]["node"]}
    two_node = log_rows(run.train_log)
    assert [r[0] for r in two_node] == [str(s) for s in range(1, 201)]
    one_node = one_node_two_processes(meta["spec"], tmp_path / "study", tmp_path / "one-node")
    diff = max(abs(float(a[2]) - float(b[2])) for a, b in zip(two_node, one_node))
    print(f"2-node run through SLURM: {wall:.0f} s; largest loss difference to 1 node x 2 processes: {diff:.2e}")
    assert diff <= 1e-5
    assert [r[:2] + r[3:] for r in two_node] == [r[:2] + r[3:] for r in one_node]  # tokens, lr, grad norm, data pass


def test_preempted_two_node_training_resumes_exactly(two_nodes, tmp_path):
    """scancel --signal=TERM reaches both trainers (not srun, which would kill them): they agree on
    a step, rank 0 saves it, the job is requeued and resumes; the log has every step once."""
    steps = 4000
    work = tmp_path / "study"
    t0 = time.time()
    preempt_on_slurm(work, config(steps), RUN)
    layout = Layout(work / "results")
    run = layout.run(RUN)
    print(f"2-node pre-emption and resume through SLURM: {time.time() - t0:.0f} s")
    assert [r[0] for r in log_rows(run.train_log)] == [str(s) for s in range(1, steps + 1)]  # nothing lost or repeated
    log = layout.log("train", RUN).read_text()
    resumed = int(log.split("resuming from checkpoint", 1)[1].split(" at step ")[1].split()[0])
    # the stop step's own checkpoint, not the last scheduled one: both ranks stopped at one step and saved it
    assert resumed > 256 and resumed not in json.loads(run.run_json.read_text())["spec"]["checkpoint_steps"]
    assert json.loads(run.run_json.read_text())["processes"] == 2
