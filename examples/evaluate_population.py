"""flagwire demo: evaluate the bundled flag file for a population of users.

Run it with ``python examples/demo.py`` (after ``pip install -e .``). It loads
``examples/flags.yaml`` (or the file given as the first argument), shows each flag's
assignment for a few users and why, then the variant shares over 10,000 users, so
you can see a canary at 20% and an experiment split 50/25/25 come out as written.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from flagwire import FlagSet

HERE = Path(__file__).resolve().parent
USERS = [
    {"targetingKey": "alice", "plan": "beta", "country": "DE", "appVersion": "3.4.0"},
    {"targetingKey": "bob", "plan": "free", "country": "US", "appVersion": "3.1.9"},
    {"targetingKey": "chen", "plan": "pro", "country": "FR", "appVersion": "v3.2.0"},
    {"targetingKey": "dara", "plan": "free", "country": "BR"},
    {"targetingKey": "eve", "plan": "pro", "country": "NL", "appVersion": "2"},
]


def main(path: Path) -> None:
    flagset = FlagSet.from_path(path)
    print(f"flag set {path.name}: {len(flagset)} flags, version {flagset.version_label}\n")
    keys = list(flagset)
    header = f"{'user':8}" + "".join(f"{k:>30}" for k in keys)
    print(header)
    print("-" * len(header))
    for user in USERS:
        cells = []
        for key in keys:
            a = flagset.evaluate(key, user)
            cells.append(f"{a.variant or '(default)'}/{a.reason.value}")
        print(f"{user['targetingKey']:8}" + "".join(f"{c:>30}" for c in cells))

    population = [{"targetingKey": f"user-{i}", "plan": "free"} for i in range(10_000)]
    print(f"\nvariant shares over {len(population):,} users:")
    started = time.perf_counter()
    evaluations = 0
    for key in keys:
        counts = Counter(flagset.evaluate(key, user).variant for user in population)
        evaluations += len(population)
        shares = ", ".join(
            f"{variant or '(default)'} {n / len(population):.1%}"
            for variant, n in sorted(counts.items(), key=lambda kv: str(kv[0]))
        )
        print(f"  {key:24} {shares}")
    elapsed = time.perf_counter() - started
    print(
        f"\n{evaluations:,} evaluations in {elapsed * 1000:.0f} ms "
        f"({elapsed / evaluations * 1e9:.0f} ns each)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "flags.yaml")
