"""``python -m benchmarks run|report``: measure configurations into JSONL rows, or turn rows into tables and plots.

``worker`` is internal: ``run`` starts one worker process per configuration so each has its own peak RSS.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    from benchmarks import report, run

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run.add_arguments(sub.add_parser("run", help="measure and append JSONL rows", description=run.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    report.add_arguments(sub.add_parser("report", help="write README.md tables and PNG plots from JSONL rows",
                                        description=report.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    w = sub.add_parser("worker", help="(internal) run one job of `run` in this process")
    w.add_argument("job", type=Path)
    w.add_argument("result", type=Path)
    a = p.parse_args(argv)
    if a.command == "worker":
        return run.worker_main(a.job, a.result)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    return run.main(a) if a.command == "run" else report.main(a)


if __name__ == "__main__":
    sys.exit(main())
