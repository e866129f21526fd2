# Trained runs' checkpoints are evaluated inside their training job (rules/train.smk), suites'
# revisions by suite_evaluate (rules/suites.smk); both write the same loss dataset. What is left
# here is the run table over all of them.


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
