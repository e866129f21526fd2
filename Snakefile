# scaledyn: loss deceleration and zero-sum learning across model sizes.
#   snakemake --cores 2                                                  the embedded default study
#   snakemake --profile profiles/slurm --configfile configs/paper.yaml   the paper on a SLURM cluster
# config.yaml is the study only when no --configfile is given: a preset stands alone, nothing of the
# default study leaks into it. The config is validated once, by the package against
# src/scaledyn/schema/config.schema.yaml (rules/common.smk), which also runs the checks a schema
# cannot express.

import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# The rules import the workflow's own package from this checkout, so parsing needs only Snakemake
# (its usual conda environment) and never picks up another installed scaledyn: the config, layout
# and option modules it reads import no numpy, torch or pandas at the top. Jobs run the scaledyn
# command of their environment: the installed package, or envs/ under --sdm conda.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

# envs/scaledyn.post-deploy.sh installs scaledyn from here into conda environments.
os.environ["SCALEDYN_SOURCE"] = workflow.basedir


envvars:
    "SCALEDYN_SOURCE",


if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/fit.smk"
include: "rules/zsl.smk"
include: "rules/suites.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        L.run_table,
        L.fit_trends,
        L.zsl_table,
        L.report.summary,
