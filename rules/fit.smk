# Loss-deceleration fits need only the training logs; fit options reach only these rules.


rule fit_run:
    input:
        f"{R}/runs/{{run}}/train_log.csv",
    output:
        f"{R}/fits/{{run}}.json",
    params:
        opts=lambda w: (
            f"--smoothing {config['fit']['smoothing']} --subsample {config['fit']['subsample']}"
            f" --transient-steps {config['fit']['transient_steps']} --bootstrap {config['fit']['bootstrap']}"
            f" --alpha {config['fit']['alpha']} --seed {config['fit']['seed']} --input-smoothed no"
        ),
    resources:
        **cluster(gpu=False),
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/fit/{{run}}.log",
    shell:
        "scaledyn fit-curve {input} --out {output} {params.opts} > {log} 2>&1"


rule fit_scaling:
    input:
        fits=expand(f"{R}/fits/{{run}}.json", run=RUNS),
        runs=expand(f"{R}/runs/{{run}}/run.json", run=RUNS),
    output:
        sizes=f"{R}/fits/sizes.csv",
        trends=f"{R}/fits/trends.json",
        summary=f"{R}/fits/scaling.txt",
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/fit/scaling.log",
    shell:
        "scaledyn fit-scaling --fits {input.fits} --runs {input.runs}"
        " --out-sizes {output.sizes} --out-trends {output.trends} --out-summary {output.summary} > {log} 2>&1"
