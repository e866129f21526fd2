# Figures and tables land in results/report/; `snakemake --report report.html` bundles them with
# the captions in report/*.rst.

FIG = ["loss_curves", "scaling_trends", "zsl_dtt", "zsl_dt1", "d_vs_m", "loss_change_hist"]


rule report:
    input:
        logs=expand(f"{R}/runs/{{run}}/train_log.csv", run=RUNS),
        fits=expand(f"{R}/fits/{{run}}.json", run=RUNS),
        scaling=f"{R}/fits/trends.json",
        zsl=f"{R}/zsl/zsl.parquet",
        losses=expand(f"{R}/losses/tokens/run={{run}}/step={{step}}/part-0.parquet", run=RUNS, step=STEPS),
    output:
        summary=report(f"{R}/report/summary.md", caption="../report/summary.rst", category="Summary"),
        figures=[
            report(f"{R}/report/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in FIG
        ],
        pdfs=[f"{R}/report/{name}.pdf" for name in FIG],
        table=report(f"{R}/report/fits.csv", caption="../report/fits.rst", category="Tables"),
        table_md=f"{R}/report/fits.md",
        table_tex=f"{R}/report/fits.tex",
    params:
        results=lambda w, output: root_of(output[0]),
        runs=RUNS,
        hist=config["report"]["histogram_steps"],
    conda:
        "../envs/scaledyn.yaml"
    log:
        f"{R}/logs/report.log",
    shell:
        "scaledyn report --results {params.results} --runs {params.runs} --histogram-steps {params.hist}"
        " --out {params.results}/report > {log} 2>&1"
