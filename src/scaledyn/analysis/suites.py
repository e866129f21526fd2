"""Published checkpoint suites (Pythia, OLMo): many revisions of one training run, analysed without
training through the same loss dataset, ZSL tables, fits and report as our own runs.

A suite's model is a Hub id (revisions are branches such as Pythia's `step1000`) or a local
directory with one sub-folder per revision. Each listed revision is fetched once by its own job
(snapshot_download resumes partial downloads; the job retries), checked against the study's
tokenizer, and recorded in runs/<suite>/revisions/step_<t>.json; evaluation and the gradient
view then load the weights from that local path and never touch the network, so they run on GPU
nodes without internet. Offline (HF_HUB_OFFLINE=1) a populated HF cache serves the same path.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from .. import atomic
from ..errors import SuiteError
from ..hashing import sha256
from ..layout import DataPaths
from ..records import RunRecord
from ..stats.curve import read_curve_csv
from . import losses
from .options import EvaluateOptions, Suite
from .revisions import OLMO, check_vocabulary, resolve, revision_format

# ----------------------------------------------------------------------------- the stages


def fetch(suite: Suite, step: int, data_dir, out) -> dict:
    """Resolve (download once) revision `step`, check it against the prepared tokenizer, record it."""
    path, commit = resolve(suite, step)
    fmt = revision_format(suite, path)
    if fmt == OLMO:
        from . import olmo

        olmo.OlmoConfig.read(path)  # an architecture the mapping does not reproduce is refused here
        if step in suite.dt1_steps:
            olmo.check_global_step(path, step, f"suites.{suite.name}: revision {suite.revision_name(step)}")
    elif step in suite.dt1_steps:
        raise SuiteError(f"suites.{suite.name}: revision {suite.revision_name(step)} is in format {fmt}, with no "
                         "optimizer state for dt1_steps")
    check_vocabulary(suite, path, DataPaths(data_dir).tokenizer)
    record = {"suite": asdict(suite), "step": step, "revision": suite.revision_name(step), "model": suite.model,
              "path": str(path), "commit": commit, "format": fmt, "tokens_seen": step * suite.tokens_per_step}
    atomic.write_json(out, record)
    return record


def read_revision(path) -> tuple[Suite, dict]:
    try:
        record = json.loads(Path(path).read_text())
        return Suite.from_json(json.dumps(record["suite"])), record
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise SuiteError(f"{path}: not a revision record ({type(e).__name__}: {e}); rerun its fetch job") from None


def load(record: dict) -> torch.nn.Module:
    """The revision's model in fp32 (bf16 autocast on GPUs comes from the caller), from the local
    path the fetch job recorded: no network."""
    if record.get("format") == OLMO:
        from .olmo import load_model as load_olmo

        return load_olmo(Path(record["path"]))
    from ..train.model import load_model

    return load_model(record["path"], ours=False, dtype=torch.float32)


def model_config(record: dict):
    """The revision's transformers config (an OLMo config.yaml as the Llama config it maps to)."""
    if record.get("format") == OLMO:
        from .olmo import OlmoConfig

        return OlmoConfig.read(Path(record["path"])).llama_config()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(record["path"])


def write_meta(revision, data_dir, out) -> RunRecord:
    """run.json of a suite, from the architecture of its newest listed revision (built on the meta
    device: no weights are read), in the fields the run table and the trends read."""
    from transformers import AutoModelForCausalLM

    from ..train.model import freeze_norms, param_counts

    suite, record = read_revision(revision)
    cfg = model_config(record)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
        counts = param_counts(freeze_norms(model) if record.get("format") == OLMO else model)
    if suite.non_embedding_params:
        counts["non_embedding_params"] = suite.non_embedding_params
    text = cfg.get_text_config()
    record = RunRecord(run=suite.name, kind="suite", model=suite.model, size=suite.size, seed=suite.seed, **counts,
                       vocab_size=text.vocab_size, d_model=text.hidden_size, n_layers=text.num_hidden_layers,
                       n_heads=text.num_attention_heads, steps=max(suite.steps), tokens_per_step=suite.tokens_per_step,
                       curve_source=curve_source(suite), data_manifest_sha256=sha256(DataPaths(data_dir).manifest),
                       spec=json.loads(json.dumps(asdict(suite))))
    record.write(out)
    return record


def curve_source(suite: Suite) -> str:
    return f"training loss ({suite.curve})" if suite.curve else "evaluation loss at the listed revisions"


def write_curve(suite: Suite, losses_root, out) -> pd.DataFrame:
    """The suite's loss curve as step,loss (what the fits and the report read for every run): its
    training curve when given, else the mean evaluation-set loss of each revision (step 0 left out:
    a power law has no value there)."""
    if suite.curve:
        c = read_curve_csv(suite.curve)
        df = pd.DataFrame({"step": c.step, "loss": c.loss})
    else:
        seq = losses.load(losses_root, "sequences", runs=[suite.name], splits=["eval"], columns=["step", "loss"])
        df = seq.groupby("step", as_index=False)["loss"].mean()
        df = df[df["step"] > 0]
        missing = sorted(set(s for s in suite.steps if s > 0) - set(df["step"]))
        if missing:
            raise SuiteError(f"suites.{suite.name}: no evaluation losses for steps {missing} in {losses_root}")
    with atomic.atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return df


def evaluate(revision, data_dir, out, options: EvaluateOptions | None = None) -> None:
    from .evaluate import evaluate_model

    suite, record = read_revision(revision)
    meta = {"size": suite.size, "seed": suite.seed, "tokens_seen": record["tokens_seen"]}
    evaluate_model(lambda: load(record), suite.name, record["step"], meta, data_dir, out, options, record["path"])
