"""Shared fixtures: every test builds its own small data; nothing downloads."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A study small enough for tests: two sizes, 64 steps, a slice of the stdlib corpus.
TINY = {
    "study": "tiny",
    "results": "results",
    "data": {"source": "stdlib", "max_documents": 40, "tokenizer": {"vocab_size": 300}, "seq_len": 32,
             "eval_sequences": 24, "heldout_batches": 2},
    "model": {"sizes": ["tiny-1k", "tiny-6k"]},
    "train": {"steps": 64, "batch_size": 8, "threads": 1, "schedule": {"warmup_steps": 4}},
    "zsl": {"dt1_steps": [16, 64], "coordinate_tokens": 32},
    "fit": {"transient_steps": 4, "bootstrap": 20},
    "evaluate": {"batch_size": 16},
}


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    return yaml.safe_load(yaml.safe_dump(TINY))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_config):
    from scaledyn.data.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    from scaledyn.config import load_study

    prepare(load_study(tiny_config).data, out)
    return out


def run_workflow(workdir: Path, config: dict, *args: str, check: bool = True, timeout: float = 900,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """snakemake on the repo's Snakefile in `workdir`, with `config` as its config.yaml (and `env`
    added to the environment).

    A run that outlives `timeout` fails with its output and, on SLURM, why its jobs are pending."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:
        queue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %k %T %r %C %m"], capture_output=True,
                               text=True).stdout if has("squeue") else ""
        out, err = ((b or b"").decode(errors="replace") for b in (e.stdout, e.stderr))  # bytes even with text=True
        raise AssertionError(f"{' '.join(cmd)} still running after {timeout:.0f} s:\n{out[-4000:]}\n{err[-4000:]}\n"
                             f"squeue:\n{queue}") from None
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, tiny_config):
    """The tiny study run end to end by Snakemake once; many tests read its outputs (a Layout)."""
    from scaledyn.layout import Layout

    work = tmp_path_factory.mktemp("study")
    run_workflow(work, tiny_config, "--cores", "2")
    return Layout(work / tiny_config["results"])


def log_rows(path) -> list[tuple]:
    """A training log's rows, every column but the wall-clock throughput."""
    with open(path, newline="") as f:
        return [tuple(v for k, v in r.items() if k != "tokens_per_s") for r in csv.DictReader(f)]


def slurm_args(*extra: str) -> list[str]:
    """The workflow's SLURM profile, sized to this 2-CPU node (a group of 4 evaluation jobs, the
    profile's default, would never start) and polled every few seconds rather than the executor's
    40 s before the first status check, which dominate a tiny job's wall time."""
    return ["--group-components", "eval=2", "--profile", str(REPO / "profiles" / "slurm"), "--jobs", "4",
            "--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "2",
            "--seconds-between-status-checks", "3", *extra]


def preempt_on_slurm(work: Path, config: dict, run: str) -> str:
    """Run the workflow for `run` through the SLURM profile, send its train job SIGTERM (as a
    pre-emption does) once 300 steps are logged, and let SLURM requeue it to the end. Returns
    Snakemake's output."""
    from scaledyn.layout import Layout

    work.mkdir(exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           *slurm_args(f"results/runs/{run}/run.json")]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    live_log = Layout(work / "results").run(run).live_log
    t0 = time.time()
    while not (live_log.exists() and sum(1 for _ in open(live_log)) > 300):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300, "training never got going"
        time.sleep(0.2)
    jobid = next(line.split()[0] for line in subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %k"], capture_output=True,
                                                            text=True).stdout.splitlines() if "rule_train" in line)
    subprocess.run(["scancel", "--signal=TERM", jobid], check=True)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def has(cmd: str) -> bool:
    return shutil.which(cmd) is not None
