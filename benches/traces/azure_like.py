"""A seeded, bursty request trace over N services with Zipf popularity, shaped after the Azure
Functions 2019 invocation statistics (Shahrad et al., "Serverless in the Wild", USENIX ATC'20:
invocation rates across functions are heavily skewed, and most functions are invoked in
bursts separated by long idle gaps, with inter-arrival coefficients of variation above 1).
The public per-minute counts themselves cannot be downloaded here, so the trace is generated
from those two properties:

- popularity: service of rank i (1-based) gets a share of the total rate proportional to
  1 / i**zipf (zipf = 1.0 by default);
- burstiness: each service alternates ON and OFF periods (exponential, means `on_s` and
  `off_s * i`: less popular services are idle longer), with Poisson arrivals only while ON,
  at the rate that gives the service its share on average.

    python benches/traces/azure_like.py --services 20 --seconds 600 --rate 2 --seed 7 > trace.jsonl

One JSON line per request, in time order: {"t_ms", "service", "component", "duration_ms"}
(`siesta scale simulate` reads t_ms, duration_ms and component). The last line of stderr
summarises the trace (requests per service, inter-arrival CV)."""
import argparse
import json
import random
import statistics
import sys


def generate(services, seconds, rate, seed, zipf=1.0, on_s=15.0, off_s=15.0, duration_ms=50):
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** zipf for i in range(services)]
    total = sum(weights)
    out = []
    for i, w in enumerate(weights):
        mean_rate = rate * w / total
        off_mean = off_s * (i + 1)
        on_fraction = on_s / (on_s + off_mean)
        on_rate = mean_rate / on_fraction
        # Start in the stationary mix of ON and OFF, at a random point of the period.
        on = rng.random() < on_fraction
        t = 0.0
        while t < seconds:
            length = rng.expovariate(1.0 / (on_s if on else off_mean))
            if on:
                a = t + rng.expovariate(on_rate)
                while a < min(t + length, seconds):
                    out.append((a, i))
                    a += rng.expovariate(on_rate)
            t += length
            on = not on
    out.sort()
    return [
        {
            "t_ms": int(a * 1000),
            "service": f"s{i:02d}",
            "component": f"s{i:02d}-predictor",
            "duration_ms": duration_ms,
        }
        for a, i in out
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--services", type=int, default=20)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--rate", type=float, default=2.0, help="mean requests per second, all services")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--on-s", type=float, default=15.0)
    p.add_argument("--off-s", type=float, default=15.0)
    a = p.parse_args()
    trace = generate(a.services, a.seconds, a.rate, a.seed, a.zipf, a.on_s, a.off_s)
    for r in trace:
        print(json.dumps(r))
    per = {}
    for r in trace:
        per.setdefault(r["service"], []).append(r["t_ms"] / 1000)
    cvs = []
    for ts in per.values():
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        if len(gaps) > 2 and statistics.mean(gaps) > 0:
            cvs.append(statistics.pstdev(gaps) / statistics.mean(gaps))
    print(
        f"{len(trace)} requests over {a.seconds:.0f} s, {len(per)} services; per service "
        f"{sorted((len(v) for v in per.values()), reverse=True)}; median inter-arrival CV "
        f"{statistics.median(cvs) if cvs else 0:.2f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
