"""A study: the config validated once (schema.py fills the defaults), the checks the schema cannot
express, and every stage's typed options derived from it.

Everything that can be known before compute is spent is checked here, and every error names the
key path.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from .analysis.options import EvaluateOptions, Suite, ZslOptions
from .data.options import DataOptions
from .errors import ConfigError, DataError
from .layout import Layout
from .options import ReportOptions, SlurmOptions
from .schedule import Schedule
from .schema import validate_schema
from .stats.options import FitOptions, fitted_points_per_step
from .train import sizes as size_presets
from .train.spec import Optimizer, RunSpec


def checkpoint_steps(last: int, log2: bool = True, interval: int | None = None, extra=()) -> list[int]:
    """Powers of two up to the last step, the last step, every `interval` steps, and extras."""
    steps = {last, *extra}
    if log2:
        s = 1
        while s <= last:
            steps.add(s)
            s *= 2
    if interval:
        steps.update(range(interval, last + 1, interval))
    return sorted(steps)


@dataclass(frozen=True)
class Study:
    """A validated study: the config (defaults filled), its sizes, and what derives from them."""

    cfg: dict
    sizes: dict[str, size_presets.Size]

    @property
    def layout(self) -> Layout:
        return Layout(self.cfg["results"])

    @property
    def results(self) -> Path:
        return self.layout.root

    @property
    def baseline_runs(self) -> dict[str, tuple[str, int]]:
        """The runs without an intervention: run name -> (size, seed), in the config's size order."""
        return {f"{s}_s{seed}": (s, seed) for s in self.cfg["model"]["sizes"] for seed in self.cfg["seeds"]}

    @property
    def runs(self) -> dict[str, tuple[str, int]]:
        """Every trained run -> (size, seed): the baseline runs, then each intervention's
        (<size>_s<seed>_<intervention>, in the config's order)."""
        base = self.baseline_runs
        return {**base, **{f"{r}_{i}": sz for i in self.cfg["interventions"] for r, sz in base.items()}}

    def intervention_of(self, run: str) -> str | None:
        """The intervention a trained run applies; None for a baseline run."""
        return run[len(self.baseline_of(run)) + 1:] or None

    def baseline_of(self, run: str) -> str:
        """The baseline run of the same size and seed (the run itself for a baseline run)."""
        size, seed = self.runs[run]
        return f"{size}_s{seed}"

    def train_cfg(self, run: str) -> dict:
        """The train section a run trains with: the study's, with its intervention's overrides."""
        i = self.intervention_of(run)
        return self.cfg["train"] if i is None else _merge(self.cfg["train"], self.cfg["interventions"][i].get("train", {}))

    @property
    def suites(self) -> dict[str, Suite]:
        """Published checkpoint suites, by name (which is also their run name)."""
        return {name: Suite.from_config(name, s) for name, s in self.cfg["suites"].items()}

    @property
    def all_runs(self) -> list[str]:
        """Trained runs, then suites: every run the evaluation, ZSL, fits and the report cover."""
        return list(self.runs) + list(self.cfg["suites"])

    @property
    def trend_runs(self) -> list[str]:
        """The runs of one family that the scaling trends compare: the trained sizes when there
        are any, else the suites (a trend across our models and a published suite mixes data,
        tokenizer and schedule with size)."""
        return list(self.baseline_runs) or list(self.cfg["suites"])

    def steps(self, run: str) -> list[int]:
        """The checkpoints of a run: the schedule's for trained runs, the listed revisions for suites."""
        return list(self.suites[run].steps) if run in self.cfg["suites"] else self.checkpoint_steps

    def fit_options(self, run: str) -> FitOptions:
        """A suite without a training curve is fitted on its evaluation loss at the listed revisions."""
        if run in self.cfg["suites"] and not self.suites[run].curve:
            return self.fit.at_revisions()
        return self.fit

    @property
    def checkpoint_steps(self) -> list[int]:
        c = self.cfg["checkpoints"]
        return checkpoint_steps(self.cfg["train"]["steps"], c["log2"], c["interval"], c["extra_steps"])

    @property
    def dt1_steps(self) -> list[int]:
        return sorted(self.cfg["zsl"]["dt1_steps"])

    @property
    def data(self) -> DataOptions:
        return DataOptions.from_config(self.cfg)

    @property
    def evaluate(self) -> EvaluateOptions:
        return EvaluateOptions.from_config(self.cfg)

    @property
    def zsl(self) -> ZslOptions:
        return ZslOptions.from_config(self.cfg)

    @property
    def fit(self) -> FitOptions:
        return FitOptions.from_config(self.cfg)

    @property
    def report(self) -> ReportOptions:
        return ReportOptions.from_config(self.cfg)

    @property
    def slurm(self) -> SlurmOptions:
        return SlurmOptions.from_config(self.cfg)

    def onestep_mem_mb(self, run: str) -> int:
        """Host memory of a one-step job: the checkpoint's weights and AdamW state (16 bytes per
        parameter, fp32) read twice over while moving to the device, plus 8 GB of working room. A
        pretrained tokenizer's vocabulary is known only after preparation, when the DAG is already
        built: 65,536 rows are assumed for it (more than GPT-NeoX's 50,304)."""
        tok = self.cfg["data"]["tokenizer"]
        vocab = tok["vocab_size"] if tok["kind"] == "bpe" else 65536
        return 8000 + 32 * self.sizes[self.runs[run][0]].total_params(vocab) // 10**6

    def run_spec(self, run: str) -> RunSpec:
        size_name, seed = self.runs[run]
        size, t, c = self.sizes[size_name], self.train_cfg(run), self.cfg["checkpoints"]
        return RunSpec(
            name=run, size=size, seed=seed, data_dir=str(self.layout.data.dir), run_dir=str(self.layout.run(run).dir),
            seq_len=self.cfg["data"]["seq_len"], steps=t["steps"], batch_size=t["batch_size"],
            micro_batch_size=t["micro_batch_size"], lr=t["lr"] if t["lr"] is not None else size.lr,
            schedule=Schedule(**t["schedule"]), optimizer=Optimizer(**{**t["optimizer"], "betas": tuple(t["optimizer"]["betas"])}),
            grad_clip=t["grad_clip"], precision=t["precision"], compile=t["compile"], threads=t["threads"],
            flush_every=t["flush_every"], checkpoint_steps=tuple(self.checkpoint_steps),
            optimizer_steps=None if c["keep_optimizer"] == "all" else tuple(self.dt1_steps), data_seed=self.cfg["data"]["seed"],
            allow_repeat=self.cfg["data"]["allow_repeat"],
        )

    @property
    def data_slices(self) -> int:
        from .data.sources import Source

        return Source(self.data).slices()

    def token_budget(self) -> dict:
        """What training needs against what the config lets preparation supply (before it runs):
        data_passes is known only when data.max_tokens caps the stream."""
        t, d = self.cfg["train"], self.cfg["data"]
        needed = t["steps"] * t["batch_size"] * d["seq_len"]
        held = (d["eval_sequences"] + d["heldout_batches"] * t["batch_size"]) * d["seq_len"]
        passes = needed / (d["max_tokens"] - held) if d["max_tokens"] else None
        return {"train_tokens_needed": needed, "max_tokens": d["max_tokens"], "data_passes": passes}


def _check_finite(node, where: str = "") -> None:
    """YAML's .inf and .nan pass a JSON schema's type and range checks; no rate or factor may be either."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config: {where}: {node} is not a finite number")


def _check_data(data: dict, jobs_env_here: bool) -> None:
    if data["source"] == "packages":
        if not data["packages"]:
            raise ConfigError("config: data.packages: source 'packages' needs at least one installed package name")
        if not jobs_env_here:
            return
        from .data.sources import package_dir

        for i, name in enumerate(data["packages"]):
            try:
                package_dir(name, i)
            except DataError as e:
                raise ConfigError(str(e)) from None
    if data["source"] == "wheels" and not data["wheels"]:
        raise ConfigError("config: data.wheels: source 'wheels' needs at least one wheel (file and sha256)")
    if data["source"] == "files" and not data["files"]["paths"]:
        raise ConfigError("config: data.files.paths: source 'files' needs at least one path or glob")
    if data["files"]["split"] == "separator" and not data["files"]["separator"]:
        raise ConfigError("config: data.files.separator: split 'separator' needs the string that ends a document")
    if data["source"] == "hf" and not data["hf"]["name"]:
        raise ConfigError("config: data.hf.name: source 'hf' needs a dataset name or local path")
    if data["tokenizer"]["kind"] == "pretrained" and not data["tokenizer"]["name"]:
        raise ConfigError("config: data.tokenizer.name: kind 'pretrained' needs a tokenizer name or path")


def _resolve_sizes(cfg: dict) -> dict[str, size_presets.Size]:
    model, seq_len = cfg["model"], cfg["data"]["seq_len"]
    allowed = sorted(set(size_presets.PRESETS) | set(model["custom"]))
    out = {}
    for i, name in enumerate(model["sizes"]):
        try:
            size = size_presets.resolve(name, model["custom"])
        except KeyError:
            raise ConfigError(f"config: model.sizes[{i}]: unknown size {name!r}; allowed: {', '.join(allowed)} "
                              "(or define it under model.custom)") from None
        where = f"model.custom.{name}" if name in model["custom"] else f"model.sizes[{i}] ({name})"
        if size.d_model % size.n_heads:
            raise ConfigError(f"config: {where}: d_model {size.d_model} is not divisible by n_heads {size.n_heads}")
        if (size.d_model // size.n_heads) % 2:
            raise ConfigError(f"config: {where}: head dimension {size.d_model // size.n_heads} must be even for RoPE")
        if size.lr <= 0:
            raise ConfigError(f"config: {where}.lr: learning rate must be positive, got {size.lr}")
        if seq_len > size.context:
            raise ConfigError(f"config: data.seq_len: {seq_len} is beyond the context of size {name!r} "
                              f"({size.context} positions); use at most {size.context}")
        out[name] = size
    return out


def _check_suites(study: Study, jobs_env_here: bool) -> None:
    cfg = study.cfg
    if not cfg["model"]["sizes"] and not cfg["suites"]:
        raise ConfigError("config: model.sizes: the study has no sizes to train and no suites to analyse")
    if not cfg["suites"]:
        return
    from .analysis.revisions import OLMO, check_local_suite, is_local

    if cfg["data"]["tokenizer"]["kind"] != "pretrained":
        raise ConfigError("config: data.tokenizer.kind: suites are evaluated on text tokenized with their own tokenizer; "
                          "set kind 'pretrained' and name it (data.tokenizer.name)")
    for name, suite in study.suites.items():
        if name in study.runs:
            raise ConfigError(f"config: suites.{name}: the name is also a trained run's; rename the suite")
        for key in ("gradient_steps", "dt1_steps"):
            missing = sorted(set(getattr(suite, key)) - set(suite.steps))
            if missing:
                raise ConfigError(f"config: suites.{name}.{key}: {missing} are not among suites.{name}.steps")
        if suite.dt1_steps and suite.gradient_steps:
            raise ConfigError(f"config: suites.{name}: dt1_steps and gradient_steps both given; a suite with "
                              "optimizer state takes real steps (dt1_steps), one without only the gradient view")
        if suite.dt1_steps and suite.format != OLMO and not (suite.format == "auto" and is_local(suite)):
            why = ("format 'hf' has none" if suite.format == "hf" else
                   "a Hub suite's format is known only once it is fetched")
            raise ConfigError(f"config: suites.{name}.dt1_steps: the Δt = 1 replay needs published optimizer state; "
                              f"set suites.{name}.format: {OLMO} ({why})")
        if suite.size in study.runs or (suite.size != name and suite.size in study.suites):
            raise ConfigError(f"config: suites.{name}.size: {suite.size!r} names a run; a size shared by seeds "
                              "needs a name of its own")
        if suite.curve and not Path(suite.curve).is_file():
            raise ConfigError(f"config: suites.{name}.curve: file not found: {suite.curve}")
        check_local_suite(suite, cfg["data"]["tokenizer"]["name"] if jobs_env_here else None)


def _check_train(train: dict) -> None:
    if train["lr"] is not None and train["lr"] <= 0:
        raise ConfigError(f"config: train.lr: learning rate must be positive, got {train['lr']}")
    if train["micro_batch_size"] and train["micro_batch_size"] > train["batch_size"]:
        raise ConfigError(f"config: train.micro_batch_size: {train['micro_batch_size']} exceeds train.batch_size "
                          f"{train['batch_size']}")
    sched = train["schedule"]
    if sched["warmup_steps"] + sched["cooldown_steps"] > train["steps"]:
        raise ConfigError("config: train.schedule: warmup_steps + cooldown_steps "
                          f"({sched['warmup_steps']} + {sched['cooldown_steps']}) exceed train.steps ({train['steps']})")


def _check_steps(cfg: dict, ckpts: set[int]) -> None:
    last = cfg["train"]["steps"]
    for key, steps in [("checkpoints.extra_steps", cfg["checkpoints"]["extra_steps"]), ("zsl.dt1_steps", cfg["zsl"]["dt1_steps"])]:
        for i, s in enumerate(steps):
            if s > last:
                raise ConfigError(f"config: {key}[{i}]: checkpoint step {s} is beyond the last step train.steps = {last}")
    for i, s in enumerate(cfg["zsl"]["dt1_steps"]):
        if s not in ckpts:
            raise ConfigError(f"config: zsl.dt1_steps[{i}]: step {s} is not a checkpoint step; checkpoints are "
                              f"{sorted(ckpts)} (add it to checkpoints.extra_steps)")
    for i, s in enumerate(cfg["report"]["histogram_steps"]):
        if s not in ckpts:
            raise ConfigError(f"config: report.histogram_steps[{i}]: step {s} is not a checkpoint step")


def _check_fit(cfg: dict) -> None:
    """A trained run's curve must leave the fit enough points after its transient cut, known
    before any training (the fit needs 7; fit_run would fail only after the whole run)."""
    if not cfg["model"]["sizes"]:
        return
    fit, steps = cfg["fit"], cfg["train"]["steps"]
    n = fitted_points_per_step(steps, fit["transient_steps"], fit["subsample"])
    if n < 7:
        raise ConfigError(f"config: fit.transient_steps: {fit['transient_steps']:g} leaves {n} fitted points of a "
                          f"{steps}-step run (train.steps); a one-break fit needs at least 7: train longer or lower it")


def _check_intervention_sections(raw) -> None:
    """Before the schema (which would only say 'additional properties'): an intervention's
    sections other than train, named with the reason."""
    interventions = raw.get("interventions") if isinstance(raw, dict) else None
    if not isinstance(interventions, dict):
        return  # absent, or a wrong type the schema names
    for name, over in interventions.items():
        for key in over if isinstance(over, dict) else ():
            if key != "train":
                raise ConfigError(f"config: interventions.{name}.{key}: an intervention overrides training options only "
                                  "(train.*); every run keeps the study's data, sizes, evaluation and analysis")


def _check_interventions(raw: dict, study: Study) -> None:
    """Each intervention's overrides, merged into the study, pass every check the study's own train
    section does; an error names the intervention and the key. What every run must share (the
    step count, so the checkpoints and the comparison at each step are common) cannot change."""
    base = {k: v for k, v in raw.items() if k != "interventions"}
    for name, over in study.cfg["interventions"].items():
        train = over.get("train", {})
        if "steps" in train:
            raise ConfigError(f"config: interventions.{name}.train.steps: every run of a study trains for train.steps "
                              "steps (the checkpoints and the effects are compared step by step)")
        try:
            _check_train(validate_schema(_merge(base, {"train": train}))["train"])
        except ConfigError as e:
            raise ConfigError(f"config: interventions.{name}: {str(e).removeprefix('config: ')}") from None


def _check_slurm_sizes(cfg: dict, sizes) -> None:
    for key in ("gpus", "nodes"):
        for name in cfg["slurm"][key]:
            if name not in sizes:
                raise ConfigError(f"config: slurm.{key}.{name}: not a size of this study (sizes: "
                                  f"{', '.join(sizes) or 'none'})")


def _check_budget(cfg: dict) -> None:
    data = cfg["data"]
    needed = (data["eval_sequences"] + data["heldout_batches"] * cfg["train"]["batch_size"]) * data["seq_len"]
    if data["max_tokens"] is not None and needed >= data["max_tokens"]:
        raise ConfigError(f"config: data.eval_sequences: the evaluation set and held-out batches need {needed} tokens, "
                          f"but data.max_tokens caps the corpus at {data['max_tokens']} and training needs some too")


def load_study(source: str | Path | dict, overrides: dict | None = None, jobs_env_here: bool = True) -> Study:
    """Build a Study from a YAML path or a dict (as Snakemake's `config`), raising ConfigError.

    jobs_env_here: the jobs run in this Python environment, so what they import can be checked
    here (data.packages installed, a local suite's tokenizer). False where they do not: the
    workflow parsed with only Snakemake for `--sdm conda`, where the jobs' environment checks it."""
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {path} is not valid YAML: {e}") from None
        if raw is None:  # Snakemake refuses an empty config file too: both say so
            raise ConfigError(f"config: {path} is empty; write at least one key (for example `study: my-study`) "
                              "or leave --config out for the defaults")
    if overrides:
        raw = _merge(raw, overrides)
    _check_finite(raw)
    if isinstance(raw, dict) and raw.get("suites") and "sizes" not in (raw.get("model") or {}):
        raw = _merge(raw, {"model": {"sizes": []}})  # a study of suites trains nothing unless it names sizes
    _check_intervention_sections(raw)
    cfg = validate_schema(raw)
    _check_data(cfg["data"], jobs_env_here)
    study = Study(cfg, _resolve_sizes(cfg))
    _check_suites(study, jobs_env_here)
    _check_train(cfg["train"])
    _check_steps(cfg, set(study.checkpoint_steps))
    _check_budget(cfg)
    _check_fit(cfg)
    _check_slurm_sizes(cfg, list(study.sizes))
    _check_interventions(raw, study)
    return study


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
