# Figures and tables land in <results>/report/; `snakemake --report report.html` bundles them with
# the captions in report/*.rst. The report reads exactly the inputs declared here.


rule report:
    input:
        runs=[L.run(r).run_json for r in ALL_RUNS],
        logs=[L.run(r).train_log for r in ALL_RUNS],
        fits=[L.fit(r) for r in ALL_RUNS],
        windows=[L.fit_windows(r) for r in ALL_RUNS],
        trends=L.fit_trends,
        zsl=L.zsl_table,
        effects=[L.effects] if INTERVENTIONS else [],
        losses=[
            L.losses.partition("tokens", r, s)
            for r in ALL_RUNS
            for s in STUDY.steps(r)
        ],
    output:
        summary=L.report.summary,
        summary_html=report(
            L.report.summary_html, caption="../report/summary.rst", category="Summary"
        ),
        figures=[
            report(
                L.report.figure(n), caption=f"../report/{n}.rst", category="Figures"
            )
            for n in FIGURES
        ],
        pdfs=[L.report.figure(n, "pdf") for n in FIGURES],
        table=report(
            L.report.table("csv"), caption="../report/fits.rst", category="Tables"
        ),
        table_html=report(
            L.report.table("html"), caption="../report/fits.rst", category="Tables"
        ),
        table_md=L.report.table("md"),
        table_tex=L.report.table("tex"),
    log:
        L.log("report"),
    conda:
        "../envs/scaledyn.yaml"
    params:
        run_dirs=[L.run(r).dir for r in ALL_RUNS],
        losses=L.losses.dir,
        out=L.report.dir,
        options=STUDY.report.to_json(),
    shell:
        "scaledyn report --run-dirs {params.run_dirs:q} --fits {input.fits:q} --windows {input.windows:q} --trends {input.trends:q}"
        " --zsl {input.zsl:q} --losses {params.losses:q} --options {params.options:q} --effects {input.effects:q} --out {params.out:q}"
        " > {log:q} 2>&1"
