"""Fill a study block of docs/results.md from a finished study's report, so its numbers come from a run.

    /usr/bin/time -v snakemake --cores 2 2> time.txt        (or bash's `time`)
    python -m benchmarks.study_readme results --time time.txt --readme docs/results.md
    python -m benchmarks.study_readme results-cpu-long --time time.txt --block cpu-long \
        --command "snakemake --cores 2 --configfile configs/cpu-long.yaml"
"""

import argparse
import re
from pathlib import Path

from benchmarks import replace_block


def job_times(results: Path) -> str:
    """Summed job time by rule from Snakemake's `benchmark:` files (the rules that have one)."""
    rows = []
    for rule in sorted(p for p in (results / "benchmarks").iterdir() if p.is_dir()):
        seconds = [float(f.read_text().splitlines()[1].split("\t")[0]) for f in rule.rglob("*.tsv")]
        rows.append((rule.name, len(seconds), sum(seconds)))
    total = sum(r[2] for r in rows)
    lines = ["| rule | jobs | summed job time (s) | share |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {n} | {t:,.0f} | {t / total:.0%} |" for name, n, t in rows]
    return ("Where the job time goes (Snakemake's `benchmark:` files of the rules that keep one; training "
            "jobs include the evaluation of their checkpoints):\n\n" + "\n".join(lines) + "\n")


def study_block(results: Path, time_file: Path | None, command: str = "snakemake --cores 2") -> str:
    report = results / "report"
    summary = (report / "summary.md").read_text().replace("# Study summary\n", "")
    summary = re.sub(r"^## ", "### ", summary, flags=re.M)
    lines = []
    if time_file:
        text = time_file.read_text()
        gnu = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
        bash = re.search(r"^real\s+(\d+)m([\d.]+)s", text, re.M)
        wall = gnu.group(1) + " (m:ss)" if gnu else f"{bash.group(1)} min {float(bash.group(2)):.0f} s"
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        peak_text = f", largest process {int(peak.group(1)) / 1e6:.2f} GB" if peak else ""
        lines.append(f"One `{command}` on this 2-core machine: **{wall}** wall time{peak_text}. "
                     f"From `{results.name}/report/fits.md` and `summary.md`:\n")
    if (results / "benchmarks").is_dir():
        lines.append(job_times(results))
    lines += [(report / "fits.md").read_text(), summary]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--time", type=Path, help="the run's timing: GNU `time -v` output, or bash's `time`")
    p.add_argument("--readme", type=Path, default=Path("docs/results.md"))
    p.add_argument("--block", default="study", help="the README block to replace (<!-- BLOCK:start --> ... end)")
    p.add_argument("--command", default="snakemake --cores 2", help="the command that made the results, for the text")
    args = p.parse_args(argv)
    replace_block(args.readme, args.block, study_block(args.results, args.time, args.command))


if __name__ == "__main__":
    main()
