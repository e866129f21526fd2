rule prepare_data:
    output:
        manifest=L.data.manifest,
        train=L.data.split("train"),
        eval=L.data.split("eval"),
        heldout=L.data.split("heldout"),
        tokenizer=L.data.tokenizer_json,
    params:
        options=STUDY.data.to_json(),
        out=L.data.dir,
    resources:
        **cluster(gpu=False),
    conda:
        "../envs/scaledyn.yaml"
    log:
        L.log("prepare_data"),
    shell:
        "scaledyn prepare-data --options {params.options:q} --out {params.out:q} > {log:q} 2>&1"
