#!/usr/bin/env python3
"""Summarises a `hey -o csv` file as one line: NAME CONC FORMAT REQ_PER_S P50_MS P99_MS NON_200.
hey's own summary prints no p99 below 100 samples, so the benchmarks compute percentiles here."""
import csv
import sys


def main():
    path, name, conc, fmt = sys.argv[1:5]
    rows = list(csv.DictReader(open(path)))
    ok = [r for r in rows if r["status-code"] == "200"]
    lat = sorted(float(r["response-time"]) for r in ok) or [float("nan")]
    span = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
    print(f"{name} {conc} {fmt} {len(ok) / span:.1f} {pct(0.5):.2f} {pct(0.99):.2f} {len(rows) - len(ok)}")


main()
