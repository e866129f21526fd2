rule prepare_data:
    output:
        manifest=f"{R}/data/manifest.json",
        train=f"{R}/data/train.npy",
        eval=f"{R}/data/eval.npy",
        heldout=f"{R}/data/heldout.npy",
        tokenizer=f"{R}/data/tokenizer/tokenizer.json",
    params:
        results=lambda w, output: root_of(output[0]),
        data=as_json(config["data"]),
        batch_size=config["train"]["batch_size"],
    resources:
        **cluster(gpu=False),
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/prepare_data.log",
    shell:
        "scaledyn prepare-data --data {params.data:q} --batch-size {params.batch_size}"
        " --out {params.results}/data > {log} 2>&1"
