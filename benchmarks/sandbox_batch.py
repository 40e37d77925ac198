"""Reward-hacking-shaped programs run one sandbox launch each against one launch per batch (run_python_batch).

    .venv/bin/python benchmarks/sandbox_batch.py [--programs 64] [--rounds 3]

Each program is the scorer's harness around a different one-line function, the shape of the toy grid's programs.
Both ways run the same programs, alternating rounds, in a process that has imported torch as a grid job has
(a fork of a large process costs more). Prints the milliseconds per program of each way (the median over rounds)
and checks that every verdict's status and output agree. docs/sandbox.md ("Batches") has a recorded run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch  # noqa: F401  (a grid job's process holds it)

from cmt.runtime.sandbox import mechanisms, run_python, run_python_batch
from cmt.toy.reward_hacking import harness

ROW = {"function": "f", "visible_tests": [[1, 3], [2, 4]], "hidden_tests": [[5, 7], [9, 11]]}


def programs(n: int) -> list[str]:
    return [harness(f"def f(x):\n    return x + {i % 7}", ROW) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    codes = programs(args.programs)
    alone_ms, batch_ms = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        alone = [run_python(code, timeout_s=5) for code in codes]
        alone_ms.append(1000 * (time.perf_counter() - start) / len(codes))
        start = time.perf_counter()
        together = run_python_batch(codes, timeout_s=5)
        batch_ms.append(1000 * (time.perf_counter() - start) / len(codes))
        for a, b in zip(alone, together, strict=True):
            if (a.status, a.stdout, a.stderr) != (b.status, b.stdout, b.stderr):
                raise SystemExit(f"verdicts differ: {a.to_json()} against {b.to_json()}")
    batched = mechanisms()["namespaces"] and mechanisms()["mounts"]
    print(f"sandbox_programs {len(codes)} batched {batched}")
    print(f"ms_per_program alone {statistics.median(alone_ms):.1f} batch {statistics.median(batch_ms):.1f}")


if __name__ == "__main__":
    main()
