import json
import subprocess
import sys

import numpy as np
import pytest

from scaledyn.fit import (CurveError, Preprocessing, bnsl_log, fit_bnsl, fit_curve, fit_reference, log_moving_average,
                          log_subsample_mask, preprocess, read_curve_csv)

RAW = Preprocessing("none", "log", 100)


def curve(d1, f1, c0=0.3, c1=-0.2, b=10.0, T=50000, noise=0.01, seed=0):
    t = np.arange(1, T + 1, dtype=float)
    theta = np.array([np.log(b), c0, c1, np.log(d1), f1])
    rng = np.random.default_rng(seed)
    return t, np.exp(bnsl_log(np.log(t), theta) + rng.normal(0, noise, len(t)))


# A softer break (larger f1) pins its position and the asymptotic slopes less well, so the stated
# tolerances grow with f1: (relative on t_d, absolute on c0 and r_d).
@pytest.mark.parametrize("d1", [500, 2000, 6000])
@pytest.mark.parametrize("f1, tol_t, tol_slope", [(0.1, 0.1, 0.02), (0.3, 0.15, 0.02), (1.0, 0.4, 0.05)])
def test_recovers_known_break(d1, f1, tol_t, tol_slope):
    t, y = curve(d1, f1)
    r = fit_curve(t, y, RAW, bootstrap=0)
    assert r["model"] == "broken_power_law" and r["break_test"]["kind"] == "deceleration"
    assert r["t_d"] == pytest.approx(d1, rel=tol_t)
    assert r["c0"] == pytest.approx(0.3, abs=tol_slope)
    assert r["r_d"] == pytest.approx(0.1, abs=tol_slope)
    assert r["f1"] == pytest.approx(f1, rel=0.5, abs=0.05)
    L_d = 10.0 * d1**-0.3
    assert r["L_d"] == pytest.approx(L_d, rel=0.05)


def test_default_preprocessing_recovers_with_noise():
    t, y = curve(1500, 0.3, noise=0.05, T=50000)
    r = fit_curve(t, y, bootstrap=50)
    assert r["model"] == "broken_power_law"
    assert r["t_d"] == pytest.approx(1500, rel=0.25)  # the log moving average shifts the curve slightly
    assert r["r_d"] == pytest.approx(0.1, abs=0.03)
    lo, hi = r["ci"]["t_d"]
    assert lo < r["t_d"] < hi
    assert r["L_T_hat"] == pytest.approx(r["L_T"], rel=0.02)


@pytest.mark.parametrize("noise", [0.005, 0.02, 0.05])
def test_pure_power_law_has_no_break(noise):
    t = np.arange(1, 30001, dtype=float)
    y = 5 * t**-0.2 * np.exp(np.random.default_rng(1).normal(0, noise, len(t)))
    r = fit_curve(t, y, bootstrap=0)
    assert r["model"] == "power_law" and not r["break_test"]["has_break"]
    assert r["t_d"] is None and r["c0"] == pytest.approx(0.2, abs=0.01)
    assert r["note"].startswith("no break")


def test_matches_reference_procedure_where_it_converges():
    t, y = curve(6000, 0.3, T=100000, noise=0.02)
    x, ys, _ = preprocess(t, y, Preprocessing())
    ref = fit_reference(x, ys, d1_est=6000)
    mine = fit_bnsl(x, ys)
    assert mine.sse <= ref.sse * (1 + 1e-9)
    assert np.allclose(mine.theta, ref.theta, rtol=1e-3, atol=1e-4)


def test_deterministic():
    t, y = curve(800, 0.3, T=5000, noise=0.03)
    assert fit_curve(t, y, bootstrap=30, seed=4) == fit_curve(t, y, bootstrap=30, seed=4)


def test_preprocessing_matches_definitions():
    y = np.arange(1.0, 11.0)
    ys = log_moving_average(y)
    assert ys[0] == 1 and ys[5] == np.mean(y[4:6]) and ys[9] == np.mean(y[7:10])  # floor(9 / 1.2) = 7
    steps = np.arange(1, 12001)
    kept = steps[log_subsample_mask(steps)]
    assert kept[0] == 10 and 99 in kept and 101 not in kept and 110 in kept and 1100 in kept and 1110 not in kept
    assert 11000 in kept and 12000 in kept and 11500 not in kept


def test_k_break_option():
    t = np.arange(1, 20001, dtype=float)
    theta = np.array([np.log(10), 0.5, -0.3, np.log(300), 0.2, -0.1, np.log(4000), 0.2])
    y = np.exp(bnsl_log(np.log(t), theta))
    r = fit_curve(t, y, RAW, bootstrap=0, n_breaks=2)
    d = sorted(np.exp([r["broken_power_law"]["params"]["log_d1"], r["broken_power_law"]["params"]["log_d2"]]))
    assert d[0] == pytest.approx(300, rel=0.1) and d[1] == pytest.approx(4000, rel=0.1)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("step,loss\n1,2.0\n2,nan\n3,1.0\n", "row 2 (line 3): loss is nan"),
        ("step,loss\n1,2.0\n2,inf\n", "loss is inf"),
        ("step,loss\n1,2.0\n2,0\n", "row 2 (line 3, step 2): loss 0 is not positive"),
        ("step,loss\n1,2.0\n2,-1\n", "loss -1 is not positive"),
        ("step,loss\n1,2.0\n3,1.5\n2,1.0\n", "row 3 (line 4): step 2 comes after step 3"),
        ("step,loss\n1,2.0\n2,1.5\n2,1.0\n", "row 3 (line 4): step 2 is duplicated"),
        ("step,value\n1,2.0\n", "missing column(s) ['loss']"),
        ("step,loss\n1,2.0\n2,abc\n", "row 2 (line 3): loss 'abc' is not a number"),
        ("step,loss\n" + "".join(f"{s},{3 / s:.4f}\n" for s in range(1, 105)), "points remain after preprocessing"),
    ],
)
def test_bad_curves_are_refused_with_the_row(tmp_path, text, fragment):
    p = tmp_path / "c.csv"
    p.write_text(text)
    with pytest.raises(CurveError) as e:
        steps, loss = read_curve_csv(p)
        fit_curve(steps, loss)
    assert fragment in str(e.value)


def test_cli_contract(tmp_path):
    t, y = curve(700, 0.3, T=4000, noise=0.02)
    (tmp_path / "c.csv").write_text("step,loss\n" + "".join(f"{int(s)},{v:.6f}\n" for s, v in zip(t, y)))
    out = tmp_path / "fit.json"
    proc = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(tmp_path / "c.csv"), "--out", str(out),
                           "--smoothing", "none", "--subsample", "log", "--transient-steps", "50"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert {"t_d", "L_d", "r_d", "c0", "c1", "f1", "b", "rsle", "L_T_hat", "L_T", "ci", "break_test"} <= set(r)
    assert set(r["ci"]) >= {"t_d", "L_d", "r_d"} and len(r["ci"]["t_d"]) == 2
    assert r["preprocessing"] == {"smoothing": "none", "subsample": "log", "transient_steps": 50}
    bad = subprocess.run([sys.executable, "-m", "scaledyn", "fit-curve", str(tmp_path / "none.csv"), "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "none.csv: file not found" in bad.stderr
