# The study, validated once by the package (the schema, its defaults, and the cross-field checks;
# every error names the key), its results layout, and the helpers every rule uses. Each rule
# passes its stage's typed options as JSON and nothing else of the config, so editing one stage's
# options re-runs that stage and what depends on it, nothing more.

import re

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from scaledyn.config import load_study

# Under --sdm conda the jobs' environment, not this one, must hold what they import.
STUDY = load_study(
    config,
    jobs_env_here=DeploymentMethod.CONDA
    not in workflow.deployment_settings.deployment_method,
)
L = STUDY.layout
RUNS = list(STUDY.runs)  # trained runs, in the config's size order
SUITES = STUDY.suites  # published checkpoint suites: evaluated, never trained
ALL_RUNS = STUDY.all_runs  # what evaluation, ZSL, the fits and the report cover
STEPS = STUDY.checkpoint_steps
DT1_STEPS = STUDY.dt1_steps
SLURM = STUDY.slurm  # typed: scaledyn.options.SlurmOptions
INTERVENTIONS = list(
    STUDY.cfg["interventions"]
)  # their runs are in RUNS; effects compare them
FIGURES = L.report.FIGURES + (("effects",) if INTERVENTIONS else ())


def one_of(names):
    """A wildcard pattern matching exactly these names (never anything when there are none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


TRAINED = one_of(RUNS)  # rules that make trained runs' files
SUITE = one_of(SUITES)  # rules that make suites' files under the same paths
# Suites with optimizer state take real Δt = 1 steps; the others only the gradient view.
REPLAYED = one_of(n for n, s in SUITES.items() if s.dt1_steps)
UNREPLAYED = one_of(n for n, s in SUITES.items() if not s.dt1_steps)


wildcard_constraints:
    run=one_of(ALL_RUNS),
    step=r"\d+",
    slice=r"\d+",


def train_gpus(run):
    return SLURM.train_gpus(STUDY.runs[run][0])


def train_nodes(run):
    return SLURM.train_nodes(STUDY.runs[run][0])


# Cheap aggregations run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    suite_fetch,
    suite_meta,
    suite_curve,
    run_table,
    fit_scaling,
    zsl_merge,
    report,
