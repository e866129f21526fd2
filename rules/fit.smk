# Loss-deceleration fits need only the training logs; fit options reach only these rules.


rule fit_run:
    input:
        L.run("{run}").train_log,
    output:
        L.fit("{run}"),
    log:
        L.log("fit", "{run}"),
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=False),
    params:
        options=lambda w: STUDY.fit_options(w.run).to_json(),
    shell:
        "scaledyn fit-curve {input:q} --out {output:q} --options {params.options:q} > {log:q} 2>&1"


rule fit_windows:
    input:
        L.run("{run}").train_log,
    output:
        L.fit_windows("{run}"),
    log:
        L.log("fit", "{run}.windows"),
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=False),
    params:
        options=lambda w: STUDY.fit_options(w.run).to_json(),
    shell:
        "scaledyn fit-windows {input:q} --out {output:q} --options {params.options:q} > {log:q} 2>&1"


rule fit_scaling:
    input:
        fits=[L.fit(r) for r in STUDY.trend_runs],
        runs=[L.run(r).run_json for r in STUDY.trend_runs],
    output:
        sizes=L.fit_sizes,
        seeds=L.fit_seeds,
        trends=L.fit_trends,
        summary=L.fit_summary,
    log:
        L.log("fit", "scaling"),
    conda:
        "../envs/scaledyn.yaml"
    shell:
        "scaledyn fit-scaling --fits {input.fits:q} --runs {input.runs:q} --out-sizes {output.sizes:q}"
        " --out-seeds {output.seeds:q} --out-trends {output.trends:q} --out-summary {output.summary:q}"
        " > {log:q} 2>&1"


# Interventions against their baselines: only in a study that has interventions.
if STUDY.cfg["interventions"]:

    rule effects:
        input:
            runs=[L.run(r).run_json for r in RUNS],
            fits=[L.fit(r) for r in RUNS],
            zsl=L.zsl_table,
            losses=[L.losses.partition("sequences", r, STEPS[-1]) for r in RUNS],
        output:
            L.effects,
        log:
            L.log("fit", "effects"),
        conda:
            "../envs/scaledyn.yaml"
        params:
            losses=L.losses.dir,
        shell:
            "scaledyn effects --runs {input.runs:q} --fits {input.fits:q} --zsl {input.zsl:q}"
            " --losses {params.losses:q} --out {output:q} > {log:q} 2>&1"
