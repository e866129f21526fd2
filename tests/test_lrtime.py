"""Learning-rate time and the schedule verdict (stats/lrtime.py): is a run's break the schedule's?"""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from benchmarks import calibrate_schedule as cs
from scaledyn.errors import CurveError
from scaledyn.schedule import Schedule, lr_factor
from scaledyn.stats.curve import read_curve_csv, validate_curve
from scaledyn.stats.fit import fit_curve, read_fit, with_schedule_verdict
from scaledyn.stats.lrtime import classify, describe, to_lr_time
from scaledyn.stats.options import FitOptions
from scaledyn.stats.powerlaws import bnsl_log
from scaledyn.stats.trends import per_size_table

QUICK = dataclasses.replace(FitOptions.defaults(), bootstrap=49)
SCHEDULE = {"kind": "trapezoidal", "warmup_steps": 50, "warmup_start_factor": 0.1, "cooldown_steps": 100,
            "final_lr_factor": 0.1, "steps": 1000, "lr": 3e-3}


def rates(schedule: dict) -> np.ndarray:
    s = Schedule(**{k: v for k, v in schedule.items() if k not in ("steps", "lr")})
    return np.array([lr_factor(s, t, schedule["steps"]) for t in range(schedule["steps"])])


def test_lr_column_and_schedule_give_the_same_time_and_cut_the_decay():
    eta = rates(SCHEDULE)
    t = np.arange(1, 1001, dtype=float)
    curve = validate_curve(t, 5 * t**-0.2, lr=np.round(3e-3 * eta, 9))
    from_log, from_schedule = to_lr_time(curve), to_lr_time(curve, SCHEDULE)
    np.testing.assert_allclose(from_log.x, from_schedule.x, rtol=1e-6)
    np.testing.assert_allclose(from_log.x, np.cumsum(eta)[: len(from_log.x)], rtol=1e-6)
    assert from_log.x[0] == pytest.approx(0.1) and from_log.x[99] == pytest.approx(0.1 * 50 + 0.45 * 49 + 50)
    # the cool-down runs from update 901; the rate is below 0.9 of its peak from update 912 on
    assert from_log.lr_time["decay_from_step"] == from_schedule.lr_time["decay_from_step"] == 912
    assert from_log.step[-1] == 911 and from_log.lr_time["steps_dropped"] == 89
    assert from_log.axis == "lr-area" and from_log.lr_time["source"] == "lr column"
    # a cosine decays from the end of its warm-up: the S axis keeps the first fifth or so of the decay
    cos = {**SCHEDULE, "kind": "cosine", "cooldown_steps": 0}
    progress = math.acos(2 * (0.9 - 0.1) / 0.9 - 1) / math.pi  # 0.1 + 0.9 (1 + cos(pi p)) / 2 = 0.9
    assert to_lr_time(curve, cos).lr_time["decay_from_step"] == pytest.approx(50 + progress * 950, abs=2)
    constant = validate_curve(t, 5 * t**-0.2, lr=np.full(1000, 1e-3))
    assert np.array_equal(to_lr_time(constant).x, t) and to_lr_time(constant).lr_time["decay_from_step"] is None


@pytest.mark.parametrize("kind, fragment", [
    ("no lr", "needs an lr column"), ("sparse", "needs every step from 1"),
    ("short schedule", "steps is 100 but the curve goes on to step 1000"),
    ("zero rate", "the learning rate is zero before the decay phase")])
def test_learning_rate_time_refuses_what_it_cannot_build(kind, fragment):
    t = np.arange(1, 1001, dtype=float)
    lr = np.full(1000, 1e-3)
    if kind == "zero rate":
        lr[0] = 0  # a warm-up from zero: S does not advance at step 1
    curve = validate_curve(t, 5 * t**-0.2, lr=None if kind == "no lr" else lr)
    if kind == "sparse":
        curve = curve.truncated(curve.step % 10 == 0)
    with pytest.raises(CurveError, match=fragment):
        to_lr_time(curve, {**SCHEDULE, "steps": 100} if kind == "short schedule" else None)


def test_classification_rules():
    assert classify("deceleration", "deceleration", [900, 1100], [1000, 1300]) == "deceleration"
    assert classify("deceleration", "deceleration", [600, 700], [1000, 1300]) == "break_moves"
    assert classify("deceleration", "power_law", [600, 700], None) == "schedule"
    assert classify("deceleration", "smooth_bend", [600, 700], None, cross_p=0.3) == "schedule"
    assert classify("deceleration", "smooth_bend", [600, 700], None, cross_p=0.01) == "steps_only"
    assert classify("power_law", "deceleration", None, [600, 700]) == "lr_time_only"
    assert classify("smooth_bend", "power_law", None, None) == "smooth_bend"


def test_constant_rate_gives_the_same_fit_on_both_axes():
    """No warm-up, no decay: S is the step count, so both axes give one verdict and one t_d."""
    t = np.arange(1, 3001, dtype=float)
    y = np.exp(bnsl_log(np.log(t), [math.log(10), 0.3, -0.25, math.log(500), 0.1])
               + np.random.default_rng(0).normal(0, 0.02, 3000))
    curve = validate_curve(t, y, lr=np.full(3000, 3e-3))
    fit = with_schedule_verdict(fit_curve(curve, QUICK), curve, QUICK)
    s, a = fit.schedule["steps"], fit.schedule["lr_area"]
    assert fit.schedule["verdict"] == fit.verdict == a["verdict"] == "deceleration"
    assert a["t_d"] == pytest.approx(s["t_d"]) and a["t_d_steps"] == pytest.approx(s["t_d"])
    assert a["ci_t_d_steps"] == pytest.approx(s["ci_t_d"])


@pytest.mark.parametrize("warmup, truth, ratio, expected", [
    (200, "lr_power", None, {"schedule", "smooth_bend", "power_law"}),  # (a): never the training's break
    (200, "lr_broken", 8, set(cs.FOUND)),  # (b): a break in learning-rate time survives there
    (20, "step_broken", 8, {"deceleration"}),  # (c), short warm-up: one break on both clocks
])
def test_simulated_runs_get_the_verdict_of_their_truth(warmup, truth, ratio, expected):
    sc = cs.Scenario(warmup, truth, ratio)
    for i in range(2):
        curve, _ = cs.observed(sc, np.random.default_rng(sc.seed(i)), QUICK.transient_steps)
        fit = with_schedule_verdict(fit_curve(curve, QUICK), curve, QUICK)
        assert fit.schedule["verdict"] in expected, (sc, i, fit.schedule)


@pytest.mark.parametrize("warmup, truth, ratio, i, expected", [
    (200, "lr_power", None, 0, "schedule"),  # the warm-up's bend: S's smooth law explains it
    (2000, "step_broken", 4, 4, "steps_only"),  # a break in steps at step 2,078, past a long warm-up
])
def test_the_cross_clock_test_tells_the_schedules_bend_from_a_break_on_the_step_clock(warmup, truth, ratio, i, expected):
    """A deceleration in steps and a smooth law in S: is the S law as good an account of the points?"""
    sc = cs.Scenario(warmup, truth, ratio)
    curve, true_step = cs.observed(sc, np.random.default_rng(sc.seed(i)), QUICK.transient_steps)
    fit = with_schedule_verdict(fit_curve(curve, QUICK), curve, QUICK)
    cross = fit.schedule["cross_clock"]
    assert fit.schedule["verdict"] == expected, fit.schedule
    assert fit.schedule["steps"]["verdict"] == "deceleration" and fit.schedule["lr_area"]["verdict"] != "deceleration"
    assert (cross["p_value"] < 0.05) == (expected == "steps_only") and cross["draws"] >= 10
    assert "the steps break against S's smooth law: p = " in describe(fit.schedule)


def test_the_schedule_makes_a_bend_in_steps_that_learning_rate_time_removes():
    """A power law in S under a long warm-up: steps see a significant bend, S a plain power law."""
    sc = cs.Scenario(200, "lr_power", None)
    curve, _ = cs.observed(sc, np.random.default_rng(sc.seed(0)), QUICK.transient_steps)
    steps_fit = fit_curve(curve, QUICK)
    lr_fit = fit_curve(to_lr_time(curve), dataclasses.replace(QUICK, axis="lr-area"))
    assert steps_fit.test.p_value < 0.05 and steps_fit.verdict in ("deceleration", "smooth_bend")
    assert lr_fit.verdict == "power_law" and lr_fit.power_law.theta[1] == pytest.approx(0.25, abs=0.02)


def test_fit_json_round_trip_and_the_fit_table(tmp_path):
    t = np.arange(1, 3001, dtype=float)
    eta = rates({**SCHEDULE, "warmup_steps": 20, "cooldown_steps": 0, "steps": 3000})
    S = np.cumsum(eta)
    y = np.exp(bnsl_log(np.log(S), [math.log(10), 0.3, -0.25, math.log(500), 0.1])
               + np.random.default_rng(1).normal(0, 0.02, 3000))
    pd.DataFrame({"step": t.astype(int), "loss": y, "lr": 3e-3 * eta}).to_csv(tmp_path / "log.csv", index=False)
    out = tmp_path / "fit.json"
    r = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(tmp_path / "log.csv"), "--out", str(out),
                        "--bootstrap", "49"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Schedule verdict: deceleration" in r.stdout
    j = json.loads(out.read_text())
    assert j["schedule_verdict"] == "deceleration" and j["schedule_comparison"]["lr_area"]["source"] == "lr column"
    back = read_fit(out)
    assert back.schedule == j["schedule_comparison"] and json.loads(json.dumps(back.to_json())) == j
    # the S fit by itself: t_d in S, mapped to steps with its interval
    r = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(tmp_path / "log.csv"), "--out",
                        str(tmp_path / "s.json"), "--axis", "lr-area", "--bootstrap", "49"], capture_output=True, text=True)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["axis"] == "lr-area" and s["schedule_verdict"] is None and s["t_d"] == pytest.approx(500, rel=0.15)
    assert s["t_d_steps"] == pytest.approx(s["t_d"] + 0.45 * 21, rel=1e-4)  # S = t - 0.45 (20 + 1) after the warm-up
    lo, hi = s["ci"]["t_d_steps"]
    assert lo < s["t_d_steps"] < hi and s["estimands"]["t_d_steps"]
    run = type("Run", (), {"run": "r", "size": "x", "seed": 0, "non_embedding_params": 10, "total_params": 20})
    row = per_size_table([back], [run]).iloc[0]
    assert row["schedule_verdict"] == "deceleration" and row["lr_area_t_d_steps_lo"] < row["lr_area_t_d_steps"]
    # without an lr column nothing is classified, and the fit says why
    pd.DataFrame({"step": t.astype(int), "loss": y}).to_csv(tmp_path / "nolr.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(tmp_path / "nolr.csv"), "--out",
                        str(out), "--bootstrap", "49"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(out.read_text())["schedule_verdict"] is None
    assert "not classified" in r.stdout
    # ... unless the schedule is given; a bad one is refused by the flag's name, before any fitting
    given = {"kind": "trapezoidal", "warmup_steps": 20, "steps": 3000}
    r = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(tmp_path / "nolr.csv"), "--out", str(out),
                        "--bootstrap", "49", "--schedule", json.dumps(given)], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(out.read_text())["schedule_comparison"]["lr_area"]["source"] == "schedule"
    for bad, fragment in (({"kind": "cosine"}, "--schedule: 'steps' is a required property"),
                          ({**given, "warmup": 3}, "--schedule: Unevaluated properties"), ("[1]", "expected a JSON object")):
        r = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(tmp_path / "nolr.csv"), "--out", str(out),
                            "--schedule", bad if isinstance(bad, str) else json.dumps(bad)], capture_output=True, text=True)
        assert r.returncode != 0 and fragment in r.stderr.strip().splitlines()[-1], r.stderr


def test_read_curve_keeps_the_lr_column_through_duplicates(tmp_path):
    (tmp_path / "c.csv").write_text("step,loss,lr\n1,5,0.1\n2,4,0.2\n3,3,0.3\n2,4.5,0.2\n3,3.5,0.3\n4,3,0.3\n")
    with pytest.warns(UserWarning, match="2 step"):
        c = read_curve_csv(tmp_path / "c.csv")
    assert c.step.tolist() == [1, 2, 3, 4] and c.lr.tolist() == [0.1, 0.2, 0.3, 0.3] and c.loss.tolist() == [5, 4.5, 3.5, 3]
    (tmp_path / "d.csv").write_text("step,loss,lr\n1,5,0.1\n2,4,-0.2\n")
    with pytest.raises(CurveError, match="row 2 .*lr is -0.2"):
        read_curve_csv(tmp_path / "d.csv")


def test_calibration_smoke():
    """benchmarks/calibrate_schedule.py on a few curves: the warp-speed screen and its table."""
    sc = cs.Scenario(20, "step_broken", 8)
    row = cs.warp_row(sc, [cs.warp_curve(sc, i) for i in range(3)])
    assert row["method"] == "warp-speed" and row["curves"] == 3 and row["late_breaks"] == 3
    assert row["found"] == row["found_late"] and sum(row[k] for k in cs.VERDICTS) == pytest.approx(1)
    table = cs.markdown(pd.DataFrame([row]))
    assert "| warp-speed | step_broken (c0/r_d 8) | 20 | 3 |" in table and "found, break after warm-up" in table
