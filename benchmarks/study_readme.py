"""Fill the README's study block from a finished study's report, so its numbers come from a run.

    /usr/bin/time -v snakemake --cores 2 2> time.txt        (or bash's `time`)
    python -m benchmarks.study_readme results --time time.txt --readme README.md
"""

import argparse
import re
from pathlib import Path

from benchmarks import replace_block


def study_block(results: Path, time_file: Path | None) -> str:
    report = results / "report"
    summary = (report / "summary.md").read_text().replace("# Study summary\n", "")
    summary = re.sub(r"^## ", "#### ", summary, flags=re.M)
    lines = []
    if time_file:
        text = time_file.read_text()
        gnu = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
        bash = re.search(r"^real\s+(\d+)m([\d.]+)s", text, re.M)
        wall = gnu.group(1) + " (m:ss)" if gnu else f"{bash.group(1)} min {float(bash.group(2)):.0f} s"
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        peak_text = f", largest process {int(peak.group(1)) / 1e6:.2f} GB" if peak else ""
        lines.append(f"One `snakemake --cores 2` on this 2-core machine: **{wall}** wall time{peak_text}. "
                     f"From `results/report/fits.md` and `summary.md`:\n")
    lines += [(report / "fits.md").read_text(), summary]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--time", type=Path, help="the run's timing: GNU `time -v` output, or bash's `time`")
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    args = p.parse_args(argv)
    replace_block(args.readme, "study", study_block(args.results, args.time))


if __name__ == "__main__":
    main()
