"""Where a suite's revisions are: a local directory's sub-folders or a Hub repository's branches,
resolved (and downloaded once) to a local path, and checked against the study's tokenizer.

Light at import (no torch, pandas or numpy), because the config check runs it where the workflow
is parsed; the stages that load weights live in suites.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..errors import ConfigError, SuiteError
from .options import Suite

# What a revision needs, by format. hf: config, weights (safetensors, or .bin where a suite has
# only those), tokenizer; nothing else a repository holds (other formats, training states).
# olmo-unsharded (analysis/olmo.py): the weights, trainer state and config, and the optimizer
# state only at the revisions the Δt = 1 replay starts from (it is twice the weights' size).
PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"]
OLMO = "olmo-unsharded"
OLMO_MODEL_FILES = ["model.pt", "train.pt", "config.yaml"]
OLMO_STATE_FILE = "optim.pt"
RETRIES = 3


def is_olmo_dir(path: Path) -> bool:
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "model.pt").is_file()


def is_revision_dir(path: Path) -> bool:
    return (Path(path) / "config.json").is_file() or is_olmo_dir(path)


def revision_format(suite: Suite, path: Path) -> str:
    """The suite's format where it names one, else what the revision's files are."""
    if suite.format != "auto":
        return suite.format
    return OLMO if is_olmo_dir(path) else "hf"


def patterns(suite: Suite, step: int) -> list[str]:
    olmo = OLMO_MODEL_FILES + ([OLMO_STATE_FILE] if step in suite.dt1_steps else [])
    return {"hf": PATTERNS, OLMO: olmo}.get(suite.format, PATTERNS + olmo)


def is_local(suite: Suite) -> bool:
    return Path(suite.model).is_dir()


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def available_revisions(suite: Suite) -> list[str]:
    """Revisions one could name instead: sub-folders of a local suite; a Hub repository's branches
    and tags (those in the local cache when offline)."""
    if is_local(suite):
        names = [d.name for d in Path(suite.model).iterdir() if is_revision_dir(d)]
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
        if not is_revision_dir(path):
            raise _missing(suite, step, "is not a sub-folder with a config.json (or OLMo's config.yaml and model.pt)")
        if step in suite.dt1_steps and not (path / OLMO_STATE_FILE).is_file():
            raise _missing(suite, step, f"has no {OLMO_STATE_FILE} (dt1_steps needs the optimizer state)")
        return path, "local"
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    for attempt in range(RETRIES):
        try:
            path = Path(snapshot_download(suite.model, revision=name, allow_patterns=patterns(suite, step)))
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
    rows = embedding_rows(revision_dir)
    if rows is not None and len(data_tok) > rows:
        raise SuiteError(f"suites.{suite.name}: data.tokenizer ({tokenizer}) has {len(data_tok):,} tokens but the model "
                         f"has {rows:,} embedding rows: it is not the suite's tokenizer")
    if any((revision_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        own = AutoTokenizer.from_pretrained(revision_dir)
        if own.get_vocab() != data_tok.get_vocab():
            raise SuiteError(f"suites.{suite.name}: the suite's tokenizer ({revision_dir}, {len(own):,} tokens) differs "
                             f"from data.tokenizer ({tokenizer}, {len(data_tok):,} tokens); set data.tokenizer.name to "
                             "the suite's tokenizer")


def embedding_rows(revision_dir: Path) -> int | None:
    if (revision_dir / "config.json").is_file():
        return json.loads((revision_dir / "config.json").read_text()).get("vocab_size")
    import yaml

    model = (yaml.safe_load((revision_dir / "config.yaml").read_text()) or {}).get("model") or {}
    return model.get("embedding_size") or model.get("vocab_size")


def check_local_suite(suite: Suite, tokenizer_name: str | None) -> None:
    """At config time, for a local suite: every listed revision is there, and a local data
    tokenizer is the suite's (when one is given). Hub suites, and the vocabulary where the jobs
    run in another environment than this check, are checked by the fetch jobs, before any evaluation."""
    if not is_local(suite):
        return
    try:
        first = resolve(suite, suite.steps[0])
        for step in suite.steps[1:]:
            resolve(suite, step)
        if suite.dt1_steps and revision_format(suite, first[0]) != OLMO:
            raise SuiteError(f"suites.{suite.name}.dt1_steps: the revisions are not in {OLMO} format (no optimizer "
                             "state to replay from)")
        if tokenizer_name and Path(tokenizer_name).is_dir():
            check_vocabulary(suite, first[0], tokenizer_name)
    except SuiteError as e:
        raise ConfigError(f"config: {e}") from None
