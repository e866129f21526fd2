"""Build the command that runs a scaledyn subcommand on 1 CPU process, N GPUs, or M nodes.

    CPU, one process     python -m scaledyn <cmd> ...            (no launcher: signals reach it)
    1 node x N GPUs      accelerate launch --multi_gpu --num_processes N ... -m scaledyn <cmd> ...
    M nodes x N GPUs     srun --nodes M --ntasks M --ntasks-per-node 1 bash -c
                             'accelerate launch --multi_gpu --num_machines M --machine_rank "$SLURM_NODEID"
                              --main_process_ip "$MAIN_IP" ...'
                         with MAIN_IP = the allocation's first node's NodeAddr, looked up once (from
                         `scontrol show job`: Snakemake's SLURM executor strips SLURM_JOB_NODELIST).
    M nodes, CPU         the same command with one process per node; the trainers join with gloo.

One builder serves GPUs and CPUs, so the parts the CPU tests exercise on a real two-node cluster
(srun's flags, the rank, the address, the port, the rendezvous) are the ones a GPU cluster runs.
`--multi_gpu` is accelerate's name for its torchrun launcher, which works on CPUs too.
The srun must run in the batch step itself (the train rule sets Snakemake's `mpi` resource for
multi-node jobs, so the SLURM executor does not wrap the job in an srun step of its own): srun
answers SIGTERM by killing its tasks, and `scancel --signal=TERM` (pre-emption) signals every step
but the batch step, so only the trainers hear it, save a checkpoint and exit.
The rank and the address are left for the shell on each node to expand, so every node sees its
own rank; everything else is quoted with shlex so JSON arguments survive both shells.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys

from ..errors import ConfigError


def accelerator(bf16: bool):
    """The Accelerator of a launched process.

    Without CUDA, accelerate (1.1x) joins a torchrun/srun process group only when told cpu=True;
    left out, every rank would silently train or evaluate alone."""
    import torch
    from accelerate import Accelerator

    return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())


def node_name() -> str:
    """The SLURM node this process runs on (several nodes can share one host name), else the host."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def whereabouts(rank: int) -> dict:
    """Where a rank runs: its node, host and the address it reaches the rendezvous host from (the
    local end of a route to MASTER_ADDR; a UDP connect sends nothing)."""
    address = None
    if os.environ.get("MASTER_ADDR"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((os.environ["MASTER_ADDR"], int(os.environ.get("MASTER_PORT", 29500))))
                address = s.getsockname()[0]
            except OSError:
                pass
    return {"rank": rank, "node": node_name(), "host": socket.gethostname(), "address": address}


def default_port() -> int:
    """A rendezvous port per SLURM job, so that two multi-node jobs sharing a first node (or a
    retry while the last one's port lingers) do not collide; 29500 outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    return 20000 + int(job) % 10000 if job and job.isdigit() else 29500


def leave_process_group() -> None:
    """Tear down the process group before exit: gloo aborts a process that exits holding one."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def command(args: list[str], gpus: int = 0, nodes: int = 1, port: int | None = None) -> list[str]:
    """argv to run `scaledyn <args>` (for multi-node: a bash -c line for the batch shell)."""
    if args and args[0] == "--":
        args = args[1:]
    if nodes < 1:
        raise ConfigError(f"--nodes: must be at least 1, got {nodes}")
    if gpus < 0:
        raise ConfigError(f"--gpus: must be 0 (CPU) or more, got {gpus}")
    module = ["-m", "scaledyn", *args]
    if nodes == 1 and gpus <= 1:
        if gpus == 0:
            return [sys.executable, *module]
        return ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", *module]
    if nodes == 1:
        return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(gpus), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", *module]
    per_node, port = max(gpus, 1), port or default_port()
    head = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(per_node * nodes), "--num_machines", str(nodes),
            "--mixed_precision", "no", "--dynamo_backend", "no", "--rdzv_backend", "static", "--main_process_port", str(port)]
    on_node = f'{shlex.join(head)} --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_IP" {shlex.join(module)}'
    srun = ["srun", "--nodes", str(nodes), "--ntasks", str(nodes), "--ntasks-per-node", "1", "--kill-on-bad-exit=1"]
    if gpus:
        srun += ["--gpus-per-node", str(gpus)]
    batch = (
        """NODELIST=$(scontrol show job -o "$SLURM_JOB_ID" | grep -o ' NodeList=[^ ]*' | cut -d= -f2); """
        'MAIN_IP=$(scontrol show node "$(scontrol show hostnames "$NODELIST" | head -n 1)" '
        "| grep -o 'NodeAddr=[^ ]*' | cut -d= -f2); export MAIN_IP; "
        f"{shlex.join(srun)} bash -c {shlex.quote(on_node)}"
    )
    return ["bash", "-c", batch]


def run(args: list[str], gpus: int = 0, nodes: int = 1, port: int | None = None, dry_run: bool = False) -> None:
    argv = command(args, gpus, nodes, port)
    if dry_run:
        print(shlex.join(argv))
        return
    if argv[0] == sys.executable:
        os.execv(argv[0], argv)  # one process: become it, so SIGTERM from the scheduler reaches training
    child = subprocess.Popen(argv)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):  # pre-emption must reach the trainers
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    sys.exit(child.wait())
