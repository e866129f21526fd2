"""Cross-size trends that use each size's uncertainty, and the noise model behind the intervals."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import signal

from scaledyn.stats.noise import ARSieve, CurveSimulator
from scaledyn.stats.trends import ScalingTrend, fit_trend, size_points


def table(verdicts=("deceleration",) * 4, seeds=1, se=0.01, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for k, (n, v) in enumerate(zip([1e3, 1e4, 1e5, 1e6], verdicts)):
        for s in range(seeds):
            L = math.exp(1.6 - 0.03 * math.log(n) + rng.normal(0, noise))
            rows.append({"run": f"r{k}_s{s}", "size": f"size{k}", "seed": s, "N": n, "verdict": v, "L_d": L, "L_d_se": se,
                         "r_d": 0.01 * math.log(n) + rng.normal(0, noise), "r_d_se": se, "c0": 0.3, "c0_se": se})
    return pd.DataFrame(rows)


def test_trend_recovers_slope_and_uses_the_standard_errors():
    t = fit_trend(table(noise=0.002, se=0.01), "log L_d")
    assert t.slope == pytest.approx(-0.03, abs=0.003) and t.significant() and t.df == 2
    lo, hi = t.conf_int()
    assert lo < -0.03 < hi
    loose = fit_trend(table(noise=0.002, se=0.2), "log L_d")  # same points, 20x the per-size uncertainty
    assert loose.slope_se > 10 * t.slope_se and not loose.significant()


def test_overdispersion_widens_but_never_narrows():
    tight = fit_trend(table(noise=0.05, se=0.001, seed=3), "r_d")  # points scatter far more than their se
    assert tight.dispersion > 100
    X = np.column_stack([np.ones(4), np.log([1e3, 1e4, 1e5, 1e6])])
    naive = np.linalg.inv(X.T @ X / 0.001**2)
    assert tight.slope_se == pytest.approx(math.sqrt(naive[1, 1] * tight.dispersion))
    calm = fit_trend(table(noise=0.0, se=0.05), "r_d")
    assert calm.dispersion < 1 and calm.slope_se == pytest.approx(math.sqrt(np.linalg.inv(X.T @ X / 0.05**2)[1, 1]))


def test_only_decelerating_sizes_enter_and_seeds_are_pooled():
    t = fit_trend(table(verdicts=("power_law", "smooth_bend", "deceleration", "deceleration")), "r_d")
    assert not t.estimable and t.runs_excluded == 2 and "not estimable" in t.summary()
    pts = size_points(table(seeds=3, noise=0.01, se=0.001), "log L_d")
    assert len(pts) == 4 and (pts["se"] > 0.001 / math.sqrt(3)).all()  # the seed spread dominates a tiny bootstrap se


def test_trend_json_round_trip_and_prediction():
    t = fit_trend(table(noise=0.002), "log L_d")
    j = json.loads(json.dumps(t.to_json()))
    back = ScalingTrend.from_json(j)
    assert back.to_json() == j and back.p_value == pytest.approx(t.p_value)
    mean, lo, hi = back.predict([1e4, 1e5], alpha=0.05)
    assert np.all(lo < mean) and np.all(mean < hi)
    empty = fit_trend(table(verdicts=("power_law",) * 4), "r_d")
    assert ScalingTrend.from_json(json.loads(json.dumps(empty.to_json()))).estimable is False


def test_ar_sieve_keeps_autocorrelation_and_tails():
    rng = np.random.default_rng(0)
    e = rng.standard_t(3, 20000)
    x = signal.lfilter([1.0], [1, -0.8], e)
    sieve = ARSieve(x, 8)
    assert sieve.phi[0] == pytest.approx(0.8, abs=0.03)
    y = sieve.draw(rng, 20000)
    acf = lambda v: np.corrcoef(v[1:], v[:-1])[0, 1]  # noqa: E731
    assert acf(y) == pytest.approx(acf(x), abs=0.03) and y.std() == pytest.approx(x.std(), rel=0.1)
    kurt = lambda v: np.mean((v - v.mean()) ** 4) / v.var() ** 2  # noqa: E731
    assert kurt(y) > 4  # heavy tails resampled, not replaced by a normal's 3


def test_simulator_smooths_like_the_data():
    """Per-step noise pushed through the log moving average: far smaller at late fitted points."""
    steps = np.arange(1, 30001, dtype=float)
    idx = np.array([109, 999, 29999])
    sim = CurveSimulator.per_step_sieve(steps, steps, idx, True, np.random.default_rng(1).normal(0, 0.03, 30000), "test")
    draw = sim.sampler(lambda x: np.zeros_like(x))
    rng = np.random.default_rng(2)
    sd = np.array([draw(rng) for _ in range(300)]).std(0)
    width = idx + 1 - np.floor(idx / 1.2)
    assert sd == pytest.approx(0.03 / np.sqrt(width), rel=0.2)


def test_seed_table_gives_mean_and_seed_spread_beside_the_bootstrap_se():
    """Three seeds of one size, two of which decelerate, and one seed of another size: one row,
    the statistics over the two that decelerate; the trend points carry the same spread."""
    rows = [{"run": "a_s0", "size": "a", "seed": 0, "N": 1e4, "verdict": "deceleration", "t_d": 100.0, "t_d_se": 4.0,
             "L_d": 3.0, "L_d_se": 0.01, "r_d": 0.10, "r_d_se": 0.02},
            {"run": "a_s1", "size": "a", "seed": 1, "N": 1e4, "verdict": "deceleration", "t_d": 140.0, "t_d_se": 2.0,
             "L_d": 3.2, "L_d_se": 0.03, "r_d": 0.14, "r_d_se": 0.02},
            {"run": "a_s2", "size": "a", "seed": 2, "N": 1e4, "verdict": "power_law", "t_d": 900.0, "t_d_se": 1.0,
             "L_d": 9.0, "L_d_se": 0.01, "r_d": 0.9, "r_d_se": 0.01},
            {"run": "b_s0", "size": "b", "seed": 0, "N": 1e5, "verdict": "deceleration", "t_d": 200.0, "t_d_se": 5.0,
             "L_d": 2.5, "L_d_se": 0.01, "r_d": 0.2, "r_d_se": 0.01}]
    from scaledyn.stats.trends import seed_lines, seed_table

    t = seed_table(pd.DataFrame(rows))
    assert t["size"].tolist() == ["a"]
    r = t.iloc[0]
    assert (r["seeds"], r["decelerating"]) == (3, 2)
    assert r["t_d_mean"] == 120 and r["t_d_seed_sd"] == pytest.approx(math.sqrt(800)) and (r["t_d_min"], r["t_d_max"]) == (100, 140)
    assert r["t_d_boot_se"] == pytest.approx(math.sqrt((16 + 4) / 2))
    assert r["L_d_mean"] == pytest.approx(3.1) and r["r_d_seed_sd"] == pytest.approx(0.04 / math.sqrt(2))
    line = seed_lines(t)[0]
    assert line.startswith("a (N = 10,000): 3 seeds, 2 decelerate: t_d mean 120 (seed SD 28, range 100-140; "
                           "one run's bootstrap SE 3)")
    pts = size_points(pd.DataFrame(rows), "r_d").set_index("size")
    assert pts.loc["a", "seeds"] == 2 and pts.loc["a", "seed_sd"] == pytest.approx(0.04 / math.sqrt(2))
    assert pts.loc["a", "se"] == pytest.approx(0.04 / math.sqrt(2) / math.sqrt(2))  # seed spread > bootstrap 0.02
    assert pts.loc["b", "seeds"] == 1 and pd.isna(pts.loc["b", "seed_sd"]) and pts.loc["b", "se"] == pytest.approx(0.01)
