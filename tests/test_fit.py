"""Loss-deceleration fits: the estimates, the calibrated break test, intervals, and curve input."""

import dataclasses
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from scaledyn.stats.breaktest import bootstrap_pvalue, classify
from scaledyn.stats.curve import CurveError, log_moving_average, log_subsample_mask, read_curve_csv, validate_curve
from scaledyn.stats.fit import WINDOW_COLUMNS, BrokenPowerLawFit, fit_curve, on_scale, prepare_fit, window_sensitivity
from scaledyn.stats.noise import CurveSimulator
from scaledyn.stats.options import FitOptions
from scaledyn.stats.powerlaws import bnsl_log, fit_bnsl, fit_reference


def options(**over) -> FitOptions:
    return dataclasses.replace(FitOptions.defaults(), **over)


QUICK = options(bootstrap=49)
RAW = options(smoothing="none", subsample="log", transient_steps=100, bootstrap=49)


def curve(d1, f1, c0=0.3, c1=-0.2, b=10.0, T=50000, noise=0.01, seed=0, sine=0.0):
    t = np.arange(1, T + 1, dtype=float)
    theta = [math.log(b), c0, c1, math.log(d1), f1]
    rng = np.random.default_rng(seed)
    return t, np.exp(bnsl_log(np.log(t), theta) + rng.normal(0, noise, T) + sine * np.sin(2.5 * np.log(t)))


def presmoothed(t, y):
    keep = log_subsample_mask(t)
    return t[keep], log_moving_average(y)[keep]


def write_csv(path, t, y):
    path.write_text("step,loss\n" + "".join(f"{s:.17g},{v:.9g}\n" for s, v in zip(t, y)))
    return path


# A softer break (larger f1) pins its position and the asymptotic slopes less well, so the stated
# tolerances grow with f1: (relative on t_d, absolute on c0 and r_d).
@pytest.mark.parametrize("d1", [500, 2000, 6000])
@pytest.mark.parametrize("f1, tol_t, tol_slope", [(0.1, 0.1, 0.02), (0.3, 0.15, 0.02), (0.6, 0.3, 0.04)])
def test_recovers_known_break(d1, f1, tol_t, tol_slope):
    r = fit_curve(validate_curve(*curve(d1, f1)), RAW)
    assert r.verdict == "deceleration" and r.has_break and r.test.p_value < 0.05
    d = r.derived()
    assert d["t_d"] == pytest.approx(d1, rel=tol_t)
    assert d["c0"] == pytest.approx(0.3, abs=tol_slope)
    assert d["r_d"] == pytest.approx(0.1, abs=tol_slope)
    assert d["f1"] == pytest.approx(f1, rel=0.5, abs=0.05)
    assert d["L_d"] == pytest.approx(10.0 * d1**-0.3, rel=0.05)
    assert d["slope_ratio"] == pytest.approx(3, rel=0.3)


def test_smoothing_lag_is_corrected_and_intervals_cover():
    """The log moving average makes a break at 500 look like one at ~545. Each number has the
    interval of its own estimand: t_d's holds the smoothed curve's break, t_d_corrected's the
    per-step break, and every estimate lies inside its own interval."""
    t, y = curve(500, 0.2, T=3000, noise=0.03)
    r = fit_curve(validate_curve(t, y), options(bootstrap=200))
    d, ci = r.derived(), r.conf_int()
    assert r.verdict == "deceleration"
    assert d["t_d"] == pytest.approx(545, rel=0.04)  # the reference pipeline's (lagging) estimate
    assert d["t_d_corrected"] == pytest.approx(500, rel=0.03)
    assert ci["t_d"][0] < 545 < ci["t_d"][1] and ci["t_d_corrected"][0] < 500 < ci["t_d_corrected"][1]
    assert ci["t_d"][1] / ci["t_d"][0] == pytest.approx(ci["t_d_corrected"][1] / ci["t_d_corrected"][0])
    for k in ("t_d", "t_d_corrected", "L_d", "r_d", "L_T_hat"):
        assert ci[k][0] <= d[k] <= ci[k][1], k
    assert ci["r_d"][0] < 0.1 < ci["r_d"][1]
    assert not r.warnings() and r.other_basin < 0.05
    j = r.to_json()
    assert set(j["ci"]) == {"t_d", "t_d_corrected", "L_d", "r_d", "L_T_hat"} and j["axis"] == "steps"
    assert j["t_d_corrected"] == d["t_d_corrected"] and j["warnings"] == [] and j["n_points"] == r.n_points


def test_simulated_noise_has_mean_one_in_the_loss():
    """The Jensen bias: per-step noise exp(e) averaged by the smoother has mean exp(sd^2 / 2), which
    shifted every simulated curve (and the L_d, L_T_hat intervals) up; the simulator removes it."""
    steps = np.arange(1, 20001, dtype=float)
    idx = np.array([199, 1999, 19999])
    rng = np.random.default_rng(0)
    resid = rng.normal(0, 0.4, 20000)  # large noise makes the bias large: exp(0.08) = 8%
    sim = CurveSimulator.per_step_sieve(steps, steps, idx, True, resid, "test")
    draw = sim.sampler(lambda x: np.zeros_like(x))
    mean_loss = np.mean([np.exp(draw(rng)) for _ in range(400)], axis=0)
    assert mean_loss == pytest.approx(1.0, abs=0.01)
    t, y = curve(2000, 0.2, T=20000, noise=0.3, seed=5)  # end to end: the refits centre on the estimates
    r = fit_curve(validate_curve(t, y), options(bootstrap=99))
    d, ci = r.derived(), r.conf_int()
    assert r.verdict == "deceleration" and "estimate_outside_interval" not in {w["code"] for w in r.warnings()}
    roots = r.draws() - on_scale(r.broken.theta, r.T)
    for j, k in ((1, "L_d"), (3, "L_T_hat")):  # a 4.6% upward bias would be 0.35 and 0.67 sd of these roots
        assert abs(np.nanmedian(roots[:, j])) < 0.15 * np.nanstd(roots[:, j]), k
        assert ci[k][0] < d[k] < ci[k][1], k


def test_presmoothed_curve_with_lack_of_fit_gets_sane_intervals():
    """The published curves' situation: smoothed, log-subsampled, and residuals that are mostly the
    model's lack of fit (a slow bump no broken power law has), not noise. Residuals are resampled at
    the fitted points: every interval holds its estimate and none is absurdly wide."""
    T = 262144
    t = np.arange(1, T + 1, dtype=float)
    x = np.log(t)
    bump = 0.02 * np.exp(-0.5 * ((x - 9.5) / 0.8) ** 2)  # a slow 2% wave in the loss late in training
    y = np.exp(bnsl_log(x, [math.log(12), 0.15, -0.12, math.log(5000), 0.1]) + bump
               + np.random.default_rng(7).normal(0, 0.005, T))
    ts, ys = presmoothed(t, y)
    r = fit_curve(validate_curve(ts, ys), options(bootstrap=99))
    d, ci = r.derived(), r.conf_int()
    assert r.preprocessing["input_smoothed"] == "log-ma" and r.verdict == "deceleration"
    lag1 = np.corrcoef(*(lambda e: (e[1:], e[:-1]))(r.broken.log_predict(np.log(ts[ts > 100])) - np.log(ys[ts > 100])))[0, 1]
    assert lag1 > 0.9  # the residuals are lack of fit
    for k in ("t_d", "t_d_corrected", "L_d", "r_d", "L_T_hat"):
        assert ci[k][0] <= d[k] <= ci[k][1], k
    assert ci["t_d"][1] / ci["t_d"][0] < 2.5 and ci["L_d"][1] / ci["L_d"][0] < 1.2
    assert d["t_d_corrected"] < d["t_d"] and ci["t_d_corrected"][0] < 5000 * 1.1


@pytest.mark.parametrize("noise", [0.005, 0.03])
def test_pure_power_law_is_no_break(noise):
    t = np.arange(1, 30001, dtype=float)
    y = 5 * t**-0.2 * np.exp(np.random.default_rng(1).normal(0, noise, len(t)))
    r = fit_curve(validate_curve(t, y), QUICK)
    assert r.verdict == "power_law" and not r.has_break
    j = r.to_json()
    assert j["t_d"] is None and j["c0"] == pytest.approx(0.2, abs=0.01) and j["note"].startswith("no break")
    assert j["broken_power_law"]["derived"]["t_d"] > 0  # the rejected broken fit is still shown
    assert set(j["broken_power_law"]["derived"]["ci"]) >= {"t_d", "L_d", "r_d", "L_T_hat"}


@pytest.mark.parametrize("T", [3000, 262144])
def test_saturating_law_is_a_smooth_bend_not_a_break(T):
    """The issue's false positive: E + A t^-alpha (no break) was called a break with p = 0."""
    t = np.arange(1, T + 1, dtype=float)
    y = (2.5 + 20 * t**-0.35) * np.exp(np.random.default_rng(2).normal(0, 0.02, T))
    r = fit_curve(validate_curve(t, y), QUICK)
    assert r.verdict == "smooth_bend" and r.test.null_law == "saturating_power_law"
    assert r.test.p_value >= 0.05 and r.test.p_value_bend < 0.05


def test_presmoothed_break_with_slow_structure_is_found(tmp_path):
    """The issue's false negative: a real break in a curve shared smoothed and log-subsampled, with
    slow structure the model lacks, was called a power law (n_effective 4.7, p = 1)."""
    t, y = curve(6000, 0.1, c0=0.15, c1=-0.12, b=12, T=262144, noise=0.03, sine=0.01)
    path = write_csv(tmp_path / "published.csv", *presmoothed(t, y))
    out = tmp_path / "fit.json"
    proc = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(path), "--out", str(out), "--smoothing", "none",
                           "--subsample", "none", "--bootstrap", "99"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    j = json.loads(out.read_text())
    assert j["verdict"] == "deceleration" and j["model"] == "broken_power_law"
    assert j["break_test"]["p_value"] < 0.05 and j["break_test"]["sse_ratio"] > 5  # against the better smooth law
    assert j["preprocessing"]["input_smoothed"] == "log-ma"  # recognised as the reference pipeline's output
    assert j["ci"]["t_d_corrected"][0] < 6000 < j["ci"]["t_d_corrected"][1]  # the per-step break
    assert j["ci"]["t_d"][0] <= j["t_d"] <= j["ci"]["t_d"][1]
    assert "deceleration" in proc.stdout


def test_degenerate_curves():
    t = np.arange(1, 3001, dtype=float)
    r = fit_curve(validate_curve(t, np.full(3000, 2.0)), QUICK)
    assert r.verdict == "power_law" and "noise-free" in r.test.note and r.to_json()["c0"] == pytest.approx(0, abs=1e-9)
    exact = np.exp(bnsl_log(np.log(t), [math.log(10), 0.3, -0.25, math.log(500), 0.1]))
    r = fit_curve(validate_curve(t, exact), RAW)
    assert r.verdict == "deceleration" and r.test.p_value == 0.0 and "noise-free" in r.test.note
    r = fit_curve(validate_curve(t, exact), QUICK)  # smoothed, it is no longer exactly a BNSL: tested as usual
    assert r.verdict == "deceleration" and r.test.p_value == pytest.approx(1 / 50)


@pytest.mark.parametrize("scale", [2048 * 16, 1e26])
def test_tokens_axis_equals_the_steps_fit_rescaled(tmp_path, scale):
    """Smoothing, subsampling and the transient cut work on steps whatever the fitted axis, so a
    curve in tokens (or FLOPs up to 1e30) is the steps fit with t_d in tokens; read without a step
    column, its steps are inferred from the grid. Steps that look like tokens get a warning."""
    t, y = curve(500, 0.1, T=3000, noise=0.01)
    steps = fit_curve(validate_curve(t, y), QUICK)
    tokens = fit_curve(validate_curve(t, y, x=t * scale, axis="tokens"), QUICK)
    assert tokens.verdict == steps.verdict == "deceleration" and tokens.n_points == steps.n_points
    assert tokens.test.p_value == steps.test.p_value and tokens.T == pytest.approx(3000 * scale)
    for k in ("t_d", "t_d_corrected", "L_d"):
        scaled = scale if k.startswith("t_d") else 1.0
        assert tokens.derived()[k] / scaled == pytest.approx(steps.derived()[k], rel=1e-6)
        assert np.allclose(np.array(tokens.conf_int()[k]) / scaled, steps.conf_int()[k], rtol=1e-6)
    path = tmp_path / "tokens.csv"
    path.write_text("tokens,loss\n" + "".join(f"{s * scale:.17g},{v:.9g}\n" for s, v in zip(t, y)))
    read = read_curve_csv(path, axis="tokens")
    assert read.x_per_step == pytest.approx(scale) and read.step[-1] == pytest.approx(3000)
    assert fit_curve(read, QUICK).to_json()["x_per_step"] == pytest.approx(scale)
    as_steps = fit_curve(validate_curve(t * scale, y), QUICK)  # tokens in the step column: not silent
    assert "axis_looks_scaled" in {w["code"] for w in as_steps.warnings()}


def test_sparse_log_spaced_grid_is_smoothed_by_log_distance():
    """30 log-spaced points: smoothing by row index averaged points decades apart (t_d 4,908 for a
    true 2,000); by distance in log steps each window holds its own point only."""
    t_all, y_all = curve(2000, 0.1, c0=0.4, c1=-0.35, T=20000, noise=0.003, seed=3)
    rows = np.unique(np.geomspace(1, 20000, 30).round().astype(int)) - 1
    r = fit_curve(validate_curve(t_all[rows], y_all[rows]), QUICK)
    assert r.n_points < 25 and "sparse_grid" in {w["code"] for w in r.warnings()}
    assert r.derived()["t_d"] == pytest.approx(2000, rel=0.2)
    assert r.conf_int()["r_d"][0] > 0


def test_matches_reference_procedure_where_it_converges():
    t, y = curve(6000, 0.3, T=100000, noise=0.02)
    f = prepare_fit(validate_curve(t, y), QUICK)
    ref = fit_reference(f.x, f.y, d1_est=6000)
    mine = fit_bnsl(f.x, f.y)
    assert mine.sse <= ref.sse * (1 + 1e-9)
    assert np.allclose(mine.theta, ref.theta, rtol=1e-3, atol=1e-4)


def test_deterministic():
    t, y = curve(800, 0.3, T=5000, noise=0.03)
    a = fit_curve(validate_curve(t, y), options(bootstrap=30, seed=4)).to_json()
    assert a == fit_curve(validate_curve(t, y), options(bootstrap=30, seed=4)).to_json()


def test_preprocessing_matches_definitions():
    y = np.arange(1.0, 11.0)
    ys = log_moving_average(y)
    assert ys[0] == 1 and ys[5] == np.mean(y[4:6]) and ys[9] == np.mean(y[7:10])  # floor(9 / 1.2) = 7
    steps = np.arange(1, 300001)
    kept = steps[log_subsample_mask(steps)]
    assert kept[0] == 10 and 99 in kept and 101 not in kept and 110 in kept and 1100 in kept and 1110 not in kept
    assert 11000 in kept and 11500 not in kept
    # docs/method.md (section 3) caps the stride at 1,000: 900 points in [1e5, 3e5), not 20
    assert np.sum((kept >= 100000) & (kept < 300000)) == 200 and 101000 in kept and 300000 in kept
    sparse = np.arange(7, 50000, 7)  # logged every 7th step: no decade is emptied
    k = sparse[log_subsample_mask(sparse)]
    assert all(np.any((k >= 10**d) & (k < 10 ** (d + 1))) for d in (1, 2, 3, 4))
    huge = np.geomspace(1e20, 1e30, 500)
    assert log_subsample_mask(huge).sum() == 500  # every row of a sparse 1e30 axis survives


@pytest.mark.parametrize("steps", [1, 9, 10, 11, 99, 100, 101, 999, 1000, 1234, 10000, 10001, 54321, 200000])
def test_config_counts_fitted_points_as_the_fit_keeps_them(steps):
    """The config check counts fitted points in closed form (no numpy where the workflow is
    parsed); it must agree with the mask the fit applies, on every per-step log."""
    from scaledyn.stats.curve import Preprocessing, fit_points
    from scaledyn.stats.options import fitted_points_per_step

    grid = np.arange(1, steps + 1, dtype=float)
    for transient in (0, 0.5, 9, 10, 99.5, 100, 1000, 5000, 50000):
        for sub in ("log", "none"):
            kept = len(fit_points(grid, grid, Preprocessing("none", sub, transient, "no"))[0])
            assert fitted_points_per_step(steps, transient, sub) == kept, (transient, sub)


def test_break_test_pieces():
    x = np.log(np.geomspace(100, 3000, 100))
    decel = [0, 0.3, -0.25, math.log(550), 0.2]
    assert classify(0.01, 0.05, decel, x) == ("deceleration", "")
    assert classify(0.2, 0.05, decel, x) == (None, "")
    verdict, why = classify(0.01, 0.05, [0, 0.3, -0.25, math.log(105), 0.2], x)
    assert verdict == "smooth_bend" and "edge" in why
    verdict, why = classify(0.01, 0.05, [0, 0.3, -0.25, math.log(550), 3.0], x)
    assert verdict == "smooth_bend" and "spread out" in why
    verdict, why = classify(0.01, 0.05, [0, 0.3, -0.1, math.log(550), 0.2], x)  # c0 / r_d = 1.5
    assert verdict == "smooth_bend" and "small slope change" in why
    assert classify(0.01, 0.05, [0, 0.1, 0.2, math.log(550), 0.2], x)[0] == "acceleration"


def test_sequential_pvalues_are_valid():
    """Under the null (observed and simulated statistics exchangeable) P(p <= a) <= a."""
    rng = np.random.default_rng(0)
    ps = np.array([bootstrap_pvalue(rng.random(), lambda r: r.random(), lambda s: s, 99, rng)[0] for _ in range(3000)])
    for a in (0.01, 0.05, 0.2):
        assert np.mean(ps <= a) <= a + 0.015
    assert np.mean(ps <= 0.05) >= 0.03


def test_results_object_round_trip_and_accessors():
    t, y = curve(500, 0.2, T=3000, noise=0.03)
    r = fit_curve(validate_curve(t, y), QUICK)
    j = json.loads(json.dumps(r.to_json()))
    back = BrokenPowerLawFit.from_json(j)
    assert json.loads(json.dumps(back.to_json())) == j
    assert back.verdict == r.verdict and np.allclose(back.predict([200, 2000]), r.predict([200, 2000]))
    wide, narrow = back.conf_int(0.05), back.conf_int(0.5)
    assert wide["t_d"][0] <= narrow["t_d"][0] <= narrow["t_d"][1] <= wide["t_d"][1]
    assert "deceleration" in back.summary() and "t_d" in back.summary()
    assert back.predict(1000, law="power_law") != back.predict(1000)


def test_duplicate_steps(tmp_path):
    # a resumed run re-logs steps 5..7; the file also repeats one row exactly
    text = "step,loss\n1,5\n2,4\n3,3.5\n4,3.2\n5,3.0\n6,2.9\n7,2.8\n5,3.1\n6,2.95\n7,2.85\n8,2.7\n8,2.7\n"
    p = tmp_path / "c.csv"
    p.write_text(text)
    with pytest.warns(UserWarning, match="3 step"):
        c = read_curve_csv(p)
    assert c.step.tolist() == [1, 2, 3, 4, 5, 6, 7, 8] and c.loss[4:7].tolist() == [3.1, 2.95, 2.85]
    assert c.duplicates == {"policy": "last", "exact_repeats_dropped": 1, "conflicting_steps": 3, "rows_dropped": 4}
    with pytest.warns(UserWarning):
        assert read_curve_csv(p, "first").loss[4:7].tolist() == [3.0, 2.9, 2.8]
    with pytest.warns(UserWarning):
        assert read_curve_csv(p, "mean").loss[4] == pytest.approx(3.05)
    with pytest.raises(CurveError, match=r"row 8 \(line 9\): step 5 appears 2 times"):
        read_curve_csv(p, "error")
    block = tmp_path / "block.csv"  # a block of the log appended again: repeats, not steps out of order
    block.write_text("step,loss\n" + "".join(f"{s},{10 / s}\n" for s in range(1, 21)) + "".join(f"{s},{10 / s}\n" for s in range(5, 9)))
    assert read_curve_csv(block).step.tolist() == list(range(1, 21))
    exact = tmp_path / "exact.csv"
    exact.write_text("step,loss\n1,5\n2,4\n2,4\n3,3\n")
    assert read_curve_csv(exact, "error").step.tolist() == [1, 2, 3]  # exact repeats are always fine


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"step,loss\n1,2.0\n2,nan\n3,1.0\n", "row 2 (line 3): loss is nan"),
        (b"step,loss\n1,2.0\n2,inf\n", "loss is inf"),
        (b"step,loss\n1,2.0\n2,0\n", "row 2 (line 3): loss 0 is not positive"),
        (b"step,loss\n1,2.0\n2,-1\n", "loss -1 is not positive"),
        (b"step,loss\n1,2.0\n3,1.5\n2,1.0\n", "row 3 (line 4): step 2 comes after step 3"),
        (b"step,value\n1,2.0\n", "missing column(s) ['loss']"),
        (b"step,loss\n1,2.0\n2,abc\n", "row 2 (line 3): loss 'abc' is not a number"),
        (b"step,loss\n1,2.0\n2,\n", "row 2 (line 3): loss is empty"),
        (b"step,loss\n", "header only, no data rows"),
        (b"", "empty file"),
        (b"step,loss\n1,2.0\n2,1.5\xff\n", "not UTF-8 text (byte 0xff"),
        (b"step,loss\n" + b"".join(f"{s},{3 / s:.4f}\n".encode() for s in range(1, 105)), "points remain after preprocessing"),
    ],
)
def test_bad_curves_are_refused_with_the_row(tmp_path, content, fragment):
    p = tmp_path / "c.csv"
    p.write_bytes(content)
    with pytest.raises(CurveError) as e:
        fit_curve(read_curve_csv(p), QUICK)
    assert fragment in str(e.value)


def test_cli_contract(tmp_path):
    t, y = curve(700, 0.3, T=4000, noise=0.02)
    path = write_csv(tmp_path / "c.csv", t, y)
    out = tmp_path / "fit.json"
    proc = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(path), "--out", str(out),
                           "--smoothing", "none", "--subsample", "log", "--transient-steps", "50", "--bootstrap", "49"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert {"t_d", "L_d", "r_d", "c0", "c1", "f1", "b", "rsle", "L_T_hat", "L_T", "ci", "break_test", "verdict"} <= set(r)
    assert set(r["ci"]) >= {"t_d", "L_d", "r_d"} and len(r["ci"]["t_d"]) == 2
    assert r["preprocessing"] == {"smoothing": "none", "subsample": "log", "transient_steps": 50, "input_smoothed": "no"}
    assert r["axis"] == "steps" and isinstance(r["warnings"], list) and r["n_points"] > 7
    assert {"verdict", "p_value", "f1", "slope_ratio", "has_break"} <= set(r["break_test"])
    bad = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(tmp_path / "none.csv"), "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "none.csv: file not found" in bad.stderr and "Traceback" not in bad.stderr
    for flags, says in ((["--bootstrap", "5"], "--bootstrap: 5 is less than the minimum of 20"),
                        (["--alpha", "0.01", "--bootstrap", "50"], "--bootstrap: 50 draws can never give p < alpha = 0.01"),
                        (["--alpha", "2"], "--alpha: 2.0 is greater than the maximum of 0.5"),
                        (["--transient-steps", "-50"], "--transient-steps: -50.0 is less than the minimum of 0"),
                        (["--seed", "-3"], "--seed: -3 is less than the minimum of 0")):
        bad = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(path), "--out", str(out), *flags],
                             capture_output=True, text=True)
        assert bad.returncode != 0 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_window_sensitivity_tells_a_trained_break_from_a_window_made_one(tmp_path):
    """A real break keeps its verdict and t_d when the fit window moves; a smoothly flattening curve
    (E + A t^-alpha) gets one in at most a stray window (each window is a 5% test of its own)."""
    t, y = curve(800, 0.1, T=6000, noise=0.01)
    out = tmp_path / "windows.csv"
    proc = subprocess.run([sys.executable, "-m", "scaledyn", "fit-windows", str(write_csv(tmp_path / "c.csv", t, y)),
                           "--out", str(out), "--options", options(smoothing="none", bootstrap=49).to_json()],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    w = pd.read_csv(out)
    assert list(w.columns) == WINDOW_COLUMNS
    assert sorted(zip(w["transient_steps"], w["end_step"])) == [(a, b) for a in (50, 100, 200) for b in (4000, 6000)]  # transient 100
    assert (w["verdict"] == "deceleration").all()
    assert ((w["t_d"] / 800 - 1).abs() < 0.25).all()
    assert (w["t_d_low"] <= w["t_d"]).all() and (w["t_d"] <= w["t_d_high"]).all()
    smooth = (2.5 + 20 * t**-0.35) * np.exp(np.random.default_rng(3).normal(0, 0.02, t.size))
    rows = window_sensitivity(validate_curve(t, smooth), options(smoothing="none", bootstrap=49))
    assert len(rows) == 6 and sum(r["verdict"] == "deceleration" for r in rows) <= 1


def test_calibration_smoke():
    """The calibration script (benchmarks/) on a few curves: nulls rarely, real breaks nearly always,
    both methods (warp-speed screen, shipped procedure) into one table."""
    from benchmarks import calibrate_breaks as cb

    nulls = cb.summarise(*_scenario(cb, "power_law", (), 40))
    breaks = cb.summarise(*_scenario(cb, "broken", (("f1", 0.2), ("ratio", 8)), 40))
    assert nulls["break_rate"] <= 0.15
    assert breaks["deceleration_rate"] >= 0.9 and breaks["cover_t_d"] >= 0.8 and breaks["cover_t_d_corrected"] >= 0.8
    s = cb.Scenario(3000, "presmoothed", "broken", (("f1", 0.2), ("ratio", 8)), "iid")
    shipped = cb.shipped_row(s, [cb.shipped_check(s, i) for i in range(2)])
    assert shipped["method"] == "shipped" and shipped["estimate_in_interval"] == 1.0 and shipped["deceleration_rate"] == 1.0
    table = cb.markdown(pd.DataFrame([nulls, breaks, shipped]))
    assert "false-positive rate" in table and "| power_law | iid |" in table and "The shipped procedure" in table
    assert table.index("The shipped procedure") < table.index("Warp-speed")


def test_near_floor_slow_structure_is_warned():
    """The calibrated false-positive zone: a saturating curve 10% above its floor with a 1%
    log-periodic wiggle, 3,000 steps. When it is called a deceleration, the call carries near_floor."""
    from benchmarks import calibrate_breaks as cb

    s = cb.Scenario(3000, "raw", "saturating", (("q", 0.9),), "slow")
    called = 0
    for i in range(4):
        t, y, _, _ = cb.observed(s, np.random.default_rng(s.seed(i)))
        r = fit_curve(validate_curve(t, y), QUICK)
        if r.verdict == "deceleration":
            called += 1
            assert "near_floor" in {w["code"] for w in r.warnings()}
            assert "near_floor" in {w["code"] for w in r.to_json()["warnings"]} and "Warning [near_floor]" in r.summary()
    assert called >= 2  # the zone is real: most such curves pass the test


def _scenario(cb, truth, params, n):
    s = cb.Scenario(3000, "raw", truth, params, "iid")
    return s, [cb.one_curve(s, i) for i in range(n)]


def test_appended_blocks_of_logged_steps_are_repeats_and_only_new_steps_out_of_order_are_refused():
    """A resumed or concatenated log appends blocks of steps already logged (same or other losses):
    they are repeats, resolved by on_duplicate, never "not a repeat of an earlier step". Only a step
    logged once and out of order gets that message, and it names the right rows."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        step = np.unique(np.round(np.geomspace(1, 1000, int(rng.integers(5, 40)))))
        loss = 2 + 1 / step
        a = int(rng.integers(0, len(step)))
        b = int(rng.integers(a, len(step))) + 1
        block = [step[a:b], step[a:b], np.r_[step[a:b], step[a:b]]][int(rng.integers(0, 3))]
        new = np.arange(step[-1] + 1, step[-1] + 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = validate_curve(np.r_[step, block, new], np.r_[loss, 2 + rng.random(len(block)), 2 + 1 / new])
        assert np.array_equal(c.step, np.r_[step, new])
    with pytest.raises(CurveError, match=r"row 4 \(line 5\): step 2.5 comes after step 3 \(row 3"):
        validate_curve([1, 2, 3, 2.5, 4], [3, 2.9, 2.8, 2.85, 2.7])
