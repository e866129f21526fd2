# One small job per (run, checkpoint). The SLURM profile groups them (groups/group-components) so a
# cluster runs them as a few jobs; locally they run side by side.


rule evaluate:
    input:
        marker=L.run("{run}").marker("{step}"),
        manifest=rules.prepare_data.output.manifest,
    output:
        sequences=L.losses.partition("sequences", "{run}", "{step}"),
        tokens=L.losses.partition("tokens", "{run}", "{step}"),
    log:
        L.log("evaluate", "{run}", "step_{step}"),
    benchmark:
        L.benchmark("evaluate", "{run}", "step_{step}")
    wildcard_constraints:
        run=TRAINED,
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=True),
        gpu=SLURM.eval_gpus,
    params:
        run_dir=lambda w: L.run(w.run).dir,
        data=L.data.dir,
        losses=L.losses.dir,
        options=STUDY.evaluate.to_json(),
        study=STUDY.cfg["study"],
    shell:
        "scaledyn evaluate --run-dir {params.run_dir:q} --step {wildcards.step:q} --data {params.data:q}"
        " --out {params.losses:q} --study {params.study:q} --force --options {params.options:q} > {log:q} 2>&1"


rule run_table:
    input:
        runs=[L.run(r).run_json for r in ALL_RUNS],
    output:
        table=L.run_table,
        schema=L.schema_doc,
    log:
        L.log("run_table"),
    conda:
        "../envs/scaledyn.yaml"
    params:
        dirs=[L.run(r).dir for r in ALL_RUNS],
        study=STUDY.cfg["study"],
    shell:
        "scaledyn run-table {params.dirs:q} --out {output.table:q} --study {params.study:q} > {log:q} 2>&1"
