# scaledyn: loss deceleration and zero-sum learning across model sizes.
#   snakemake --cores 2                                                  the embedded default study
#   snakemake --profile profiles/slurm --configfile configs/paper.yaml   the paper on a SLURM cluster

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "src/scaledyn/schema/config.schema.yaml", set_default=True)


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
        f"{R}/losses/runs.parquet",
        f"{R}/fits/trends.json",
        f"{R}/zsl/zsl.parquet",
        f"{R}/report/summary.md",
