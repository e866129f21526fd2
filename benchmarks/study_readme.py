"""Fill a study block of docs/results.md from a finished study's report, so its numbers come from a run.

    /usr/bin/time -v snakemake --cores 2 2> time.txt        (or bash's `time`)
    python -m benchmarks.study_readme results --time time.txt --log .snakemake/log/<the run's>.snakemake.log
    python -m benchmarks.study_readme results-cpu-long --time time.txt --block cpu-long \
        --command "snakemake --cores 2 --configfile configs/cpu-long.yaml"
"""

import argparse
import re
from datetime import datetime
from pathlib import Path

from benchmarks import replace_block


def job_times(log: Path) -> str:
    """Summed job time by rule, from the start and finish times in Snakemake's own log of the run
    (one-second resolution; every rule, local or not)."""
    starts, rules, seconds, counts = {}, {}, {}, {}
    stamp = None
    for line in log.read_text().splitlines():
        if m := re.match(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif (m := re.match(r"^\s+jobid: (\d+)$", line)) and stamp is not None:
            starts[m.group(1)], rules[m.group(1)] = stamp, rule
        elif (m := re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$", line)) and m.group(1) in starts:
            name = m.group(2)
            seconds[name] = seconds.get(name, 0.0) + (stamp - starts[m.group(1)]).total_seconds()
            counts[name] = counts.get(name, 0) + 1
    total = sum(seconds.values())
    lines = ["| rule | jobs | summed job time (s) | share |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {counts[name]} | {t:,.0f} | {t / total:.0%} |"
              for name, t in sorted(seconds.items(), key=lambda kv: -kv[1])]
    return (f"Where the job time goes ({sum(counts.values())} jobs, from Snakemake's log of the run; training jobs "
            "include the evaluation of their checkpoints):\n\n" + "\n".join(lines) + "\n")


def study_block(results: Path, time_file: Path | None, command: str = "snakemake --cores 2", log: Path | None = None) -> str:
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
    if log:
        lines.append(job_times(log))
    lines += [(report / "fits.md").read_text(), summary]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--time", type=Path, help="the run's timing: GNU `time -v` output, or bash's `time`")
    p.add_argument("--readme", type=Path, default=Path("docs/results.md"))
    p.add_argument("--block", default="study", help="the README block to replace (<!-- BLOCK:start --> ... end)")
    p.add_argument("--command", default="snakemake --cores 2", help="the command that made the results, for the text")
    p.add_argument("--log", type=Path, help="Snakemake's log of the run (.snakemake/log/...), for the job time by rule")
    args = p.parse_args(argv)
    replace_block(args.readme, args.block, study_block(args.results, args.time, args.command, args.log))


if __name__ == "__main__":
    main()
