# One small job per (run, checkpoint). The SLURM profile groups them (groups/group-components) so a
# cluster runs them as a few jobs; locally they run side by side.


rule evaluate:
    input:
        marker=f"{R}/runs/{{run}}/checkpoints/step_{{step}}.json",
        manifest=rules.prepare_data.output.manifest,
    output:
        sequences=f"{R}/losses/sequences/run={{run}}/step={{step}}/part-0.parquet",
        tokens=f"{R}/losses/tokens/run={{run}}/step={{step}}/part-0.parquet",
    params:
        results=lambda w, output: root_of(output[0]),
        opts=lambda w: (
            f"--batch-size {config['evaluate']['batch_size']} --token-dtype {config['evaluate']['token_dtype']}"
            + ("" if config["evaluate"]["heldout"] else " --no-heldout")
        ),
        study=config["study"],
    resources:
        **cluster(gpu=True),
        gpu=config["slurm"]["eval_gpus"],
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/evaluate/{{run}}/step_{{step}}.log",
    shell:
        "scaledyn evaluate --run-dir {params.results}/runs/{wildcards.run} --step {wildcards.step} --data {params.results}/data"
        " --out {params.results}/losses --study {params.study} --force {params.opts} > {log} 2>&1"


rule run_table:
    input:
        runs=expand(f"{R}/runs/{{run}}/run.json", run=RUNS),
    output:
        f"{R}/losses/runs.parquet",
    params:
        dirs=expand(f"{R}/runs/{{run}}", run=RUNS),
        study=config["study"],
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/run_table.log",
    shell:
        "scaledyn run-table {params.dirs} --out {output} --study {params.study} > {log} 2>&1"
