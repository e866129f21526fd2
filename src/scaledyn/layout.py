"""Every path of a study's results, in one place: the rules, the stages, the report and the tests
ask here and assemble no path of their own.

    <results>/data/            manifest.json, tokenizer/, token arrays          (DataPaths)
    <results>/runs/<run>/      run.json, train_log.csv, checkpoints/, state/    (RunPaths)
                               a suite's: run.json, train_log.csv (its curve), revisions/
    <results>/losses/          sequences/ and tokens/: one Parquet file per (run, checkpoint)
    <results>/runs.parquet     one row per run; <results>/schema.json documents every table
    <results>/zsl/             zsl.parquet (all metrics), dtt/, dt1/, changes/ (laid out like losses)
    <results>/fits/            <run>.json, <run>.windows.csv, sizes.csv, seeds.csv, trends.json, scaling.txt
    <results>/report/          figures, tables, summary
    <results>/logs/            one log per job
    <results>/benchmarks/      Snakemake's time and memory of every train, evaluate and one-step job

Methods take wildcard strings too, so a rule writes `L.fit("{run}")`.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import DataError

GRANULARITIES = ("sequences", "tokens")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # the schema's pattern for size, suite and study names


def checked_name(name, where: str) -> str:
    """A run name read from a file (a checkpoint's state, a record) before it goes into a path:
    the config's pattern, so `../..` or an absolute path never leaves the results folder."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise DataError(f"{where}: run name {name!r} is not a safe name (letters, digits, _ . + -; no '..')")
    return name


def partition(root: str | Path, run: str, step: int | str) -> Path:
    """The one file of a per-example dataset for (run, step); run and step are also its columns."""
    return Path(root) / run / f"step_{step}.parquet"


def step_of(name: str, prefix: str = "step_") -> int | None:
    """The step in a `step_<t>` name (a file's stem; `step<t>` for a checkpoint directory, with
    prefix "step"); None for any other name."""
    digits = name[len(prefix):] if name.startswith(prefix) else ""
    return int(digits) if digits.isdigit() else None


def partition_steps(root: str | Path, run: str) -> list[int]:
    """The steps a dataset holds for `run`, ascending."""
    return sorted(s for p in (Path(root) / run).glob("step_*.parquet") if (s := step_of(p.stem)) is not None)


def staging(dataset: str | Path) -> Path:
    """Where a dataset's partitions are written before they are renamed into place: beside the
    dataset folder, never inside it, so no reader that scans the dataset sees a temporary."""
    return Path(dataset).parent / ".staging"


class LossesPaths:
    """A per-example loss dataset: one Parquet table per granularity, a folder per run, a file per step.

    The root holds two tables with different columns; `guard` is a text file named *.parquet there,
    so that a reader pointed at the root (or at a folder above it) fails loudly, naming the file
    that says which folder to read, instead of silently mixing the tables."""

    GUARD = "NOT-ONE-TABLE--read-sequences-or-tokens.parquet"

    def __init__(self, root: str | Path):
        self.dir = Path(root)
        self.guard = self.dir / self.GUARD

    def dataset(self, granularity: str) -> Path:
        return self.dir / granularity

    def partition(self, granularity: str, run: str, step: int | str) -> Path:
        return partition(self.dataset(granularity), run, step)


class ReportPaths:
    FIGURES = ("loss_curves", "scaling_trends", "zsl_dtt", "zsl_dt1", "d_vs_m", "loss_change_hist")

    def __init__(self, root: str | Path):
        self.dir = Path(root)
        self.summary = self.dir / "summary.md"
        self.summary_html = self.dir / "summary.html"  # what the Snakemake report shows inline

    def figure(self, name: str, ext: str = "png") -> Path:
        return self.dir / f"{name}.{ext}"

    def table(self, ext: str) -> Path:
        return self.dir / f"fits.{ext}"


class DataPaths:
    """Prepared token data: the tokenizer, token shards written by slice jobs, the index."""

    def __init__(self, root: str | Path):
        self.dir = Path(root)
        self.manifest = self.dir / "manifest.json"
        self.tokenizer = self.dir / "tokenizer"
        self.tokenizer_json = self.tokenizer / "tokenizer.json"
        self.shards = self.dir / "shards"
        self.excluded = self.dir / "excluded.npy"  # stream sequences held out of training (eval + held-out)

    def split(self, name: str) -> Path:
        """eval.npy and heldout.npy: small (n, seq_len) arrays; training reads the shards."""
        return self.dir / f"{name}.npy"

    def slice_record(self, k: int | str) -> Path:
        return self.shards / f"slice_{k}.json"

    def shard(self, k: int, j: int) -> Path:
        return self.shards / f"slice_{k}" / f"shard_{j:05d}.bin"


class RunPaths:
    """A training run's directory: what the trainer writes and the workflow's markers."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.name = self.dir.name
        self.run_json = self.dir / "run.json"
        self.train_log = self.dir / "train_log.csv"  # complete log, written when training finishes
        self.state = self.dir / "state"
        self.live_log = self.state / "train_log.csv"  # appended while training
        self.lock = self.state / "lock"  # held by the one process training this run
        self.diverged = self.state / "diverged.json"  # why a diverged run refuses to restart
        self.checkpoints = self.dir / "checkpoints"

    def checkpoint(self, step: int | str) -> Path:
        """`step<t>`: the revision name of Pythia's and OLMo's Hub branches, so a checkpoint folder
        pushes to the Hub under its own name, and checkpoints/ reads back as a local suite with the
        default revision template `step{step}`."""
        return self.checkpoints / f"step{step}"

    def marker(self, step: int | str) -> Path:
        """The workflow's output for checkpoint `step`; outside the checkpoint, so that Snakemake,
        which deletes a failed job's outputs, never deletes what a retry resumes from."""
        return self.checkpoints / f"step{step}.json"

    def revision(self, step: int | str) -> Path:
        """A published suite's revision at `step`: where its weights are and what was checked."""
        return self.dir / "revisions" / f"step_{step}.json"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoint directories present (complete or not), ascending."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(s for d in self.checkpoints.glob("step*") if d.is_dir() and (s := self.step_of(d)) is not None)

    @staticmethod
    def step_of(checkpoint: Path) -> int | None:
        """The step of a checkpoint directory `step<t>`; None for any other name."""
        return step_of(checkpoint.name, "step")


class Layout:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.data = DataPaths(self.root / "data")
        self.losses = LossesPaths(self.root / "losses")
        self.run_table = self.root / "runs.parquet"
        self.schema_doc = self.root / "schema.json"  # written beside the run table
        self.zsl = self.root / "zsl"
        self.zsl_table = self.zsl / "zsl.parquet"
        self.changes = self.zsl / "changes"
        self.fits = self.root / "fits"
        self.fit_sizes = self.fits / "sizes.csv"
        self.fit_seeds = self.fits / "seeds.csv"
        self.fit_trends = self.fits / "trends.json"
        self.fit_summary = self.fits / "scaling.txt"
        self.effects = self.fits / "effects.csv"  # interventions against their baselines
        self.report = ReportPaths(self.root / "report")
        self.logs = self.root / "logs"

    def run(self, run: str) -> RunPaths:
        return RunPaths(self.root / "runs" / run)

    def change_partition(self, run: str, step: int | str) -> Path:
        return partition(self.changes, run, step)

    def fit(self, run: str) -> Path:
        return self.fits / f"{run}.json"

    def fit_windows(self, run: str) -> Path:
        return self.fits / f"{run}.windows.csv"

    def zsl_dtt(self, run: str) -> Path:
        return self.zsl / "dtt" / f"{run}.parquet"

    def zsl_dt1(self, run: str, step: int | str) -> Path:
        return self.zsl / "dt1" / run / f"step_{step}.parquet"

    def log(self, *parts: str) -> Path:
        """logs/<parts...>.log, e.g. log("train", "{run}")."""
        return self.logs.joinpath(*parts[:-1], f"{parts[-1]}.log")

    def benchmark(self, *parts: str) -> Path:
        """benchmarks/<parts...>.tsv: Snakemake's wall time, memory and I/O of one job."""
        return (self.root / "benchmarks").joinpath(*parts[:-1], f"{parts[-1]}.tsv")
