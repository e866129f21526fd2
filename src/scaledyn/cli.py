"""`scaledyn` console script: one subcommand per workflow stage, so rules stay one line long."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _study(args):
    from .config import load_study

    return load_study(args.config)


def cmd_validate(args) -> None:
    study = _study(args)
    print(json.dumps({"runs": sorted(study.runs), "checkpoint_steps": study.checkpoint_steps}, indent=2))


def cmd_prepare_data(args) -> None:
    from .config import validate_schema
    from .data import prepare

    if args.data:  # the workflow passes only the data section, so other edits don't re-prepare
        data, batch_size = validate_schema({"data": json.loads(args.data)})["data"], args.batch_size
        out = Path(args.out)
    else:
        study = _study(args)
        data, batch_size = study.cfg["data"], study.cfg["train"]["batch_size"]
        out = Path(args.out) if args.out else study.data_dir
    m = prepare(data, batch_size, out)
    print(f"{out}: {m['n_tokens']:,} tokens, vocabulary {m['tokenizer']['vocab_size']}, "
          f"{m['splits']['train']['sequences']:,} training sequences of {m['seq_len']}")


def _spec(args):
    from .config import RunSpec

    if args.spec:
        return RunSpec.from_json(args.spec)
    study = _study(args)
    if args.run not in study.runs:
        sys.exit(f"scaledyn: unknown run {args.run!r}; the study's runs are {sorted(study.runs)}")
    return study.run_spec(args.run)


def cmd_train(args) -> None:
    from .train import train

    train(_spec(args))


def cmd_launch(args) -> None:
    from .launch import run

    run(args.command, gpus=args.gpus, nodes=args.nodes, port=args.port, dry_run=args.dry_run)


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate_checkpoint

    evaluate_checkpoint(
        args.run_dir, args.step, args.data, args.out, batch_size=args.batch_size, token_dtype=args.token_dtype,
        heldout=not args.no_heldout, study=args.study, force=args.force,
    )


def cmd_run_table(args) -> None:
    from .losses import write_run_table

    write_run_table(args.runs, args.out, study=args.study)


def cmd_export(args) -> None:
    from .losses import export

    print(export(args.losses, args.out, runs=args.runs))


def cmd_fit_curve(args) -> None:
    from .fit import FitOptions, fit_curve_file

    options = FitOptions(smoothing=args.smoothing, subsample=args.subsample, transient_steps=args.transient_steps,
                         input_smoothed=args.input_smoothed, on_duplicate=args.on_duplicate, bootstrap=args.bootstrap,
                         alpha=args.alpha, seed=args.seed)
    print(fit_curve_file(args.input, args.out, options).summary(), end="")


def cmd_fit_scaling(args) -> None:
    from .trends import fit_scaling_files

    fit_scaling_files(args.fits, args.runs, args.out_sizes, args.out_trends, args.out_summary)
    print(Path(args.out_summary).read_text(), end="")


def cmd_zsl_dtt(args) -> None:
    from .zsl import dtt_table

    dtt_table(args.losses, args.run, args.out)


def cmd_zsl_dt1(args) -> None:
    from .onestep import dt1_analysis

    dt1_analysis(args.run_dir, args.step, args.data, args.out, args.changes_root, gradient_view=not args.no_gradient_view,
                 coordinate_max_params=args.coordinate_max_params, coordinate_tokens=args.coordinate_tokens,
                 eval_batch_size=args.batch_size)


def cmd_zsl_merge(args) -> None:
    from .zsl import merge_tables

    merge_tables(args.inputs, args.out)


def cmd_report(args) -> None:
    from .report import build_report

    build_report(args.results, args.runs, args.out, histogram_steps=args.histogram_steps)


def _at_least(n: int):
    def parse(text: str) -> int:
        v = int(text)
        if v < n:
            raise argparse.ArgumentTypeError(f"{v} is fewer than {n}: a bootstrap p-value cannot reach 0.05 with fewer draws")
        return v

    return parse


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="scaledyn", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("validate", cmd_validate, "Validate a study config and list its runs and checkpoint steps.")
    sp.add_argument("--config", default="config.yaml")

    sp = add("prepare-data", cmd_prepare_data, "Tokenize the corpus into train/eval/held-out arrays.")
    sp.add_argument("--config", default="config.yaml")
    sp.add_argument("--data", help="the config's data section as JSON (what the workflow passes); needs --out")
    sp.add_argument("--batch-size", type=int, default=16, help="held-out batch size (= train.batch_size), with --data")
    sp.add_argument("--out", help="data directory (default: <results>/data)")

    sp = add("train", cmd_train, "Train one run; resumes from its newest complete checkpoint.")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--spec", help="run spec as JSON (what the workflow passes)")
    g.add_argument("--run", help="run name from --config, e.g. tiny-11k_s0")
    sp.add_argument("--config", default="config.yaml")

    sp = add("launch", cmd_launch, "Run a scaledyn subcommand under accelerate launch (multi-GPU, multi-node via srun).")
    sp.add_argument("--gpus", type=int, default=0, help="GPUs per node (0 = CPU)")
    sp.add_argument("--nodes", type=int, default=1)
    sp.add_argument("--port", type=int, default=29500)
    sp.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    sp.add_argument("command", nargs=argparse.REMAINDER, help="-- then the scaledyn subcommand and its arguments")

    sp = add("evaluate", cmd_evaluate, "Per-token losses of one checkpoint into the Parquet dataset.")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("--step", type=int, required=True)
    sp.add_argument("--data", required=True, help="prepared data directory")
    sp.add_argument("--out", required=True, help="losses dataset root")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--token-dtype", choices=["float32", "float16"], default="float32")
    sp.add_argument("--no-heldout", action="store_true")
    sp.add_argument("--study", default="")
    sp.add_argument("--force", action="store_true", help="re-evaluate even if the partition exists")

    sp = add("run-table", cmd_run_table, "Write the run table (one row per run) next to the losses.")
    sp.add_argument("runs", nargs="+", help="run directories")
    sp.add_argument("--out", required=True)
    sp.add_argument("--study", default="")

    sp = add("export", cmd_export, "Pack the losses dataset, run table and schema for sharing.")
    sp.add_argument("--losses", required=True)
    sp.add_argument("--out", required=True, help="directory, or a .tar/.tar.gz/.zip archive")
    sp.add_argument("--runs", nargs="*", help="only these runs")

    sp = add("fit-curve", cmd_fit_curve, "Test a step,loss CSV for an abrupt deceleration and fit the broken power law.")
    sp.add_argument("input", help="CSV with columns step and loss (other columns are ignored)")
    sp.add_argument("--out", required=True, help="FIT.json to write")
    sp.add_argument("--smoothing", choices=["log-ma", "none"], default="log-ma")
    sp.add_argument("--subsample", choices=["log", "none"], default="log")
    sp.add_argument("--transient-steps", type=float, default=100, help="fit only steps above this")
    sp.add_argument("--input-smoothed", choices=["auto", "no", "log-ma", "other"], default="auto",
                    help="was the curve smoothed before? auto: log-subsampled steps mean yes (log-ma)")
    sp.add_argument("--on-duplicate", choices=["last", "first", "mean", "error"], default="last",
                    help="a step logged twice with different losses (a resumed run): which value to keep")
    sp.add_argument("--bootstrap", type=_at_least(19), default=200, help="draws for the test and the intervals")
    sp.add_argument("--alpha", type=float, default=0.05, help="significance level of the break test")
    sp.add_argument("--seed", type=int, default=0)

    sp = add("fit-scaling", cmd_fit_scaling, "Trends of L_d, r_d and c0 with log N across sizes (weighted by their uncertainty).")
    sp.add_argument("--fits", nargs="+", required=True)
    sp.add_argument("--runs", nargs="+", required=True, help="run.json files, same order as --fits")
    sp.add_argument("--out-sizes", required=True, help="per-run table (CSV)")
    sp.add_argument("--out-trends", required=True, help="the trends (JSON, ScalingTrend.from_json)")
    sp.add_argument("--out-summary", required=True)

    sp = add("zsl-dtt", cmd_zsl_dtt, "D, M, |dL| between consecutive checkpoints from the exported losses.")
    sp.add_argument("--losses", required=True)
    sp.add_argument("--run", required=True)
    sp.add_argument("--out", required=True)

    sp = add("zsl-dt1", cmd_zsl_dt1, "One optimizer step from a checkpoint on each held-out batch.")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("--step", type=int, required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--out", required=True, help="metrics table (.parquet; a .csv is written beside it)")
    sp.add_argument("--changes-root", required=True, help="dataset root for the per-token loss changes (hive: run=, step=)")
    sp.add_argument("--no-gradient-view", action="store_true")
    sp.add_argument("--coordinate-max-params", type=int, default=2_000_000)
    sp.add_argument("--coordinate-tokens", type=int, default=256)
    sp.add_argument("--batch-size", type=int, default=64)

    sp = add("zsl-merge", cmd_zsl_merge, "Concatenate ZSL tables into one (Parquet + CSV).")
    sp.add_argument("inputs", nargs="+")
    sp.add_argument("--out", required=True)

    sp = add("report", cmd_report, "Figures, tables and the summary for a finished study.")
    sp.add_argument("--results", required=True, help="the study's results directory")
    sp.add_argument("--runs", nargs="+", required=True)
    sp.add_argument("--histogram-steps", nargs="*", type=int, default=[])
    sp.add_argument("--out", required=True, help="report directory")

    args = p.parse_args(argv)
    from .errors import ScaledynError

    try:
        args.fn(args)
    except ScaledynError as e:
        sys.exit(f"scaledyn {args.cmd}: error: {e}")


if __name__ == "__main__":
    main()
