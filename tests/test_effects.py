"""Interventions: the config's overrides, the runs they add, and the paired effects with intervals."""

import copy
import dataclasses
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, log_rows

from scaledyn.config import load_study
from scaledyn.errors import ConfigError
from scaledyn.stats.curve import validate_curve
from scaledyn.stats.effects import Pair, d_effects, effects_table, fit_effects, loss_effect, size_trends
from scaledyn.stats.fit import fit_curve
from scaledyn.stats.options import FitOptions
from scaledyn.stats.powerlaws import bnsl_log

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
OPTIONS = dataclasses.replace(FitOptions.defaults(), bootstrap=99)


def study(**interventions):
    return load_study({**copy.deepcopy(DEFAULT), "interventions": interventions})


def test_overrides_merge_into_every_size_and_seed_and_keep_the_rest():
    s = study(**{"warmup-600": {"train": {"schedule": {"warmup_steps": 600}}},
                 "muon": {"train": {"optimizer": {"name": "muon", "momentum": 0.95}}}})
    base = list(s.baseline_runs)
    assert list(s.runs) == base + [f"{r}_warmup-600" for r in base] + [f"{r}_muon" for r in base]
    for r in base:
        b, w, m = s.run_spec(r), s.run_spec(f"{r}_warmup-600"), s.run_spec(f"{r}_muon")
        assert w.schedule.warmup_steps == 600 and w.schedule.kind == b.schedule.kind and w.optimizer == b.optimizer
        assert m.optimizer.name == "muon" and m.optimizer.momentum == 0.95 and m.optimizer.betas == b.optimizer.betas
        assert m.schedule == b.schedule and m.data_seed == b.data_seed and m.batch_size == b.batch_size
        assert s.intervention_of(f"{r}_muon") == "muon" and s.intervention_of(r) is None
        assert s.baseline_of(f"{r}_muon") == r and s.run_spec(r) == load_study(DEFAULT).run_spec(r)  # baselines unchanged
    assert s.trend_runs == base and s.data == load_study(DEFAULT).data


@pytest.mark.parametrize("over, message", [
    ({"train": {"optimizer": {"nesterov": True}}}, "interventions.bad: train.optimizer: Additional properties are not "
                                                   "allowed ('nesterov' was unexpected)"),
    ({"train": {"schedule": {"warmup_steps": 10**6}}}, "interventions.bad: train.schedule: warmup_steps + cooldown_steps"),
    ({"train": {"lr": -1}}, "interventions.bad: train.lr: learning rate must be positive"),
    ({"train": {"optimizer": {"name": "adam"}}}, "interventions.bad: train.optimizer.name: 'adam' is not one of"),
    ({"data": {"seq_len": 64}}, "interventions.bad.data: an intervention overrides training options only"),
    ({"train": {"steps": 100}}, "interventions.bad.train.steps: every run of a study trains for train.steps"),
])
def test_a_bad_override_names_the_intervention_and_the_key(over, message):
    with pytest.raises(ConfigError, match="^config: " + message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        study(bad=over)


def test_an_intervention_name_that_would_make_ambiguous_run_names_is_refused():
    with pytest.raises(ConfigError, match="interventions: 'a_b' is not allowed: An intervention's name"):
        study(a_b={"train": {}})


def _curve(t_d: float, seed: int):
    t = np.arange(1, 3001, dtype=float)
    y = np.exp(bnsl_log(np.log(t), [math.log(10), 0.3, -0.25, math.log(t_d), 0.1])
               + np.random.default_rng(seed).normal(0, 0.02, len(t)))
    return validate_curve(t, y)


PAIR = Pair("x", "tiny", 1000, 0, "tiny_s0_x", "tiny_s0")


def test_an_intervention_that_changes_nothing_has_zero_effects_with_intervals_that_include_zero():
    """Same seed, a no-op override: the two runs are identical, so every effect is exactly null."""
    fit = fit_curve(_curve(500, 0), OPTIONS)
    zsl = pd.DataFrame([{"run": r, "variant": v, "split": "eval", "granularity": "token", "step": s, "step_next": s * 2
                         if v == "dt=t" else s + 1, "n": 3, "D": 0.5 + 0.01 * s / 1000, "D_std": 0.02}
                        for r in ("tiny_s0", "tiny_s0_x") for v in ("dt=t", "dt=1") for s in (64, 256, 1024, 2048)])
    losses = pd.Series(np.random.default_rng(1).gamma(5, 1, 200))
    table = effects_table([PAIR], {"tiny_s0": fit, "tiny_s0_x": fit}, zsl, {"tiny_s0": losses, "tiny_s0_x": losses})
    assert len(table) == 3 + 4 + 1 and table["effect"].notna().all()
    for _, r in table.iterrows():
        assert r["effect"] == pytest.approx(r["null"]) and r["effect_lo"] <= r["null"] <= r["effect_hi"], r["quantity"]
        assert not r["excludes_null"]


def test_a_known_shift_of_t_d_lies_inside_its_interval():
    """Two simulated runs whose breaks are at 400 and 800 steps: the ratio 2 is inside the interval,
    which excludes 1. (L_d and r_d are the smoothed curve's, whose values move with the break's
    place even at equal slopes: no truth to check them against here.)"""
    a, b = fit_curve(_curve(800, 1), OPTIONS), fit_curve(_curve(400, 2), OPTIONS)
    assert a.verdict == b.verdict == "deceleration"
    rows = {r["quantity"]: r for r in fit_effects(PAIR, a, b)}
    t = rows["t_d"]
    assert t["effect_lo"] < 2 < t["effect_hi"] and t["excludes_null"] and t["effect"] == pytest.approx(
        a.derived()["t_d"] / b.derived()["t_d"])
    assert rows["L_d"]["effect"] == pytest.approx(a.derived()["L_d"] - b.derived()["L_d"])
    assert rows["L_d"]["effect_lo"] < rows["L_d"]["effect"] < rows["L_d"]["effect_hi"]


def test_a_run_without_a_break_is_said_so_not_subtracted():
    t = np.arange(1, 3001, dtype=float)
    smooth = fit_curve(validate_curve(t, 10 * t**-0.3 * np.exp(np.random.default_rng(3).normal(0, 0.02, 3000))), OPTIONS)
    assert smooth.verdict != "deceleration"
    rows = fit_effects(PAIR, smooth, fit_curve(_curve(500, 0), OPTIONS))
    assert all(r["effect"] is None and f"tiny_s0_x: no deceleration (verdict {smooth.verdict})" in r["note"] for r in rows)
    d = d_effects(PAIR, pd.DataFrame(columns=["run", "variant", "split", "granularity", "step", "step_next", "n", "D",
                                              "D_std"]), {"tiny_s0": 500.0, "tiny_s0_x": None})
    assert all(r["effect"] is None and "no t_d for tiny_s0_x" in r["note"] for r in d)


def test_final_loss_is_paired_by_example_and_seeds_pool_with_a_t_interval():
    rng = np.random.default_rng(0)
    base = pd.Series(rng.gamma(5, 1, 500))
    row = loss_effect(PAIR, base - 0.1 + rng.normal(0, 0.01, 500), base)
    assert row["effect_lo"] < -0.1 < row["effect_hi"] and row["effect_hi"] - row["effect_lo"] < 0.01
    rows = []
    for size, N, shift in (("a", 1000, 0.9), ("b", 3000, 0.8), ("c", 9000, 0.7)):
        for seed in (0, 1, 2):
            rows.append({"intervention": "x", "size": size, "N": N, "seed": seed, "quantity": "t_d", "scale": "ratio",
                         "effect": shift * (1 + 0.01 * seed), "effect_lo": shift * 0.95, "effect_hi": shift * 1.07,
                         "baseline": 500.0, "treated": 500 * shift})
    from scaledyn.stats.effects import pooled

    table = pd.DataFrame(rows)
    pool = pooled(table)
    assert len(pool) == 3 and (pool["seed"] == -1).all() and pool["note"].str.contains("mean over 3 seeds").all()
    trend = size_trends(pd.concat([table, pool], ignore_index=True))[("x", "t_d")]
    assert trend.estimable and trend.slope < 0 and trend.sizes == ["a", "b", "c"]


def test_adding_interventions_to_a_finished_study_trains_only_their_runs_and_reports_effects(tiny_study, tmp_path):
    """On a copy of the finished tiny study, an intervention that changes nothing (grad_clip at its
    default) plans exactly one training job per size, all of them its own; run end to end, its
    effects are exactly null where estimable, the others say why, and the report has them."""
    import shutil

    from conftest import run_workflow

    from scaledyn.layout import Layout

    work = tmp_path / "study"
    shutil.copytree(tiny_study.root.parent, work, ignore=shutil.ignore_patterns("locks"))
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["interventions"] = {"noop": {"train": {"grad_clip": 1.0}}}
    plan = run_workflow(work, cfg, "-n", "-p", "--rerun-triggers", "params", "mtime")
    stats = plan.stdout.split("Job stats:")[-1]
    assert re.search(r"^train\s+2$", stats, re.M) and re.search(r"^effects\s+1$", stats, re.M)
    blocks = [b for b in re.split(r"\n(?=(?:local)?rule \w+:)", plan.stdout) if b.startswith("rule train:")]
    trained = [re.search(r"wildcards: run=(\S+)", b).group(1) for b in blocks]
    assert sorted(trained) == ["tiny-1k_s0_noop", "tiny-6k_s0_noop"]
    run_workflow(work, cfg, "--cores", "2", "--rerun-triggers", "params", "mtime")
    out = Layout(work / "results")
    for size in ("tiny-1k", "tiny-6k"):
        assert log_rows(out.run(f"{size}_s0_noop").train_log) == log_rows(out.run(f"{size}_s0").train_log)
    effects = pd.read_csv(out.effects)
    assert set(effects["run"]) == {"tiny-1k_s0_noop", "tiny-6k_s0_noop"} and len(effects) == 2 * 8
    done = effects[effects["effect"].notna()]
    assert len(done) and (done["effect"] == done["null"]).all() and not done["excludes_null"].any()
    assert (effects.loc[effects["effect"].isna(), "note"].str.startswith("not compared")).all()
    assert "final eval loss" in set(done["quantity"])
    summary = out.report.summary.read_text()
    assert "## Interventions" in summary and "noop, final eval loss" in summary and "includes 0 at every size" in summary
    assert out.report.figure("effects").stat().st_size > 1000


def test_the_effects_calibration_runs_on_a_few_pairs(tmp_path):
    """benchmarks/calibrate_effects.py on two pairs (its rates mean nothing here): the truth is a
    ratio near the simulated one, and the table and CSV are written."""
    from benchmarks import calibrate_effects as ce

    rows = pd.DataFrame([ce.one_pair(("iid", r, 0)) for r in (1.0, 2.0)])
    assert rows["truth"].tolist() == pytest.approx([1.0, 2.0], rel=0.1)
    table = ce.summarise(rows)
    assert list(table["ratio"]) == [1.0, 2.0] and (table["pairs"] == 1).all()
    assert "| noise" in ce.markdown(table, 1)
