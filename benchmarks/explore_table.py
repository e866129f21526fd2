"""The exploration table of docs/exploration.md: one row per run of one or more finished studies,
with what the calibrated test says of its training curve, how that moves with the fit window, and
the schedule verdict (t_d on learning-rate time, mapped to steps) where the fit has one.

    snakemake --cores 2 --configfile CANDIDATE.yaml results/fits/<run>.json results/fits/<run>.windows.csv
    python -m benchmarks.explore_table LABEL=RESULTS_DIR [...] [--readme docs/exploration.md] [--block NAME]
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from benchmarks import replace_block
from scaledyn.layout import Layout
from scaledyn.stats.fit import read_fit


def rows(label: str, results: Path) -> list[dict]:
    study = Layout(results)
    out = []
    for fit_path in sorted(study.fits.glob("*.json")):
        run = fit_path.stem
        if not study.run(run).run_json.exists():
            continue
        meta = json.loads(study.run(run).run_json.read_text())
        fit = read_fit(fit_path)
        d, ci = fit.derived(), fit.conf_int()
        windows = pd.read_csv(study.fit_windows(run)) if study.fit_windows(run).exists() else pd.DataFrame()
        decel = windows[windows["verdict"] == "deceleration"] if len(windows) else windows
        bench = study.benchmark("train", run)
        minutes = float(pd.read_csv(bench, sep="\t")["s"].iloc[0]) / 60 if bench.exists() else None
        out.append({
            "candidate": label, "run": run, "N": meta["non_embedding_params"],
            "share": meta["non_embedding_params"] / meta["total_params"], "verdict": fit.verdict,
            "p": fit.test.p_value, "t_d": d["t_d"], "t_d CI": ci["t_d"], "c0/r_d": d["slope_ratio"],
            "windows": f"{len(decel)}/{len(windows)} decel." if len(windows) else "",
            "t_d range": f"{decel['t_d'].min():.0f}–{decel['t_d'].max():.0f}" if len(decel) else "",
            "schedule": fit.schedule, "train min": minutes})
    return sorted(out, key=lambda r: (r["N"], r["run"]))


def markdown(table: list[dict]) -> str:
    lines = ["| candidate | run | N (non-emb.) | share | verdict | p | t_d [95% CI] | c0/r_d | windows | t_d across windows "
             "| schedule verdict | S axis | t_d on S, in steps [95% CI] | train (min, 1 core) |",
             "|---|---|---:|---:|---|---:|---|---:|---|---|---|---|---|---:|"]
    for r in table:
        ci = r["t_d CI"]
        t_d = f"{r['t_d']:.0f} [{ci[0]:.0f}, {ci[1]:.0f}]" if ci else f"{r['t_d']:.0f}"
        sched = r["schedule"] or {"verdict": "", "lr_area": {"verdict": "", "t_d_steps": None}}
        lr = sched["lr_area"]
        via = "" if lr["t_d_steps"] is None else (f"{lr['t_d_steps']:.0f} [{lr['ci_t_d_steps'][0]:.0f}, "
                                                  f"{lr['ci_t_d_steps'][1]:.0f}]")
        ratio = "" if r["c0/r_d"] is None else f"{r['c0/r_d']:.2f}"
        p = "" if r["p"] is None else f"{r['p']:.3g}"
        minutes = "" if r["train min"] is None else f"{r['train min']:.1f}"
        lines.append(f"| {r['candidate']} | {r['run']} | {r['N']:,} | {r['share']:.0%} | {r['verdict']} | {p} | {t_d} | "
                     f"{ratio} | {r['windows']} | {r['t_d range']} | {sched['verdict']} | {lr['verdict']} | {via} | {minutes} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", help="LABEL=RESULTS_DIR")
    p.add_argument("--readme", type=Path, help="replace a block of this Markdown file")
    p.add_argument("--block", default="exploration", help="the block to replace (<!-- BLOCK:start --> ... end)")
    args = p.parse_args(argv)
    table = [r for s in args.studies for r in rows(s.split("=", 1)[0], Path(s.split("=", 1)[1]))]
    text = markdown(table)
    print(text)
    if args.readme:
        replace_block(args.readme, args.block, text)


if __name__ == "__main__":
    main()
