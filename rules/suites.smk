# Published checkpoint suites (the study's `suites:`): each listed revision is fetched once, on the
# machine that runs Snakemake (cluster nodes often have no internet), then evaluated by its own job
# like a checkpoint of ours; the suite's curve and run.json stand where a trained run has its own,
# so the ZSL, fit and report rules treat suites and trained runs alike.


rule suite_fetch:
    input:
        rules.prepare_tokenizer.output,
    output:
        L.run("{run}").revision("{step}"),
    log:
        L.log("suites", "{run}", "fetch_step_{step}"),
    wildcard_constraints:
        run=SUITE,
    retries: 2  # a download that failed part-way resumes on the next try
    conda:
        "../envs/scaledyn.yaml"
    params:
        suite=lambda w: SUITES[w.run].to_json(),
        data=L.data.dir,
    shell:
        "scaledyn suite-fetch --suite {params.suite:q} --step {wildcards.step:q} --data {params.data:q} --out {output:q}"
        " > {log:q} 2>&1"


rule suite_meta:
    input:
        revision=lambda w: L.run(w.run).revision(max(SUITES[w.run].steps)),
        manifest=rules.prepare_data.output.manifest,
    output:
        L.run("{run}").run_json,
    log:
        L.log("suites", "{run}", "meta"),
    wildcard_constraints:
        run=SUITE,
    conda:
        "../envs/scaledyn.yaml"
    params:
        data=L.data.dir,
    shell:
        "scaledyn suite-meta --revision {input.revision:q} --data {params.data:q} --out {output:q} > {log:q} 2>&1"


rule suite_evaluate:
    input:
        revision=L.run("{run}").revision("{step}"),
        manifest=rules.prepare_data.output.manifest,
    output:
        sequences=L.losses.partition("sequences", "{run}", "{step}"),
        tokens=L.losses.partition("tokens", "{run}", "{step}"),
    log:
        L.log("evaluate", "{run}", "step_{step}"),
    benchmark:
        L.benchmark("evaluate", "{run}", "step_{step}")
    wildcard_constraints:
        run=SUITE,
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=True),
        gpu=SLURM.eval_gpus,
    params:
        data=L.data.dir,
        losses=L.losses.dir,
        options=STUDY.evaluate.to_json(),
    shell:
        "scaledyn suite-evaluate --revision {input.revision:q} --data {params.data:q} --out {params.losses:q}"
        " --options {params.options:q} > {log:q} 2>&1"


rule suite_curve:
    input:
        lambda w: SUITES[w.run].curve
        or [L.losses.partition("sequences", w.run, s) for s in SUITES[w.run].steps],
    output:
        L.run("{run}").train_log,
    log:
        L.log("suites", "{run}", "curve"),
    wildcard_constraints:
        run=SUITE,
    conda:
        "../envs/scaledyn.yaml"
    params:
        suite=lambda w: SUITES[w.run].to_json(),
        losses=L.losses.dir,
    shell:
        "scaledyn suite-curve --suite {params.suite:q} --losses {params.losses:q} --out {output:q} > {log:q} 2>&1"


rule suite_gradient:
    input:
        revision=L.run("{run}").revision("{step}"),
        manifest=rules.prepare_data.output.manifest,
    output:
        L.zsl_dt1("{run}", "{step}"),
    log:
        L.log("zsl", "gradient_{run}_{step}"),
    wildcard_constraints:
        run=UNREPLAYED,
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=True),
        gpu=SLURM.eval_gpus,
    params:
        data=L.data.dir,
        options=STUDY.zsl.to_json(),
    shell:
        "scaledyn suite-gradient --revision {input.revision:q} --data {params.data:q} --out {output:q}"
        " --options {params.options:q} > {log:q} 2>&1"


# A suite published with its optimizer state (OLMo's unsharded format) takes the real Δt = 1
# step at each of its dt1_steps, one job per revision, as zsl_dt1 does for trained runs.
rule suite_dt1:
    input:
        revision=L.run("{run}").revision("{step}"),
        manifest=rules.prepare_data.output.manifest,
    output:
        table=L.zsl_dt1("{run}", "{step}"),
        changes=L.change_partition("{run}", "{step}"),
    log:
        L.log("zsl", "dt1_{run}_{step}"),
    benchmark:
        L.benchmark("zsl_dt1", "{run}_step_{step}")
    wildcard_constraints:
        run=REPLAYED,
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=True),
        gpu=SLURM.eval_gpus,
    params:
        data=L.data.dir,
        changes=L.changes,
        options=STUDY.zsl.to_json(),
    shell:
        "scaledyn suite-dt1 --revision {input.revision:q} --data {params.data:q} --out {output.table:q}"
        " --changes {params.changes:q} --options {params.options:q} > {log:q} 2>&1"
