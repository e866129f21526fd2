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
import re
import time
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

# What a revision needs: config, weights (safetensors, or .bin where a suite has only those),
# tokenizer. Everything else a repository holds (other formats, training states) is not fetched.
PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"]
RETRIES = 3


def is_local(suite: Suite) -> bool:
    return Path(suite.model).is_dir()


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def available_revisions(suite: Suite) -> list[str]:
    """Revisions one could name instead: sub-folders of a local suite; a Hub repository's branches
    and tags (those in the local cache when offline)."""
    if is_local(suite):
        names = [d.name for d in Path(suite.model).iterdir() if (d / "config.json").is_file()]
    else:
        from huggingface_hub import constants, list_repo_refs, scan_cache_dir

        names = []
        if not constants.HF_HUB_OFFLINE:
            try:
                refs = list_repo_refs(suite.model)
                names = [r.name for r in refs.branches + refs.tags]
            except Exception:  # no network, or no such repository: say what the cache has
                names = []
        if not names and Path(constants.HF_HUB_CACHE).is_dir():
            names = [ref for repo in scan_cache_dir().repos if repo.repo_id == suite.model and repo.repo_type == "model"
                     for rev in repo.revisions for ref in rev.refs]
    return sorted(set(names), key=_natural)


def _missing(suite: Suite, step: int, why: str) -> SuiteError:
    names = available_revisions(suite)
    shown = ", ".join(names[:40]) + (f", … ({len(names)} in all)" if len(names) > 40 else "")
    return SuiteError(f"suites.{suite.name}: revision {suite.revision_name(step)!r} (step {step}) of {suite.model} "
                      f"{why}; available: {shown or 'none'}")


def resolve(suite: Suite, step: int) -> tuple[Path, str]:
    """The local directory of a revision's files and its commit ('local' for a local suite),
    downloading a Hub revision once (with retries) if it is not cached."""
    name = suite.revision_name(step)
    if is_local(suite):
        root = Path(suite.model).resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise SuiteError(f"suites.{suite.name}.revision: {name!r} resolves to {path}, outside {root}")
        if not (path / "config.json").is_file():
            raise _missing(suite, step, "is not a sub-folder with a config.json")
        return path, "local"
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    for attempt in range(RETRIES):
        try:
            path = Path(snapshot_download(suite.model, revision=name, allow_patterns=PATTERNS))
            return path, path.name
        except RevisionNotFoundError:
            raise _missing(suite, step, "does not exist on the Hub") from None
        except RepositoryNotFoundError:
            raise SuiteError(f"suites.{suite.name}.model: {suite.model} is not a local directory, nor a model on the Hub "
                             "that this account can read") from None
        except LocalEntryNotFoundError:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise _missing(suite, step, f"is not in the HF cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set") from None
            if attempt == RETRIES - 1:
                raise SuiteError(f"suites.{suite.name}: revision {name!r} of {suite.model} could not be downloaded "
                                 f"after {RETRIES} tries (no connection?)") from None
        except OSError as e:  # a dropped connection mid-file: the next try resumes it
            if attempt == RETRIES - 1:
                raise SuiteError(f"suites.{suite.name}: revision {name!r} of {suite.model}: download failed after "
                                 f"{RETRIES} tries ({type(e).__name__}: {e})") from None
        time.sleep(10 * 2**attempt)
    raise AssertionError("unreachable")


def check_vocabulary(suite: Suite, revision_dir: Path, tokenizer) -> None:
    """Refuse a data tokenizer that is not the suite's: more tokens than the model has embedding
    rows, or (where the revision ships a tokenizer) a different vocabulary. Pythia pads its
    embedding to 50,304 rows for 50,277 tokens, so equal sizes are not required."""
    from transformers import AutoTokenizer

    data_tok = AutoTokenizer.from_pretrained(tokenizer)
    rows = json.loads((revision_dir / "config.json").read_text()).get("vocab_size")
    if rows is not None and len(data_tok) > rows:
        raise SuiteError(f"suites.{suite.name}: data.tokenizer ({tokenizer}) has {len(data_tok):,} tokens but the model "
                         f"has {rows:,} embedding rows: it is not the suite's tokenizer")
    if any((revision_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        own = AutoTokenizer.from_pretrained(revision_dir)
        if own.get_vocab() != data_tok.get_vocab():
            raise SuiteError(f"suites.{suite.name}: the suite's tokenizer ({revision_dir}, {len(own):,} tokens) differs "
                             f"from data.tokenizer ({tokenizer}, {len(data_tok):,} tokens); set data.tokenizer.name to "
                             "the suite's tokenizer")


def check_local_suite(suite: Suite, tokenizer_name: str | None) -> None:
    """At config time, for a local suite: every listed revision is there, and a local data
    tokenizer is the suite's. (Hub suites are checked by their fetch jobs, before any evaluation.)"""
    from ..errors import ConfigError

    if not is_local(suite):
        return
    try:
        first = resolve(suite, suite.steps[0])
        for step in suite.steps[1:]:
            resolve(suite, step)
        if tokenizer_name and Path(tokenizer_name).is_dir():
            check_vocabulary(suite, first[0], tokenizer_name)
    except SuiteError as e:
        raise ConfigError(f"config: {e}") from None


# ----------------------------------------------------------------------------- the stages


def fetch(suite: Suite, step: int, data_dir, out) -> dict:
    """Resolve (download once) revision `step`, check it against the prepared tokenizer, record it."""
    path, commit = resolve(suite, step)
    check_vocabulary(suite, path, DataPaths(data_dir).tokenizer)
    record = {"suite": asdict(suite), "step": step, "revision": suite.revision_name(step), "model": suite.model,
              "path": str(path), "commit": commit, "tokens_seen": step * suite.tokens_per_step}
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
    from ..train.model import load_model

    return load_model(record["path"], ours=False, dtype=torch.float32)


def write_meta(revision, data_dir, out) -> RunRecord:
    """run.json of a suite, from the architecture of its newest listed revision (built on the meta
    device: no weights are read), in the fields the run table and the trends read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..train.model import param_counts

    suite, record = read_revision(revision)
    cfg = AutoConfig.from_pretrained(record["path"])
    with torch.device("meta"):
        counts = param_counts(AutoModelForCausalLM.from_config(cfg))
    if suite.non_embedding_params:
        counts["non_embedding_params"] = suite.non_embedding_params
    text = cfg.get_text_config()
    record = RunRecord(run=suite.name, kind="suite", model=suite.model, size=suite.name, seed=suite.seed, **counts,
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
    meta = {"size": suite.name, "seed": suite.seed, "tokens_seen": record["tokens_seen"]}
    evaluate_model(lambda: load(record), suite.name, record["step"], meta, data_dir, out, options, record["path"])
