# Zero-sum learning: dt = t from the exported losses (no model needed), dt = 1 from checkpoints.


rule zsl_dtt:
    input:
        lambda w: [L.losses.partition("tokens", w.run, s) for s in STUDY.steps(w.run)],
    output:
        L.zsl_dtt("{run}"),
    log:
        L.log("zsl", "dtt_{run}"),
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=False),
    params:
        losses=L.losses.dir,
        pairs=lambda w: "listed" if w.run in SUITES else "log2",
    shell:
        "scaledyn zsl-dtt --losses {params.losses:q} --run {wildcards.run:q} --pairs {params.pairs:q} --out {output:q} > {log:q} 2>&1"


# One job per run for all its one-step checkpoints: the start-up (Python, torch, transformers)
# once per run, not once per checkpoint. Without one-step checkpoints there is no such rule (its
# outputs would not name the run).
if DT1_STEPS:

    rule zsl_dt1:
        input:
            markers=[L.run("{run}").marker(s) for s in DT1_STEPS],
            manifest=rules.prepare_data.output.manifest,
        output:
            tables=[L.zsl_dt1("{run}", s) for s in DT1_STEPS],
            changes=[L.change_partition("{run}", s) for s in DT1_STEPS],
        log:
            L.log("zsl", "dt1_{run}"),
        benchmark:
            L.benchmark("zsl_dt1", "{run}")
        wildcard_constraints:
            run=TRAINED,
        conda:
            "../envs/scaledyn.yaml"
        resources:
            **SLURM.resources(gpu=True),
            gpu=SLURM.eval_gpus,
            mem_mb=lambda w: STUDY.onestep_mem_mb(w.run),
        params:
            run_dir=lambda w: L.run(w.run).dir,
            steps=DT1_STEPS,
            data=L.data.dir,
            out=lambda w: L.zsl_dt1(w.run, "{step}"),
            changes=L.changes,
            options=STUDY.zsl.to_json(),
        shell:
            "scaledyn zsl-dt1 --run-dir {params.run_dir:q} --step {params.steps:q} --data {params.data:q}"
            " --out {params.out:q} --changes {params.changes:q} --options {params.options:q} > {log:q} 2>&1"


rule zsl_merge:
    input:
        [L.zsl_dtt(r) for r in ALL_RUNS],
        [L.zsl_dt1(r, s) for r in RUNS for s in DT1_STEPS],
        [
            L.zsl_dt1(n, s)
            for n, suite in SUITES.items()
            for s in suite.gradient_steps + suite.dt1_steps
        ],
    output:
        L.zsl_table,
    log:
        L.log("zsl", "merge"),
    conda:
        "../envs/scaledyn.yaml"
    shell:
        "scaledyn zsl-merge {input:q} --out {output:q} > {log:q} 2>&1"
