"""The quality check: contrastive with the current selection engine against the committed
CamVid CPU table's contrastive runs (the previous engine), paired by seed at each budget.

    python experiments/engine_check.py [sweeps/sweep_camvid_engine] [--previous benchmarks/results/camvid_cpu.json]

The new runs come from ``fastal sweep configs/sweep_camvid_engine.toml`` (same protocol, same
seeds, prefix budget as the table was made). Cycle 1 is the same random draw in both, so its
difference shows what the machine and library versions alone move. Prints the paired table
(mean, standard error, seeds ahead / behind; :func:`fastal.sweep.report.paired`) and writes
benchmarks/results/camvid_engine_check.json with the machine and the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEW, PREVIOUS = "new engine", "previous engine"


def previous_runs(results: dict[str, Any], strategy: str = "contrastive") -> Any:
    """One row per (seed, budget) of ``strategy``'s runs in an al_camvid results file."""
    import pandas as pd

    rows = [{"seed": r["seed"], "budget_pct": c["budget_pct"], "miou": c["miou"]}
            for r in results["runs"] if r["strategy"] == strategy for c in r["cycles"]]  # fmt: skip
    return pd.DataFrame(rows, columns=["seed", "budget_pct", "miou"])


def engine_pairs(new: Any, previous: Any) -> Any:
    """The new engine's mIoU minus the previous one's, seed by seed at each budget (rows of both
    that have a partner only)."""
    import pandas as pd

    from fastal.sweep.report import paired

    both = pd.concat([new[["seed", "budget_pct", "miou"]].assign(strategy=NEW),
                      previous.assign(strategy=PREVIOUS)], ignore_index=True)  # fmt: skip
    return paired(both, [], PREVIOUS)


def main(argv: list[str] | None = None) -> int:
    from fastal.sweep.report import load_cycles
    from fastal.atomic import atomic_write_json, read_json
    from fastal.errors import FastalError
    from fastal.machine import command_line, machine_info, portable_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", nargs="?", type=Path, default=Path("sweeps/sweep_camvid_engine"))
    p.add_argument("--previous", type=Path, default=ROOT / "benchmarks" / "results" / "camvid_cpu.json")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "camvid_engine_check.json")
    args = p.parse_args(argv)
    try:
        df, _ = load_cycles(args.sweep)
        out = engine_pairs(df[df["strategy"] == "contrastive"], previous_runs(read_json(args.previous)))
    except FastalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out.to_string(index=False, float_format=lambda v: f"{v:+.4f}"))
    atomic_write_json(args.json, {
        "command": command_line(["python", "experiments/engine_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_info(), "sweep": portable_path(args.sweep), "previous": portable_path(args.previous),
        "pairs": out.to_dict(orient="records"),
    })  # fmt: skip
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
