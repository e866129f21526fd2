"""Build the command that runs a scaledyn subcommand on 1 CPU process, N GPUs, or M nodes x N GPUs.

    CPU, one process     python -m scaledyn <cmd> ...            (no launcher: signals reach it)
    1 node x N GPUs      accelerate launch --multi_gpu --num_processes N ... -m scaledyn <cmd> ...
    M nodes x N GPUs     srun --nodes M --ntasks-per-node 1 bash -c 'accelerate launch --num_machines M
                             --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_IP" ...'
                         with MAIN_IP = the allocation's first host, resolved once by the batch shell.

The rank and the host are left for the shell on each node to expand, so every node sees its own
rank; everything else is quoted with shlex so JSON arguments survive both shells.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys


def accelerator(bf16: bool):
    """The Accelerator of a launched process.

    Without CUDA, accelerate (1.1x) joins a torchrun/srun process group only when told cpu=True;
    left out, every rank would silently train or evaluate alone."""
    import torch
    from accelerate import Accelerator

    return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())


def command(args: list[str], gpus: int = 0, nodes: int = 1, port: int = 29500) -> list[str]:
    """argv to run `scaledyn <args>` (for multi-node: a bash -c line for the batch shell)."""
    if args and args[0] == "--":
        args = args[1:]
    if nodes < 1 or gpus < 0:
        raise ValueError(f"launch: need nodes >= 1 and gpus >= 0, got nodes={nodes} gpus={gpus}")
    module = ["-m", "scaledyn", *args]
    if nodes == 1 and gpus <= 1:
        if gpus == 0:
            return [sys.executable, *module]
        return ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", *module]
    if nodes == 1:
        return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(gpus), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", *module]
    head = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(gpus * nodes), "--num_machines", str(nodes),
            "--mixed_precision", "no", "--dynamo_backend", "no", "--rdzv_backend", "static", "--main_process_port", str(port)]
    per_node = f'{shlex.join(head)} --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_IP" {shlex.join(module)}'
    batch = (
        'MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1); export MAIN_IP; '
        f"srun --nodes {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 bash -c {shlex.quote(per_node)}"
    )
    return ["bash", "-c", batch]


def run(args: list[str], gpus: int = 0, nodes: int = 1, port: int = 29500, dry_run: bool = False) -> None:
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
