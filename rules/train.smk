# One job per (size, seed). It also evaluates each scheduled checkpoint right after writing it
# (scaledyn.analysis.evaluate.Evaluator), so the per-checkpoint loss files come out of the
# training process: no job per checkpoint that mostly starts Python. Changed evaluation options
# re-run this job, which then resumes the finished run, trains nothing, and evaluates again.
# Outputs are small markers beside the checkpoints, never the checkpoint directories: Snakemake
# deletes a failed job's outputs, and a retry must find the checkpoints it resumes from (it
# evaluates first those whose loss files went with the failed attempt). Exit code 75 means
# "pre-empted, checkpoint saved": `retries` re-runs the job.


rule train:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        run=L.run("{run}").run_json,
        log=L.run("{run}").train_log,
        markers=[L.run("{run}").marker(s) for s in STEPS],
        sequences=[L.losses.partition("sequences", "{run}", s) for s in STEPS],
        tokens=[L.losses.partition("tokens", "{run}", s) for s in STEPS],
    log:
        L.log("train", "{run}"),
    benchmark:
        L.benchmark("train", "{run}")
    wildcard_constraints:
        run=TRAINED,
    priority: 10  # the critical path: start every training run before the analyses of finished ones
    conda:
        "../envs/scaledyn.yaml"
    threads: 1
    resources:
        **SLURM.resources(gpu=True),
        gpu=lambda w: train_gpus(w.run),
        nodes=lambda w: train_nodes(w.run),
        # A multi-node job launches its own srun (scaledyn.train.launch): `mpi` keeps the SLURM executor
        # from wrapping it in another step, `tasks` asks for one per node, and tasks_per_gpu=0
        # stops the executor from reading `tasks` as tasks per GPU on GPU jobs.
        mpi=lambda w: "srun" if train_nodes(w.run) > 1 else None,
        tasks=lambda w: train_nodes(w.run) if train_nodes(w.run) > 1 else None,
        tasks_per_gpu=0,
        runtime=lambda w, attempt: SLURM.train_runtime_min * attempt,
        mem_mb=lambda w, attempt: SLURM.train_mem_mb * attempt,
    params:
        spec=lambda w: STUDY.run_spec(w.run).to_json(),
        losses=L.losses.dir,
        evaluate=STUDY.evaluate.to_json(),
    shell:
        "scaledyn launch --gpus {resources.gpu:q} --nodes {resources.nodes:q} -- train --spec {params.spec:q}"
        " --losses {params.losses:q} --evaluate {params.evaluate:q} > {log:q} 2>&1"
