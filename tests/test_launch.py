import re
import shlex
import sys

from scaledyn.launch import command

from conftest import TINY, run_workflow


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


def test_m_nodes_n_gpus_quotes_per_node_rank():
    spec = '{"name": "x y", "q": "it\'s"}'
    argv = command(["train", "--spec", spec], gpus=4, nodes=3, port=29600)
    assert argv[:2] == ["bash", "-c"]
    line = argv[2]
    assert 'MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in line
    srun = shlex.split(line.split("; ", 2)[-1])
    assert srun[:7] == ["srun", "--nodes", "3", "--ntasks-per-node", "1", "--kill-on-bad-exit=1", "bash"]
    inner = srun[-1]  # what each node's shell runs: rank and host still unexpanded
    assert '--machine_rank "$SLURM_NODEID"' in inner and '--main_process_ip "$MAIN_IP"' in inner
    words = shlex.split(inner)
    assert words[words.index("--num_processes") + 1] == "12" and words[words.index("--num_machines") + 1] == "3"
    assert words[words.index("--main_process_port") + 1] == "29600"
    assert words[-1] == spec  # the JSON survives both shells intact


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
