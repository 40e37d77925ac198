"""Job priorities (docs/pipeline.md, "Job order"), read from a dry run of the default config as Snakemake
prints them: the induction gates and what they read first, the reward model above two of them, nothing else."""

import re

from helpers import REPO, run_snakemake

GATE = 40


def job_priorities(output: str) -> list[tuple[str, str, int]]:
    """(rule, wildcards, priority) of each job in a dry run's listing; 0 where no priority is printed."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        if head is None:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        priority = re.search(r"^\s+priority: (\d+)$", block, re.M)
        jobs.append(
            (
                head.group(1),
                wildcards.group(1) if wildcards else "",
                int(priority.group(1)) if priority else 0,
            )
        )
    return jobs


def test_the_gates_come_first_and_the_reward_model_outweighs_two_of_them(tmp_path):
    proc = run_snakemake(tmp_path, "-n", config=REPO / "config" / "config.yaml")
    jobs = job_priorities(proc.stdout)
    gates = [(r, w, p) for r, w, p in jobs if r in ("induce", "induction_report") or r == "evaluate"]
    assert len(gates) == 12 * 4, gates  # 12 cells: induce, the base and Phase-1 evaluations, the report
    assert {p for _, _, p in gates} == {GATE}
    assert {w.split("stage=")[1] for r, w, _ in gates if r == "evaluate"} == {"base", "phase1"}
    (reward_model,) = [p for r, _, p in jobs if r == "train_reward_model"]
    assert reward_model > 2 * GATE  # the scheduler sums priorities: two gate jobs fill two cores
    others = {
        r: p for r, _, p in jobs if r not in ("induce", "induction_report", "evaluate", "train_reward_model")
    }
    assert others and set(others.values()) == {0}, others
