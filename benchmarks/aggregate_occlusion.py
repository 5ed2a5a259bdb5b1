"""Medians over repeated ``bench_methods.py`` occlusion comparisons (one repeat per invocation).

Each invocation times the authors' loop and ssl_widgets back to back and writes
``<dir>/<case>_<trunk>_rep<k>/results.json``; on a shared machine absolute times drift between
invocations, so the table reports the median of the per-invocation ratios (and the median times).

    python benchmarks/aggregate_occlusion.py benchmarks/results/r50_occlusion
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def aggregate(directory: Path) -> tuple[list[dict], str]:
    """Rows ``{method, trunk, n, authors_s, ours_s, ratio, ratios, max_abs_diff}`` and the header of the runs."""
    groups: dict[tuple[str, str], list[dict]] = {}
    header = ""
    for path in sorted(directory.glob("*/results.json")):
        result = json.loads(path.read_text())
        header = header or result["header"]
        for row in result["occlusion"]:
            groups.setdefault((row["method"], row["trunk"]), []).append(row)
    rows = []
    for (method, trunk), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "Sequential")):
        med = statistics.median
        rows.append({"method": method, "trunk": trunk, "n": len(runs),
                     "authors_s": med(r["authors_s"] for r in runs), "ours_s": med(r["ours_s"] for r in runs),
                     "ratio": med(r["ratio"] for r in runs), "ratios": [round(r["ratio"], 2) for r in runs],
                     "max_abs_diff": max(r["max_abs_diff"] for r in runs)})
    return rows, header


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    rows, header = aggregate(args.directory)
    lines = [header, "",
             "| method | trunk | runs | authors' loop (s, median) | ssl_widgets (s, median) | ratio (median of runs) "
             "| ratios of the runs | max abs map difference |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['trunk']} | {r['n']} | {r['authors_s']:.1f} | {r['ours_s']:.1f} | "
              f"{r['ratio']:.2f}x | {', '.join(f'{x:.2f}' for x in r['ratios'])} | {r['max_abs_diff']:.1e} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (args.directory / "summary.md").write_text(text)
    (args.directory / "summary.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
