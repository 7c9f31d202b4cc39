"""Command line: `python -m kdlib run|params|index ...` (see `python -m kdlib -h`)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kdlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks headless and publish reports")
    run.add_argument("--profile", default="smoke", help="parameter profile: smoke, cpu or gpu (configs/profiles)")
    run.add_argument("--only", nargs="+", help="notebook prefixes or names, e.g. --only 00 03")
    run.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                     help="override a notebook parameter (repeatable); checked against the parameters cells")
    run.add_argument("--reports-dir", default=None, help="where reports go (default: reports/)")
    show = sub.add_parser("params", help="list every notebook's parameters with types, defaults and help")
    show.add_argument("--only", nargs="+")
    sub.add_parser("index", help="rebuild reports/index.html and RESULTS.md from existing reports")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from kdlib.lab import runner

        return runner.main(args)
    if args.command == "params":
        from kdlib.lab import params, runner

        for path in runner.discover(args.only):
            print(f"{path.stem}:")
            for spec in params.notebook_params(path).values():
                print(f"  {spec.name}: {spec.type_name} = {spec.default}  # {spec.help}")
        return 0
    from kdlib.lab import report_pages
    from kdlib.lab.paths import reports_dir

    report_pages.write_index(reports_dir())
    report_pages.write_results_md(reports_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
