# Zero-sum learning: dt = t from the exported losses (no model needed), dt = 1 from checkpoints.


rule zsl_dtt:
    input:
        expand(f"{R}/losses/tokens/run={{{{run}}}}/step={{step}}/part-0.parquet", step=STEPS),
    output:
        f"{R}/zsl/dtt/{{run}}.parquet",
    resources:
        **cluster(gpu=False),
    params:
        results=lambda w, output: root_of(output[0]),
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/zsl/dtt_{{run}}.log",
    shell:
        "scaledyn zsl-dtt --losses {params.results}/losses --run {wildcards.run} --out {output} > {log} 2>&1"


rule zsl_dt1:
    input:
        marker=f"{R}/runs/{{run}}/checkpoints/step_{{step}}.json",
        manifest=rules.prepare_data.output.manifest,
    output:
        table=f"{R}/zsl/dt1/{{run}}/step_{{step}}.parquet",
        changes=f"{R}/zsl/changes/run={{run}}/step={{step}}/part-0.parquet",
    params:
        results=lambda w, output: root_of(output[0]),
        opts=lambda w: (
            ("" if config["zsl"]["gradient_view"] else "--no-gradient-view ")
            + f"--coordinate-max-params {config['zsl']['coordinate_max_params']}"
            f" --coordinate-tokens {config['zsl']['coordinate_tokens']}"
            f" --batch-size {config['evaluate']['batch_size']}"
        ),
    resources:
        **cluster(gpu=True),
        gpu=config["slurm"]["eval_gpus"],
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/zsl/dt1_{{run}}_{{step}}.log",
    shell:
        "scaledyn zsl-dt1 --run-dir {params.results}/runs/{wildcards.run} --step {wildcards.step} --data {params.results}/data"
        " --out {output.table} --changes-root {params.results}/zsl {params.opts} > {log} 2>&1"


rule zsl_merge:
    input:
        expand(f"{R}/zsl/dtt/{{run}}.parquet", run=RUNS),
        expand(f"{R}/zsl/dt1/{{run}}/step_{{step}}.parquet", run=RUNS, step=DT1_STEPS),
    output:
        f"{R}/zsl/zsl.parquet",
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/zsl/merge.log",
    shell:
        "scaledyn zsl-merge {input} --out {output} > {log} 2>&1"
