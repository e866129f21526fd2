# One job per (size, seed). Outputs are small markers beside the checkpoints, never the checkpoint
# directories: Snakemake deletes a failed job's outputs, and a retry must find the checkpoints it
# resumes from. Exit code 75 means "pre-empted, checkpoint saved": `retries` re-runs the job.


rule train:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        run=f"{R}/runs/{{run}}/run.json",
        log=f"{R}/runs/{{run}}/train_log.csv",
        markers=[f"{R}/runs/{{run}}/checkpoints/step_{s}.json" for s in STEPS],
    params:
        spec=lambda w: STUDY.run_spec(w.run).to_json(),
    threads: 1
    priority: 10  # the critical path: start every training run before evaluating finished ones
    resources:
        **cluster(gpu=True),
        gpu=lambda w: train_gpus(w.run),
        nodes=lambda w: train_nodes(w.run),
        runtime=lambda w, attempt: config["slurm"]["train_runtime_min"] * attempt,
        mem_mb=lambda w, attempt: config["slurm"]["train_mem_mb"] * attempt,
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/train/{{run}}.log",
    shell:
        "scaledyn launch --gpus {resources.gpu} --nodes {resources.nodes} -- train --spec {params.spec:q}"
        " > {log} 2>&1"
