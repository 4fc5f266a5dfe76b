"""Merge the accuracy tables of separate ``accuracy_table.py`` runs into one (one table per
backbone, every method × T), e.g. when each T ran in its own process:

    python benchmarks/accuracy_table.py --backbones resnet20-relu --time-steps 1,2 --out runs/r20-a
    python benchmarks/accuracy_table.py --backbones resnet20-relu --time-steps 4,8 --out runs/r20-b
    python benchmarks/merge_accuracy.py runs/r20-a/accuracy.json runs/r20-b/accuracy.json --out runs/r20

Writes ``accuracy.json`` (with every run's command) and ``accuracy.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", type=Path, nargs="+", help="accuracy.json files written by accuracy_table.py")
    parser.add_argument("--out", type=Path, required=True, help="directory for the merged accuracy.json / .md")
    parser.add_argument("--title", default="", help="heading above the tables")
    args = parser.parse_args(argv)
    payloads = []
    for path in args.inputs:
        try:
            payloads.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"{path}: not a readable accuracy.json ({error}); pass the files accuracy_table.py wrote")
        if "tables" not in payloads[-1]:
            raise SystemExit(f"{path}: has no 'tables'; pass the accuracy.json files accuracy_table.py wrote")
    try:
        tables = accuracy_table.merge_tables([t for p in payloads for t in p["tables"]])
    except ValueError as error:
        raise SystemExit(str(error))
    payload = {"machine": payloads[0].get("machine"), "commands": [p.get("command") for p in payloads],
               "tables": tables, "missing": [m for p in payloads for m in p.get("missing", [])]}
    print(accuracy_table.write_report(args.out, payload, title=args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
