"""The long chaos run (at least 2,000 calls): the harness of tests/chaos (whose short run is
in ``make test``) with more phases. Exits 1 when an invariant was broken.

Run: ``python benchmarks/bench_chaos.py [--seed 20261130 --phases 110 --calls-per-phase 14]``
(part of ``make bench``). Writes benchmarks/results/chaos.json and the ``chaos`` table of
docs/benchmarks.md. The same seed replays the same schedule and the same calls.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from _bench import machine, save, update_doc
from chaos_harness import ChaosRun, first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--phases", type=int, default=110)
    ap.add_argument("--calls-per-phase", type=int, default=14)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if not args.verbose:
        logging.getLogger("langchain_contextharbor").setLevel(logging.ERROR)
    with ChaosRun() as run:
        report = run.run(
            args.seed,
            args.phases,
            args.calls_per_phase,
            log=print if args.verbose else None,
        )
    meta: dict[str, Any] = {
        "machine": machine(),
        "command": f"python benchmarks/bench_chaos.py --seed {args.seed} --phases {args.phases} "
        f"--calls-per-phase {args.calls_per_phase}",
    }
    data = {**meta, **report.as_dict(), "stats": report.stats}
    save("chaos", data)
    errors = ", ".join(f"{k} {v}" for k, v in sorted(report.errors.items()))
    ops = ", ".join(f"{k} {v}" for k, v in sorted(report.ops.items()))
    actions = ", ".join(f"{k} {v}" for k, v in sorted(report.actions.items()))
    served = ", ".join(f"{k} {v}" for k, v in sorted(report.served.items()))
    lines = [
        f"Measured {meta['machine']['date_utc']} UTC: `{meta['command']}`.",
        "",
        "| | |",
        "|---|---|",
        f"| calls (a batch item counts as one) | {report.calls} |",
        f"| by operation | {ops} |",
        f"| schedule phases | {actions} |",
        f"| complete answers, each identical to the serving backend's own | {report.ok} "
        f"(served: {served}; {report.fallbacks} after an invisible failover) |",
        f"| streams the caller abandoned after their first chunk (a prefix of the serving "
        f"backend's answer) | {report.abandoned} |",
        f"| documented typed errors | {errors} |",
        f"| invariant violations | **{len(report.violations)}** |",
        f"| slowest call / its deadline budget | {report.max_over_budget_ratio:.2f} |",
        f"| threads before / after close() | {report.threads[0]} / {report.threads[1]} |",
        f"| open descriptors before / after close() and dropping the model | "
        f"{report.fds[0]} / {report.fds[1]} (after close() alone: {report.fds_after_close}) |",
        f"| wall time | {report.wall_s:.0f} s |",
    ]
    if not report.abandoned_counted:
        lines.append(
            "\n`stats()` has no `abandoned` counter yet: the accounting checked is requests = "
            "successes + failures + the streams this run abandoned."
        )
    md = "\n".join(lines)
    update_doc("chaos", md)
    print(md)
    if report.violations:
        print(first(report.violations, 30), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
