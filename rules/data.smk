# Preparation as jobs that run side by side: the tokenizer, one job per slice of the source
# (resumable at shard boundaries), then the index (evaluation and held-out sets, the manifest).


rule prepare_tokenizer:
    output:
        L.data.tokenizer_json,
    log:
        L.log("prepare_data", "tokenizer"),
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=False),
    params:
        options=STUDY.data.to_json(),
        out=L.data.dir,
    shell:
        "scaledyn prepare-data --stage tokenizer --options {params.options:q} --out {params.out:q} > {log:q} 2>&1"


rule prepare_slice:
    input:
        rules.prepare_tokenizer.output,
    output:
        L.data.slice_record("{slice}"),
    log:
        L.log("prepare_data", "slice_{slice}"),
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=False),
    params:
        options=STUDY.data.to_json(),
        out=L.data.dir,
    shell:
        "scaledyn prepare-data --stage slice --slice {wildcards.slice:q} --options {params.options:q} --out {params.out:q}"
        " > {log:q} 2>&1"


rule prepare_data:
    input:
        [L.data.slice_record(k) for k in range(STUDY.data_slices)],
    output:
        manifest=L.data.manifest,
        eval=L.data.split("eval"),
        heldout=L.data.split("heldout"),
        excluded=L.data.excluded,
    log:
        L.log("prepare_data", "index"),
    conda:
        "../envs/scaledyn.yaml"
    resources:
        **SLURM.resources(gpu=False),
    params:
        options=STUDY.data.to_json(),
        out=L.data.dir,
    shell:
        "scaledyn prepare-data --stage index --options {params.options:q} --out {params.out:q} > {log:q} 2>&1"
