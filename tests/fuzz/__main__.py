"""``python -m tests.fuzz [--seconds N] [--target NAME ...]`` (``make fuzz``): run every
fuzz target for N seconds, one after another, each in its own process, and print a table
of executions, coverage and findings (also written as JSON to ``.fuzz/results/``).

Per input: ``--timeout`` seconds at most (a hang is a finding), memory under
``--rss-limit-mb`` (libFuzzer's RSS limit for the whole process), inputs up to each
harness's ``MAX_LEN`` bytes. Seeds are rebuilt from the shipped vectors into
``.fuzz/seeds/<target>``; the corpus grown by the run is kept in ``.fuzz/corpus/<target>``
(so the next run starts where this one stopped); the regression inputs in
``tests/fuzz/regressions/<target>`` are part of every run. A crashing input is written to
``.fuzz/artifacts/<target>/``; copy it into the regressions folder once it is fixed.
Exit status 1 when any target found something. Every run is appended to
``.fuzz/history.jsonl``; ``python -m tests.fuzz --summary`` prints the totals per target
(the table in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.fuzz import TARGETS

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".fuzz"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"

_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_COVERAGE = re.compile(r"\bcov: (\d+) ft: (\d+) corp: (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Outcome:
    """What one target's run gave."""

    target: str
    seconds: float
    runs: int
    exec_per_sec: int
    peak_rss_mb: int
    new_units: int
    corpus: int
    cov: int
    ft: int
    finding: str | None
    artifact: str | None
    exit_code: int


def write_seeds(target: str, folder: Path) -> int:
    """Write the harness's seeds into ``folder`` (named by content hash); the count."""
    folder.mkdir(parents=True, exist_ok=True)
    harness = importlib.import_module(f"tests.fuzz.{target}")
    count = 0
    for seed in harness.seeds():
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        count += 1
    return count


def max_len(target: str) -> int:
    return int(importlib.import_module(f"tests.fuzz.{target}").MAX_LEN)


def finding_of(log: str) -> str | None:
    match = re.search(r"Uncaught Python exception: ===\n([^\n]*)", log)
    if match is not None:
        return "crash: " + match.group(1).strip()[:160]
    if "libFuzzer: timeout" in log or "ALARM: working on the last Unit" in log:
        return "timeout"
    if "out-of-memory" in log:
        return "out-of-memory"
    if "ERROR: libFuzzer" in log or "deadly signal" in log:
        return "crash"
    return None


def fuzz(
    target: str,
    *,
    seconds: int,
    timeout: int,
    rss_limit_mb: int,
    work: Path = WORK,
    runs: int | None = None,
    seed: int | None = None,
) -> Outcome:
    """Run ``target`` for ``seconds`` (or ``runs`` inputs) in a child process."""
    seeds = work / "seeds" / target
    corpus = work / "corpus" / target
    artifacts = work / "artifacts" / target
    regressions = REGRESSIONS / target
    for folder in (corpus, artifacts, regressions):
        folder.mkdir(parents=True, exist_ok=True)
    write_seeds(target, seeds)
    argv = [
        sys.executable,
        "-m",
        "tests.fuzz.engine",
        target,
        f"-max_total_time={seconds}",
        f"-timeout={timeout}",
        f"-rss_limit_mb={rss_limit_mb}",
        f"-max_len={max_len(target)}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        "-reload=0",
    ]
    if runs is not None:
        argv.append(f"-runs={runs}")
    if seed is not None:  # libFuzzer's own random choices (the time budget still varies)
        argv.append(f"-seed={seed}")
    argv += [str(corpus), str(seeds), str(regressions)]
    started = time.monotonic()
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, errors="replace", check=False
    )
    elapsed = time.monotonic() - started
    log = done.stdout + done.stderr
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "logs" / f"{target}.log").write_text(log)
    stats = {k: int(v) for k, v in _STAT.findall(log)}
    coverage = _COVERAGE.findall(log)
    cov, ft, _corp = (int(x) for x in coverage[-1]) if coverage else (0, 0, 0)
    artifact = _ARTIFACT.findall(log)
    finding = finding_of(log)
    if finding is None and done.returncode != 0:
        finding = f"exit status {done.returncode}"
    return Outcome(
        target=target,
        seconds=round(elapsed, 1),
        runs=stats.get("number_of_executed_units", 0),
        exec_per_sec=stats.get("average_exec_per_sec", 0),
        peak_rss_mb=stats.get("peak_rss_mb", 0),
        new_units=stats.get("new_units_added", 0),
        corpus=sum(1 for _ in corpus.iterdir()),
        cov=cov,
        ft=ft,
        finding=finding,
        artifact=artifact[-1] if artifact else None,
        exit_code=done.returncode,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=int, default=300, help="per target (default 300)")
    parser.add_argument("--target", action="append", choices=TARGETS, help="default: all")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input")
    parser.add_argument("--rss-limit-mb", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=WORK, help="corpus/artifact folder")
    parser.add_argument(
        "--summary", action="store_true", help="print the table of every recorded run and exit"
    )
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.work))
        return 0
    results = []
    print(
        f"{'target':<15} {'seconds':>8} {'runs':>10} {'exec/s':>7} {'rss MB':>7} "
        f"{'cov':>6} {'ft':>7} {'corpus':>7}  finding"
    )
    for target in args.target or TARGETS:
        outcome = fuzz(
            target,
            seconds=args.seconds,
            timeout=args.timeout,
            rss_limit_mb=args.rss_limit_mb,
            work=args.work,
        )
        results.append(outcome)
        print(
            f"{target:<15} {outcome.seconds:>8} {outcome.runs:>10} {outcome.exec_per_sec:>7} "
            f"{outcome.peak_rss_mb:>7} {outcome.cov:>6} {outcome.ft:>7} {outcome.corpus:>7}  "
            f"{outcome.finding or '-'}{' ' + outcome.artifact if outcome.artifact else ''}",
            flush=True,
        )
        folder = args.work / "results"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{target}.json").write_text(json.dumps(asdict(outcome), indent=2) + "\n")
        with (args.work / "history.jsonl").open("a") as history:
            history.write(json.dumps(asdict(outcome)) + "\n")
    return 1 if any(r.finding for r in results) else 0


def summary(work: Path = WORK) -> str:
    """Every run recorded in ``history.jsonl``, per target: total time and executions, the
    latest coverage and corpus, the largest RSS, and what was found (a Markdown table)."""
    totals: dict[str, dict[str, object]] = {}
    for line in (work / "history.jsonl").read_text().splitlines():
        run = json.loads(line)
        row = totals.setdefault(
            run["target"], {"seconds": 0.0, "runs": 0, "rss": 0, "rounds": 0, "findings": []}
        )
        row["seconds"] = float(str(row["seconds"])) + run["seconds"]
        row["runs"] = int(str(row["runs"])) + run["runs"]
        row["rss"] = max(int(str(row["rss"])), run["peak_rss_mb"])
        row["rounds"] = int(str(row["rounds"])) + 1
        row.update(cov=run["cov"], ft=run["ft"], corpus=run["corpus"])
        if run["finding"]:
            findings = row["findings"]
            assert isinstance(findings, list)
            findings.append(run["finding"].split(" /", 1)[0])
    lines = [
        "| target | runs | seconds | executions | exec/s | coverage (cov / ft) | corpus "
        "| peak RSS MB | stopped by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        if target not in totals:
            continue
        row = totals[target]
        seconds = float(str(row["seconds"]))
        runs = int(str(row["runs"]))
        findings = row["findings"]
        assert isinstance(findings, list)
        lines.append(
            f"| `{target}` | {row['rounds']} | {seconds:.0f} | {runs:,} | "
            f"{runs / seconds:.0f} | {row['cov']} / {row['ft']} | {row['corpus']} | "
            f"{row['rss']} | {'; '.join(findings) or '-'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
