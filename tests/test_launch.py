import re
import shlex
import sys

from conftest import TINY, run_workflow

from scaledyn.train.launch import command


def test_cpu_runs_the_subcommand_directly():
    assert command(["--", "train", "--spec", "{}"]) == [sys.executable, "-m", "scaledyn", "train", "--spec", "{}"]


def test_one_gpu():
    argv = command(["train", "--spec", "{}"], gpus=1)
    assert argv[:2] == ["accelerate", "launch"] and "--multi_gpu" not in argv
    assert argv[argv.index("--num_processes") + 1] == "1"


def test_one_node_n_gpus():
    argv = command(["train", "--spec", '{"a": 1}'], gpus=4)
    assert "--multi_gpu" in argv and argv[argv.index("--num_processes") + 1] == "4"
    assert argv[-4:] == ["scaledyn", "train", "--spec", '{"a": 1}']


def _per_node(argv: list[str]) -> tuple[list[str], list[str]]:
    """srun's argv and what each node's shell runs (rank and address still unexpanded)."""
    assert argv[:2] == ["bash", "-c"]
    srun = shlex.split(argv[2].split("; ")[-1])
    return srun, srun[-1]


def test_m_nodes_n_gpus_quotes_per_node_rank():
    spec = '{"name": "x y", "q": "it\'s"}'
    argv = command(["train", "--spec", spec], gpus=4, nodes=3, port=29600)
    assert "MAIN_IP=$(scontrol show node \"$(scontrol show hostnames \"$NODELIST\" | head -n 1)\"" in argv[2]
    srun, inner = _per_node(argv)
    assert srun[:8] == ["srun", "--nodes", "3", "--ntasks", "3", "--ntasks-per-node", "1", "--kill-on-bad-exit=1"]
    assert srun[8:10] == ["--gpus-per-node", "4"]
    assert '--machine_rank "$SLURM_NODEID"' in inner and '--main_process_ip "$MAIN_IP"' in inner
    words = shlex.split(inner)
    assert words[words.index("--num_processes") + 1] == "12" and words[words.index("--num_machines") + 1] == "3"
    assert words[words.index("--main_process_port") + 1] == "29600"
    assert words[-1] == spec  # the JSON survives both shells intact


def test_cpu_nodes_share_the_gpu_builder(monkeypatch):
    """M CPU nodes run the GPU command with one process per node and no GPU request; the port
    follows the SLURM job so that two jobs on one first node do not collide."""
    monkeypatch.setenv("SLURM_JOB_ID", "12345")
    cpu_srun, cpu = _per_node(command(["train"], gpus=0, nodes=2))
    gpu_srun, gpu = _per_node(command(["train"], gpus=1, nodes=2))
    i = gpu_srun.index("--gpus-per-node")
    assert cpu == gpu and cpu_srun == gpu_srun[:i] + gpu_srun[i + 2:]
    words = shlex.split(cpu)
    assert "--multi_gpu" in words and words[words.index("--num_processes") + 1] == "2"
    assert words[words.index("--main_process_port") + 1] == str(20000 + 12345 % 10000)


def test_sbatch_resources_per_size(tmp_path):
    """The train rule asks SLURM for GPUs and nodes by size, and more time on each retry."""
    cfg = {**TINY, "model": {"sizes": ["tiny-1k", "tiny-6k", "tiny-11k"]},
           "slurm": {"gpus": {"tiny-6k": 4, "tiny-11k": 8}, "nodes": {"tiny-11k": 2}, "default_gpus": 1,
                     "train_runtime_min": 30}}
    out = run_workflow(tmp_path, cfg, "-n", "-p", "--forcerun", "train").stdout
    res = {}
    for block in out.split("rule train:")[1:]:
        run = re.search(r"runs/(\S+?)/run.json", block).group(1)
        res[run] = dict(kv.split("=") for kv in re.search(r"resources: (.*)", block).group(1).split(", "))
        assert f"--gpus {res[run]['gpu']} --nodes {res[run]['nodes']}" in block
    assert (res["tiny-1k_s0"]["gpu"], res["tiny-1k_s0"]["nodes"]) == ("1", "1")
    assert (res["tiny-6k_s0"]["gpu"], res["tiny-6k_s0"]["nodes"]) == ("4", "1")
    assert (res["tiny-11k_s0"]["gpu"], res["tiny-11k_s0"]["nodes"]) == ("8", "2")
    assert res["tiny-1k_s0"]["runtime"] == "30"
