"""Published checkpoint suites, offline: a tiny GPT-NeoX suite built here (a few real AdamW steps
between revisions, saved with save_pretrained, with its tokenizer), served from a local directory
and from an HF cache laid out as the Hub's (refs -> snapshots -> blobs) under HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_workflow

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]
REPO_ID = "local-org/tiny-neox"
OLMO_REPO_ID = "local-org/zsl-tiny"  # an OLMo-format suite in the Hub's layout, as mirandrom/zsl-checkpoints


def _corpus(root: Path) -> list[str]:
    """40 standard-library modules as text files: real text, the same on every machine of one Python."""
    root.mkdir(parents=True)
    src = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-m]*.py"))[:40]
    for f in src:
        shutil.copy(f, root / f"{f.stem}.txt")
    return [f.read_text(errors="replace") for f in src]


def _build_suite(root: Path, docs: list[str], vocab: int = 512) -> Path:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from scaledyn.data.prepare import train_bpe

    tok = train_bpe(iter(docs), vocab)
    ids = np.concatenate([np.asarray(tok(d)["input_ids"], dtype=np.int64) for d in docs])
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, rotary_pct=0.5, use_cache=False,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    model = GPTNeoXForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    step = 0
    for target in STEPS:
        while step < target:
            starts = rng.integers(0, len(ids) - 33, size=8)
            x = torch.from_numpy(np.stack([ids[s : s + 32] for s in starts]))
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
        model.save_pretrained(root / f"step{target}")
        tok.save_pretrained(root / f"step{target}")
    return root


def olmo_config(vocab: int, eos: int) -> dict:
    """An OLMo config.yaml for a tiny model of the paper's architecture, with the authors' schedule
    (trapezoidal: warm-up from a tenth of the rate, flat, linear decay to 0 at the end)."""
    model = {"d_model": 32, "n_heads": 4, "n_layers": 2, "mlp_ratio": 2, "vocab_size": vocab,
             "embedding_size": vocab + (-vocab) % 16, "max_sequence_length": 32, "rope": True, "rope_theta": 10000,
             "layer_norm_type": "rms", "layer_norm_with_affine": False, "include_bias": False, "weight_tying": True,
             "block_type": "sequential", "activation_type": "swiglu", "attention_dropout": 0.0,
             "residual_dropout": 0.0, "embedding_dropout": 0.0, "eos_token_id": eos}
    return {"model": model, "max_duration": 128, "precision": "amp_bf16",
            "optimizer": {"name": "adamw", "learning_rate": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-5},
            "scheduler": {"name": "trapezoidal", "t_warmup": 4, "t_cooldown": 64, "alpha_f": 0.0}}


def _build_olmo_suite(root: Path, docs: list[str], tokenizer: Path, seed: int, by_name: bool) -> Path:
    """A tiny suite in OLMo's unsharded format (model.pt, optim.pt, train.pt, config.yaml per
    revision OLMo-tiny-step<t>), trained here with AdamW in OLMo's parameter groups and schedule.
    by_name: the optimizer state keyed by parameter name, as FSDP saves it (the authors trained
    with FSDP); else by position with OLMo's param_names, as a plain or DDP optimizer saves it."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from scaledyn.analysis import olmo
    from scaledyn.train.model import freeze_norms

    tok = AutoTokenizer.from_pretrained(tokenizer)
    ids = np.concatenate([np.asarray(tok(d)["input_ids"], dtype=np.int64) for d in docs])
    raw = olmo_config(len(tok), tok.eos_token_id)
    cfg = olmo.OlmoConfig.from_dict(raw)
    torch.manual_seed(seed)
    model = freeze_norms(LlamaForCausalLM(cfg.llama_config()))
    emb = model.get_input_embeddings().weight
    decay = [p for p in model.parameters() if p.requires_grad and p is not emb]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": [emb], "weight_decay": 0.0}],
                            lr=cfg.schedule.lr, betas=(0.9, 0.95), eps=1e-5)
    rng = np.random.default_rng(seed)
    step = 0
    for target in STEPS:
        while step < target:
            step += 1
            starts = rng.integers(0, len(ids) - 33, size=8)
            x = torch.from_numpy(np.stack([ids[s : s + 32] for s in starts]))
            model(input_ids=x, labels=x).loss.backward()
            for g in opt.param_groups:
                g["lr"] = cfg.schedule.lr_at(step)
            opt.step()
            opt.zero_grad()
        olmo.write_unsharded(root / f"OLMo-tiny-step{target}", model, raw, target, opt, by_name)
    return root


def _hf_cache(suite: Path, cache: Path, repo_id: str = REPO_ID) -> Path:
    """The Hub's cache layout for repo_id: refs/<branch> holds a commit, snapshots/<commit>/ links
    every file to blobs/<sha256>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for rev in sorted(d for d in suite.iterdir() if d.is_dir()):
        commit = hashlib.sha1(rev.name.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev.name).write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (repo / "blobs").mkdir(exist_ok=True)
        for f in rev.iterdir():
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            if not blob.exists():
                shutil.copy(f, blob)
            (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return cache


@pytest.fixture(scope="module")
def suite_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    docs = _corpus(root / "corpus")
    suite = _build_suite(root / "tiny-neox", docs)
    other = _build_suite(root / "other-tok", docs[:10], vocab=300)
    olmo_suites = [_build_olmo_suite(root / f"olmo-s{seed}", docs, suite / "step0", seed, by_name=seed == 0)
                   for seed in (0, 1)]
    _hf_cache(olmo_suites[0], root / "hf-cache", OLMO_REPO_ID)
    return {"root": root, "suite": suite, "cache": _hf_cache(suite, root / "hf-cache"), "other": other,
            "olmo": olmo_suites}


def study_config(env: dict, **suites) -> dict:
    return {"study": "suites", "results": "results",
            "data": {"source": "files", "files": {"paths": [str(env["root"] / "corpus" / "*.txt")]},
                     "tokenizer": {"kind": "pretrained", "name": str(env["suite"] / "step0")}, "seq_len": 32,
                     "eval_sequences": 24, "heldout_batches": 2},
            "train": {"batch_size": 8}, "evaluate": {"batch_size": 16},
            "fit": {"transient_steps": 0, "bootstrap": 20},
            "suites": suites or {"tiny": {"model": str(env["suite"]), "steps": STEPS, "tokens_per_step": 256,
                                          "gradient_steps": [4, 64]}}}


def test_suite_config_trains_nothing_and_plans_suite_jobs(suite_env):
    from scaledyn.config import load_study

    study = load_study(study_config(suite_env))
    assert study.runs == {} and study.all_runs == ["tiny"] and study.steps("tiny") == STEPS
    assert study.fit_options("tiny").smoothing == "none"  # the evaluation loss at revisions is not smoothed


def test_config_names_a_missing_local_revision_and_lists_the_others(suite_env):
    from scaledyn.config import load_study
    from scaledyn.errors import ConfigError

    cfg = study_config(suite_env, tiny={"model": str(suite_env["suite"]), "steps": [0, 3], "tokens_per_step": 256})
    with pytest.raises(ConfigError, match=r"suites\.tiny: revision 'step3' \(step 3\).*available: step0, step1, step2, "
                                          r"step4, step8, step16, step32, step64, step128"):
        load_study(cfg)


def test_config_refuses_another_tokenizer(suite_env):
    from scaledyn.config import load_study
    from scaledyn.errors import ConfigError

    cfg = study_config(suite_env)
    cfg["data"]["tokenizer"]["name"] = str(suite_env["other"] / "step0")
    with pytest.raises(ConfigError, match=r"suites\.tiny: the suite's tokenizer .* differs from data\.tokenizer"):
        load_study(cfg)
    cfg = study_config(suite_env)
    cfg["data"]["tokenizer"] = {"kind": "bpe", "vocab_size": 512}
    with pytest.raises(ConfigError, match=r"data\.tokenizer\.kind: suites are evaluated .* own tokenizer"):
        load_study(cfg)


def test_dt1_steps_need_a_suite_with_optimizer_state(suite_env):
    """The Δt = 1 replay needs published optimizer state: a suite in another format, or one that
    cannot be read before its fetch (a Hub id left on `auto`), is refused at config time."""
    from scaledyn.config import load_study
    from scaledyn.errors import ConfigError

    base = {"model": str(suite_env["suite"]), "steps": STEPS, "tokens_per_step": 256, "dt1_steps": [16]}
    for suite, message in [(base, r"suites\.tiny: revision 'step16' .* has no optim\.pt \(dt1_steps needs"),
                           ({**base, "format": "hf"}, r"suites\.tiny\.dt1_steps: .* set suites\.tiny\.format: olmo-unsharded"),
                           ({**base, "model": REPO_ID}, r"suites\.tiny\.dt1_steps: .* \(a Hub suite's format is known only once it is fetched\)"),
                           ({**base, "format": "olmo-unsharded", "gradient_steps": [4]},
                            r"suites\.tiny: dt1_steps and gradient_steps both given"),
                           ({**base, "dt1_steps": [3]}, r"suites\.tiny\.dt1_steps: \[3\] are not among suites\.tiny\.steps")]:
        with pytest.raises(ConfigError, match=message):
            load_study(study_config(suite_env, tiny=suite))


def _fetch(suite: dict, step: int, data_dir: Path, out: Path, hf_env: dict) -> subprocess.CompletedProcess:
    from scaledyn.analysis.options import Suite

    cfg = {"revision": "step{step}", "curve": None, "non_embedding_params": None, "seed": 0, "gradient_steps": [],
           "dt1_steps": [], "format": "auto", "size": None, **suite}
    text = Suite.from_config("hub", cfg).to_json()
    return subprocess.run([sys.executable, "-m", "scaledyn", "suite-fetch", "--suite", text, "--step", str(step),
                           "--data", str(data_dir), "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, **hf_env})


def test_hub_revisions_from_the_cache_offline_and_the_named_errors(suite_env, tmp_path):
    """The Hub code path (snapshot_download by repo id and branch) against a populated cache, offline."""
    from scaledyn.config import load_study
    from scaledyn.data.prepare import prepare_tokenizer
    from scaledyn.layout import DataPaths

    hf = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(suite_env["cache"])}
    data = tmp_path / "data"
    prepare_tokenizer(load_study(study_config(suite_env)).data, data)
    suite = {"model": REPO_ID, "steps": [4, 8], "tokens_per_step": 256}
    ok = _fetch(suite, 8, data, tmp_path / "rev8.json", hf)
    assert ok.returncode == 0, ok.stderr
    record = json.loads((tmp_path / "rev8.json").read_text())
    assert Path(record["path"]).parent.parent.name == f"models--{REPO_ID.replace('/', '--')}"
    assert record["commit"] == (suite_env["cache"] / f"models--{REPO_ID.replace('/', '--')}" / "refs" / "step8").read_text()
    assert record["tokens_seen"] == 8 * 256

    missing = _fetch({**suite, "steps": [3, 8]}, 3, data, tmp_path / "rev3.json", hf)
    assert missing.returncode == 1 and not (tmp_path / "rev3.json").exists()
    assert "revision 'step3' (step 3) of local-org/tiny-neox is not in the HF cache" in missing.stderr
    assert "available: step0, step1, step2, step4, step8, step16, step32, step64, step128" in missing.stderr

    # OLMo's format from the Hub's layout, detected from the files (format auto) or named
    for fmt in ("auto", "olmo-unsharded"):
        olmo_suite = {"model": OLMO_REPO_ID, "revision": "OLMo-tiny-step{step}", "steps": [4, 16],
                      "tokens_per_step": 256, "format": fmt, "dt1_steps": [16] if fmt != "auto" else []}
        got = _fetch(olmo_suite, 16, data, tmp_path / f"olmo-{fmt}.json", hf)
        assert got.returncode == 0, got.stderr
        record = json.loads((tmp_path / f"olmo-{fmt}.json").read_text())
        assert record["format"] == "olmo-unsharded" and record["revision"] == "OLMo-tiny-step16"
        assert {"model.pt", "train.pt", "config.yaml"} <= {p.name for p in Path(record["path"]).iterdir()}

    other = tmp_path / "other-data"
    shutil.copytree(suite_env["other"] / "step0", DataPaths(other).tokenizer)  # prepared with another tokenizer
    wrong = _fetch(suite, 8, other, tmp_path / "wrong.json", hf)
    assert wrong.returncode == 1 and "the suite's tokenizer" in wrong.stderr and "differs from data.tokenizer" in wrong.stderr


@pytest.fixture(scope="module")
def suite_study(suite_env, tmp_path_factory):
    """The whole workflow on two copies of the suite (a local directory and the HF cache), and on
    four of its revisions: a curve too short to fit."""
    from scaledyn.layout import Layout

    cfg = study_config(suite_env)
    cfg["suites"]["tiny-hub"] = {"model": REPO_ID, "steps": STEPS, "tokens_per_step": 256, "gradient_steps": [4]}
    cfg["suites"]["tiny-short"] = {"model": str(suite_env["suite"]), "steps": [0, 4, 16, 64], "tokens_per_step": 256}
    for seed, path in enumerate(suite_env["olmo"]):  # two seeds of one size, the first with its optimizer states
        cfg["suites"][f"olmo-tiny-s{seed}"] = {"model": str(path), "revision": "OLMo-tiny-step{step}", "steps": STEPS,
                                               "tokens_per_step": 256, "seed": seed, "size": "olmo-tiny",
                                               "dt1_steps": [16, 64] if seed == 0 else []}
    work = tmp_path_factory.mktemp("suite-study")
    run_workflow(work, cfg, "--cores", "2", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(suite_env["cache"])})
    return Layout(work / "results")


def test_workflow_writes_every_revision_and_every_pair(suite_study):
    from scaledyn.analysis import losses

    seq = losses.load(suite_study.losses.dir, "sequences", runs=["tiny"])
    assert sorted(seq["step"].unique()) == STEPS
    assert set(seq["split"]) == {"eval", "heldout"} and (seq.groupby("step").size() == 24 + 2 * 8).all()
    assert (seq["tokens_seen"] == seq["step"] * 256).all() and set(seq["size"]) == {"tiny"}
    z = pd.read_parquet(suite_study.zsl_table)
    dtt = z[(z["run"] == "tiny") & (z["variant"] == "dt=t")]
    pairs = sorted(set(zip(dtt["step"], dtt["step_next"])))
    assert pairs == list(zip(STEPS[:-1], STEPS[1:]))
    assert (dtt["dt"] == dtt["step_next"] - dtt["step"]).all() and len(dtt) == len(pairs) * 2 * 2
    grad = z[(z["run"] == "tiny") & z["variant"].isin(["grad-direction", "sign-direction"])]
    assert sorted(grad["step"].unique()) == [4, 64] and (grad["dt"] == 0).all()
    assert set(grad["split"]) == {"eval", "heldout"} and grad["D"].between(0, 1).all()
    run = json.loads(suite_study.run("tiny").run_json.read_text())
    assert run["kind"] == "suite" and run["n_layers"] == 2 and run["d_model"] == 32
    assert 0 < run["non_embedding_params"] < run["total_params"]
    fit = json.loads(suite_study.fit("tiny").read_text())
    assert fit["verdict"] in ("deceleration", "acceleration", "smooth_bend", "power_law")
    summary = suite_study.report.summary.read_text()
    assert "tiny is a published suite" in summary and "evaluation loss at the listed revisions" in summary
    assert "calibrated (docs/calibration.md)" in summary
    assert "along the held-out batch's mean gradient" in summary


def test_a_suite_too_short_to_fit_is_reported_not_fatal(suite_study):
    """Four revisions leave three points after the transient cut: the fit file says `insufficient`
    with the counts, the fit table and the summary say so, and the other runs are fitted as usual."""
    fit = json.loads(suite_study.fit("tiny-short").read_text())
    assert fit["verdict"] == "insufficient" and fit["n_points"] == 3 and fit["points_needed"] == 7
    sizes = pd.read_csv(suite_study.fit_sizes).set_index("run")
    assert sizes.loc["tiny-short", "verdict"] == "insufficient" and sizes.loc["tiny-short", "n_points"] == 3
    assert pd.isna(sizes.loc["tiny-short", "t_d"]) and sizes.loc["tiny", "verdict"] != "insufficient"
    summary = suite_study.report.summary.read_text()
    assert "tiny-short" in summary and "too short to fit: 3 points after the transient cut, 7 needed" in summary
    assert re.search(r"^\| tiny-short +\| ", suite_study.report.table("md").read_text(), re.M)


def test_local_and_hub_paths_give_equal_losses(suite_study):
    from scaledyn.analysis import losses

    tok = losses.load(suite_study.losses.dir, "tokens", runs=["tiny", "tiny-hub"])
    wide = tok.pivot_table(index=["step", "split", "example_id", "position"], columns="run", values="loss")
    assert len(wide) == len(STEPS) * (24 + 2 * 8) * 31
    np.testing.assert_array_equal(wide["tiny"].to_numpy(), wide["tiny-hub"].to_numpy())


def test_olmo_suite_replays_one_real_step_from_its_optimizer_state(suite_study, suite_env):
    """A suite in OLMo's unsharded format (detected from its files; optimizer state keyed by name,
    as FSDP saves it) is evaluated like any suite, and at its dt1_steps takes the Δt = 1 step from
    its published AdamW state at the rate of its own schedule, with the gradient view."""
    import torch

    from scaledyn.analysis import losses, olmo
    from scaledyn.data.tokens import TokenData
    from scaledyn.train.model import token_losses

    z = pd.read_parquet(suite_study.zsl_table)
    dt1 = z[(z["run"] == "olmo-tiny-s0") & (z["variant"] == "dt=1")]
    assert sorted(dt1["step"].unique()) == [16, 64] and (dt1["dt"] == 1).all() and set(dt1["size"]) == {"olmo-tiny"}
    lr = dt1.groupby("step")["lr"].first()  # trapezoidal: flat 3e-3 until update 64, then linear to 0 at 128
    assert lr[16] == pytest.approx(3e-3, rel=1e-9) and lr[64] == pytest.approx(3e-3 * (1 - 1 / 64), rel=1e-9)
    corr = dt1.groupby("step")["pred_corr_mean"].first()  # first order: rough early (large Adam steps), close later
    assert corr[16] > 0.5 and corr[64] > 0.9 and dt1["C_g_mean"].notna().all()
    for step in (16, 64):
        changes = pd.read_parquet(suite_study.change_partition("olmo-tiny-s0", step))
        assert set(changes["split"]) == {"eval", "heldout"} and changes["delta"].abs().max() > 0
    assert z[(z["run"] == "olmo-tiny-s1") & (z["variant"] == "dt=1")].empty
    run = json.loads(suite_study.run("olmo-tiny-s0").run_json.read_text())
    assert run["size"] == "olmo-tiny" and run["n_layers"] == 2 and run["d_model"] == 32
    assert run["non_embedding_params"] == 2 * (4 * 32 * 32 + 3 * 32 * 32)
    # evaluation read the weights OLMo's names hold: the stored losses equal a direct forward
    data = TokenData.open(suite_study.data.dir)
    model = olmo.load_model(suite_env["olmo"][0] / "OLMo-tiny-step16")
    with torch.no_grad():
        direct = token_losses(model, torch.from_numpy(np.asarray(data.split("eval"), dtype=np.int64))).numpy()
    tok = losses.load(suite_study.losses.dir, "tokens", runs=["olmo-tiny-s0"], splits=["eval"])
    stored = tok[tok["step"] == 16].sort_values(["example_id", "position"])["loss"].to_numpy()
    np.testing.assert_allclose(stored, direct.ravel(), atol=1e-5)


def test_seeds_of_one_size_are_pooled_with_their_spread(suite_study):
    """Two suites with `size: olmo-tiny` and seeds 0 and 1: one row of seeds.csv with the mean and
    the seed-to-seed SD of t_d, L_d and r_d over the seeds that decelerate, beside the bootstrap SE;
    the trends carry the seed count per size; the summary has its section."""
    sizes = pd.read_csv(suite_study.fit_sizes)
    mine = sizes[sizes["size"] == "olmo-tiny"]
    assert sorted(mine["seed"]) == [0, 1]
    seeds = pd.read_csv(suite_study.fit_seeds)
    assert seeds["size"].tolist() == ["olmo-tiny"] and seeds.loc[0, "seeds"] == 2
    d = mine[mine["verdict"] == "deceleration"]
    assert seeds.loc[0, "decelerating"] == len(d)
    for q in ("t_d", "L_d", "r_d"):  # NaN where too few seeds decelerate for the statistic
        assert seeds.loc[0, f"{q}_mean"] == pytest.approx(d[q].mean(), nan_ok=True)
        assert seeds.loc[0, f"{q}_seed_sd"] == pytest.approx(d[q].std(ddof=1), nan_ok=True)
        assert seeds.loc[0, f"{q}_boot_se"] == pytest.approx(np.sqrt((d[f"{q}_se"] ** 2).mean()), nan_ok=True)
    trends = json.loads(suite_study.fit_trends.read_text())
    for t in trends:
        assert len(t["seeds"]) == len(t["sizes"])
        if "olmo-tiny" in t["sizes"]:
            assert t["seeds"][t["sizes"].index("olmo-tiny")] == len(d)
    assert "olmo-tiny (N = 14,336): 2 seeds" in suite_study.fit_summary.read_text()
    assert "## Across seeds" in suite_study.report.summary.read_text()
