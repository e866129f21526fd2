"""The statistics of loss curves, usable without the training stack: reading and preprocessing a
curve, the three laws, the noise models, the break test, the broken power law fit with its
intervals and warnings (`BrokenPowerLawFit`), and trends across sizes (`ScalingTrend`).

    from scaledyn.stats import FitOptions, fit_curve, read_curve_csv
    fit = fit_curve(read_curve_csv("loss.csv"))
    print(fit.summary()); fit.conf_int()

Imports nothing from torch, transformers or the training side (tests/test_layout.py checks it).
The method: docs/method.md sections 3-5 and 7-9.
"""

from .curve import Curve, read_curve_csv
from .fit import BrokenPowerLawFit, fit_curve
from .options import FitOptions
from .trends import ScalingTrend

__all__ = ["BrokenPowerLawFit", "Curve", "FitOptions", "ScalingTrend", "fit_curve", "read_curve_csv"]
