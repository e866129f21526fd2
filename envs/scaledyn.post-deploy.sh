#!/usr/bin/env bash
# Snakemake runs this inside the new environment after creating it (from its own working
# directory, which need not be the repository). The Snakefile exports SCALEDYN_SOURCE, the
# workflow's directory, so scaledyn is installed from the source of the workflow being run.
set -euo pipefail
python -m pip install --no-deps "${SCALEDYN_SOURCE:?is set by the Snakefile}"
