# scaledyn: loss deceleration and zero-sum learning across model sizes.
#   snakemake --cores 2                                                  the embedded default study
#   snakemake --profile profiles/slurm --configfile configs/paper.yaml   the paper on a SLURM cluster
# config.yaml is the study only when no --configfile is given: a preset stands alone, nothing of the
# default study leaks into it. The config is validated once, by the package against
# src/scaledyn/schema/config.schema.yaml (rules/common.smk), which also runs the checks a schema
# cannot express.

from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/fit.smk"
include: "rules/zsl.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        L.losses.run_table,
        L.fit_trends,
        L.zsl_table,
        L.report.summary,
