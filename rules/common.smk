# The study, validated once by the package (the same schema plus the cross-field checks), and the
# helpers every rule uses. Rules pass only their own config slice as params, so editing one stage's
# options re-runs that stage and what depends on it, nothing else.

import json
from pathlib import Path

from scaledyn.config import load_study

STUDY = load_study(config)
R = str(STUDY.results)
RUNS = list(STUDY.runs)  # in the config's size order
STEPS = STUDY.checkpoint_steps
DT1_STEPS = STUDY.dt1_steps


wildcard_constraints:
    run="|".join(RUNS) or "NONE",
    step=r"\d+",


def root_of(path):
    """The results directory a file lies in, derived from the file itself (no hard-coded prefix)."""
    p = Path(path)
    return str(p.parents[len(p.relative_to(R).parts) - 1])


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def cluster(gpu=False):
    """slurm_partition / slurm_account resources from the study's slurm section (only those set)."""
    s = config["slurm"]
    res = {"slurm_partition": (s["gpu_partition"] or s["partition"]) if gpu else s["partition"], "slurm_account": s["account"]}
    return {k: v for k, v in res.items() if v}


def train_gpus(run):
    size, _ = STUDY.runs[run]
    s = config["slurm"]
    return s["gpus"].get(size, s["default_gpus"])


def train_nodes(run):
    size, _ = STUDY.runs[run]
    return config["slurm"]["nodes"].get(size, 1)


# Cheap aggregations run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    run_table,
    fit_scaling,
    zsl_merge,
    report,
