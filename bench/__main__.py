"""Run every benchmark module in bench/ (each has ``run() -> list[Result]``) and print ratios."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from bench.common import Result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("only", nargs="*", help="run only these benchmark modules")
    args = parser.parse_args(argv)
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n in args.only or n.removeprefix("bench_") in args.only]
    for name in names:
        module = importlib.import_module("bench." + name)
        print("== %s: %s" % (name, (module.__doc__ or "").strip().splitlines()[0]), flush=True)
        results: list[Result] = module.run()
        for r in results:
            print("   " + r.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
