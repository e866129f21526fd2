"""The statistics of loss curves, usable without the training stack: reading and preprocessing a
curve, the three laws, the noise models, the break test, the broken power law fit with its
intervals and warnings (`BrokenPowerLawFit`), and trends across sizes (`ScalingTrend`).

    from scaledyn.stats import FitOptions, fit_curve, read_curve_csv
    fit = fit_curve(read_curve_csv("loss.csv"))
    print(fit.summary()); fit.conf_int()

Imports nothing from torch, transformers or the training side (tests/test_layout.py checks it). The
names below are imported on first use, so that `scaledyn.stats.options` (which the workflow's
config needs at parse time, where only Snakemake may be installed) pulls in no numpy or scipy.
The method: docs/method.md sections 3-5 and 7-9.
"""

import importlib

_HOME = {"Curve": "curve", "read_curve_csv": "curve", "BrokenPowerLawFit": "fit", "fit_curve": "fit",
         "FitOptions": "options", "ScalingTrend": "trends"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
