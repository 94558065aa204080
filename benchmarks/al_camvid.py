"""Active learning on CamVid: every strategy x seed, one fully supervised reference per seed.

    python benchmarks/al_camvid.py --protocol cpu --jobs 2        # run or resume everything
    python benchmarks/al_camvid.py --protocol cpu --summarize-only --readme-table

Each (seed, strategy) is one ``fastal run`` subprocess in ``RUNS_DIR/seed<N>-<strategy>``
(``fastal run --resume`` when the directory exists, nothing when the run has finished), seed
0's strategies first, then seed 1's, ...; its output goes to ``RUNS_DIR/logs/<name>.log``. The
reference of seed N, ``RUNS_DIR/seed<N>-full.json`` (``--full-shared``), is trained by the
first run of seed N and read by the others; while it is being trained, a free job slot takes
the next seed's first run rather than wait. ``--jobs N`` runs N at once, each with
cores // N threads. Kill the driver (its runs die with it) and start it again with the same
arguments: it resumes every unfinished run. A run started with another configuration than the
protocol's (the TOML changed since) is refused: use another ``--runs-dir``.

Whenever a run finishes or evaluates a cycle, the results JSON is rewritten (atomically) from
all run directories: the protocol, the configuration, the machine, the command line, each
run's wall time and every cycle record, the references, and per strategy and budget the mean
± sample std over seeds of mIoU and of mIoU / fully supervised mIoU; then the plot is redrawn.
Wall time is the sum of a run's invocations (``RUNS_DIR/wall.json``) that the driver saw end,
interrupted ones included; one cut short by a SIGKILL of the driver itself is not counted.
Start it from the repository root: run directories record the paths they were given.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fastal.atomic import atomic_write_json, read_json
from fastal.config import RunConfig, load_config, to_dict
from fastal.errors import FastalError
from fastal.rundir import CONFIG, FULL, RESULTS, file_lock, open_run
from fastal.progress import console, progress
from fastal.report import Group, group_runs, mean_std, plot_curves

PROTOCOLS = ("cpu", "gpu")
STRATEGIES = ("contrastive", "random", "entropy", "kmeans-entropy")
DATA_ROOT = "../shared/data/CamVid"
WALL = "wall.json"  # RUNS_DIR/wall.json: each run's invocations (start, seconds, exit code, host)


@dataclass(frozen=True)
class Job:
    seed: int
    strategy: str
    dir: Path
    reference: Path | None  # the seed's shared reference (None: the protocol trains none)

    @property
    def name(self) -> str:
        return self.dir.name

    def finished(self) -> bool:
        path = self.dir / RESULTS
        return path.exists() and read_json(path).get("stopped") is not None

    def cycles_done(self) -> int:
        path = self.dir / RESULTS
        return len(read_json(path)["cycles"]) if path.exists() else 0

    def command(self, config: Path, data_root: str | None) -> list[str]:
        fastal = [sys.executable, "-m", "fastal", "run"]
        if (self.dir / CONFIG).exists():
            return [*fastal, "--resume", str(self.dir)]
        cmd = [*fastal, str(config), "--strategy", self.strategy, "--seed", str(self.seed), "--out", str(self.dir)]
        if self.reference is not None:
            cmd += ["--full-shared", str(self.reference)]
        return cmd + (["--data-root", data_root] if data_root else [])


@dataclass
class Plan:
    args: argparse.Namespace
    config: Path
    data_root: str | None  # passed to new runs
    cfg: RunConfig  # the protocol's configuration (strategy and seed are per run)
    jobs: list[Job]

    def expected(self, job: Job) -> RunConfig:
        """The configuration `fastal run` gives ``job``'s run."""
        return dataclasses.replace(self.cfg, strategy=job.strategy, seed=job.seed,
                                   full_shared=None if job.reference is None else str(job.reference))  # fmt: skip


def make_plan(args: argparse.Namespace) -> Plan:
    """The jobs in order (seed 0's strategies, then seed 1's, ...), checked against existing runs."""
    from fastal.select import STRATEGIES as KNOWN

    config = args.config or Path(f"configs/al_camvid_{args.protocol}.toml")
    base = load_config(config)
    if base.dataset == "synthetic" and args.data_root:
        raise FastalError(f"--data-root {args.data_root}: {config} uses the synthetic dataset, which takes none")
    data_root = args.data_root
    if data_root is None and base.dataset != "synthetic" and base.data_root is None:
        data_root = DATA_ROOT
    cfg = load_config(config, {"data_root": data_root})
    unknown = [s for s in args.strategies if s not in KNOWN]
    if unknown:
        raise FastalError(f"--strategies {unknown[0]}: choose from {', '.join(KNOWN)}")
    runs_dir = Path(args.runs_dir)
    jobs = [
        Job(seed, strategy, runs_dir / f"seed{seed}-{strategy}",
            runs_dir / f"seed{seed}-full.json" if cfg.full_reference else None)
        for seed in args.seeds
        for strategy in args.strategies
    ]  # fmt: skip
    plan = Plan(args, Path(config), data_root, cfg, jobs)
    for job in jobs:
        if (job.dir / CONFIG).exists():
            have, want = to_dict(open_run(job.dir)), to_dict(plan.expected(job))
            diff = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
            if diff:
                k = diff[0]
                raise FastalError(f"{job.dir}: started with {k} = {have.get(k)!r}, {config} now gives "
                                  f"{want.get(k)!r}; use another --runs-dir (or move the run away)")
    return plan


# ---- running ---------------------------------------------------------------------------------
def _die_with_driver() -> None:
    """In the child, before exec: SIGTERM when the driver dies (Linux), so that a restarted driver
    never finds a run of the last one still writing to the same directory."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@dataclass
class Running:
    job: Job
    proc: subprocess.Popen
    log: TextIO
    started: float  # time.time()
    t0: float  # time.perf_counter()
    threads: int


def start(plan: Plan, job: Job, threads: int) -> Running:
    log_path = Path(plan.args.runs_dir) / "logs" / f"{job.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a")  # noqa: SIM115 - closed when the run ends
    cmd = job.command(plan.config, plan.data_root)
    log.write(f"\n$ {shlex.join(cmd)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}, {threads} threads\n")
    log.flush()
    n = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=_die_with_driver)  # fmt: skip
    return Running(job, proc, log, time.time(), time.perf_counter(), threads)


def ready(job: Job, running: list[Running]) -> bool:
    """A run may start once its seed's reference exists, or when no run of its seed is going
    (the one going trains the reference; the lock in fastal.reference keeps it to one anyway)."""
    if job.reference is None or job.reference.exists():
        return True
    return all(r.job.seed != job.seed for r in running)


def run_all(plan: Plan) -> list[Job]:
    """Run every unfinished job, ``--jobs`` at a time; returns the jobs that failed."""
    args = plan.args
    wall_path = Path(args.runs_dir) / WALL
    wall = read_json(wall_path) if wall_path.exists() else {}
    todo = [j for j in plan.jobs if not j.finished()]
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    running: list[Running] = []
    failed: list[Job] = []

    def ended(r: Running) -> None:
        running.remove(r)
        r.log.close()
        wall.setdefault(r.job.name, []).append({
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r.started)),
            "seconds": round(time.perf_counter() - r.t0, 1), "returncode": r.proc.returncode,
            "host": platform.node(), "threads": r.threads,
        })  # fmt: skip
        atomic_write_json(wall_path, wall)

    seen = None  # cycles evaluated by the running runs when the results were last written
    with progress() as bar:
        overall = bar.add_task("runs", total=len(plan.jobs), completed=len(plan.jobs) - len(todo))
        tasks: dict[str, Any] = {}
        try:
            while todo or running:
                for r in [r for r in running if r.proc.poll() is not None]:
                    ended(r)
                    bar.remove_task(tasks.pop(r.job.name))
                    seconds, rc = wall[r.job.name][-1]["seconds"], r.proc.returncode
                    if rc == 0 and r.job.finished():
                        bar.advance(overall)
                        console.print(f"{r.job.name}: finished ({seconds:.0f} s)")
                    else:
                        failed.append(r.job)
                        console.print(f"[bold red]{r.job.name}: exit code {rc}[/] (see {r.log.name})")
                    seen = None
                while len(running) < args.jobs:
                    job = next((j for j in todo if ready(j, running)), None)
                    if job is None:
                        break
                    todo.remove(job)
                    console.print(f"{job.name}: {'resumed' if (job.dir / CONFIG).exists() else 'started'}")
                    running.append(start(plan, job, threads))
                    tasks[job.name] = bar.add_task(job.name, total=len(plan.cfg.schedule()),
                                                   completed=job.cycles_done())  # fmt: skip
                done = {r.job.name: r.job.cycles_done() for r in running}
                for name, n in done.items():
                    bar.update(tasks[name], completed=n)
                if seen != sum(done.values()):
                    summarize(plan, set(done))
                    seen = sum(done.values())
                time.sleep(args.poll)
        finally:  # interrupted: stop the runs (they resume next time) and keep their wall time
            for r in list(running):
                r.proc.terminate()
                r.proc.wait()
                ended(r)
    return failed


# ---- results ---------------------------------------------------------------------------------
def run_status(job: Job, running: Collection[str], invocations: list[dict[str, Any]]) -> str:
    if job.name in running:
        return "running"
    if job.finished():
        return "finished"
    if invocations and invocations[-1]["returncode"] != 0:
        return "failed"
    return "incomplete" if (job.dir / CONFIG).exists() else "not started"


def summarize(plan: Plan, running: Collection[str] = ()) -> dict[str, Any]:
    """Rewrite the results JSON and the plot from the run directories; returns the JSON's dict."""
    from fastal.machine import machine_info

    args, schedule = plan.args, plan.cfg.schedule()
    wall_path = Path(args.runs_dir) / WALL
    wall = read_json(wall_path) if wall_path.exists() else {}
    runs, results = [], {}
    for job in plan.jobs:
        res = read_json(job.dir / RESULTS) if (job.dir / RESULTS).exists() else None
        if res is not None and res["cycles"]:
            results[job.name] = res
        inv = wall.get(job.name, [])
        runs.append({
            "name": job.name, "strategy": job.strategy, "seed": job.seed, "dir": str(job.dir),
            "status": run_status(job, running, inv), "wall_seconds": round(sum(i["seconds"] for i in inv), 1),
            "invocations": inv, "full_miou": None if res is None else res["full_miou"],
            "stopped": None if res is None else res["stopped"], "cycles": [] if res is None else res["cycles"],
        })  # fmt: skip
    references = []
    for seed in dict.fromkeys(j.seed for j in plan.jobs):
        ref = next((j.reference for j in plan.jobs if j.seed == seed), None)
        if ref is None or not ref.exists():
            references.append({"seed": seed, "path": None if ref is None else str(ref), "miou": None})
            continue
        r = read_json(ref)
        users = [j.name for j in plan.jobs
                 if j.seed == seed and (j.dir / FULL).exists() and read_json(j.dir / FULL).get("shared") == str(ref)]
        references.append({"seed": seed, "path": str(ref), "miou": r["miou"], "per_class_iou": r["per_class_iou"],
                           "train_seconds": r["train_seconds"], "trained_in": r.get("run"),
                           "used_by": users})  # fmt: skip
    groups = group_runs([j.dir for j in plan.jobs if j.name in results]) if results else []
    by_strategy = summary(plan, results, groups)
    fulls = [r["miou"] for r in references if r["miou"] is not None]
    out = {
        "benchmark": "al_camvid",
        "protocol": args.protocol,
        "config_file": str(plan.config),
        "config": {k: v for k, v in to_dict(plan.cfg).items() if k not in ("strategy", "seed", "full_shared")},
        "budgets": schedule,
        "strategies": list(args.strategies),
        "seeds": list(args.seeds),
        "command": args.command,
        "machine": machine_info(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "full_miou": None if not fulls else dict(zip(("mean", "std"), mean_std(fulls)), n=len(fulls)),
        "summary": by_strategy,
        "paired": paired(plan, results),
        "references": references,
        "runs": runs,
    }
    atomic_write_json(args.json, out)
    if groups:
        if len({g.full_miou for g in groups}) == 1:  # the same references: one dashed line, not one per strategy
            for g in groups[1:]:
                g.full_miou = None
        plot_curves(groups, args.plot, title=f"{plan.cfg.dataset}, {plan.config.name} (mean ± std over seeds)")
    return out


def summary(plan: Plan, results: dict[str, dict[str, Any]], groups: list[Group]) -> dict[str, list[dict[str, Any]]]:
    """Per strategy, per budget: mIoU and mIoU / full mIoU, mean ± sample std over seeds
    (``groups``: fastal.report's grouping of the runs by strategy and cycle; cycle k is budget k)."""
    schedule = plan.cfg.schedule()
    dirs = {str(j.dir): j.name for j in plan.jobs}
    out: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        names = [dirs[d] for d in g.runs]
        rows = []
        for cycle, pixel_pct, miou, miou_std, n in g.points:
            recs = [(results[m], c) for m in names for c in results[m]["cycles"] if c["cycle"] == cycle]
            ratios = [c["miou"] / r["full_miou"] for r, c in recs if r["full_miou"]]
            ratio, ratio_std = mean_std(ratios) if ratios else (None, None)
            rows.append({
                "cycle": cycle, "budget_pct": schedule[cycle - 1] if cycle <= len(schedule) else None,
                "pixel_pct_mean": pixel_pct, "miou_mean": miou, "miou_std": miou_std,
                "ratio_mean": ratio, "ratio_std": ratio_std, "n": n, "seeds": [r["seed"] for r, _ in recs],
            })  # fmt: skip
        out[g.strategy] = rows
    return out


def paired(plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The first strategy's mIoU minus each other's, seed by seed, per budget: mean ± sample std
    of the differences over the seeds both reached it with (seed-to-seed noise cancels in part)."""
    schedule, first = plan.cfg.schedule(), plan.args.strategies[0]
    miou = {(j.strategy, j.seed): {c["cycle"]: c["miou"] for c in results[j.name]["cycles"]}
            for j in plan.jobs if j.name in results}  # fmt: skip
    out: dict[str, list[dict[str, Any]]] = {}
    for other in plan.args.strategies[1:]:
        rows = []
        for cycle, budget in enumerate(schedule, start=1):
            pairs = [(seed, a[cycle] - miou[other, seed][cycle]) for (st, seed), a in miou.items()
                     if st == first and cycle in a and cycle in miou.get((other, seed), {})]  # fmt: skip
            if pairs:
                diff, diff_std = mean_std([d for _, d in pairs])
                rows.append({"budget_pct": budget, "diff_mean": diff, "diff_std": diff_std,
                             "n": len(pairs), "seeds": [seed for seed, _ in pairs]})  # fmt: skip
        out[other] = rows
    return out


def readme_table(data: dict[str, Any]) -> str:
    """Markdown: a row per strategy, a column per budget, "mIoU ± std (mIoU / full)"; [n=k] where
    fewer seeds than asked for reached the budget."""
    budgets, seeds = data["budgets"], len(data["seeds"])
    lines = ["| strategy | " + " | ".join(f"{b:g} %" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]  # fmt: skip
    for strategy in data["strategies"]:
        rows = {r["budget_pct"]: r for r in data["summary"].get(strategy, [])}
        cells = []
        for b in budgets:
            r = rows.get(b)
            if r is None:
                cells.append("")
                continue
            cell = f"{r['miou_mean']:.3f} ± {r['miou_std']:.3f}"
            cell += "" if r["ratio_mean"] is None else f" ({100 * r['ratio_mean']:.0f} %)"
            cells.append(cell + ("" if r["n"] == seeds else f" [n={r['n']}]"))
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    first = data["strategies"][0]
    if any(data["paired"].values()):
        lines += ["", f"| {first} minus | " + " | ".join(f"{b:g} %" for b in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]  # fmt: skip
        for other, rows in data["paired"].items():
            by_budget = {r["budget_pct"]: r for r in rows}
            cells = [f"{r['diff_mean']:+.3f} ± {r['diff_std']:.3f}" if (r := by_budget.get(b)) else "" for b in budgets]
            lines.append(f"| {other} | " + " | ".join(cells) + " |")
    full = data["full_miou"]
    if full is not None:
        lines += ["", f"Fully supervised (every pixel, same backbone and resolution): mIoU {full['mean']:.3f} ± "
                      f"{full['std']:.3f} over {full['n']} seed{'s' * (full['n'] > 1)}."]  # fmt: skip
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=PROTOCOLS, required=True)
    p.add_argument("--config", type=Path, help="run configuration (default configs/al_camvid_<protocol>.toml)")
    p.add_argument("--data-root", help=f"CamVid folder (default {DATA_ROOT}, unless the config sets one)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs-dir", help="run directories (default runs/al_camvid_<protocol>)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores // jobs threads)")
    p.add_argument("--json", help="results (default benchmarks/results/camvid_<protocol>.json)")
    p.add_argument("--plot", help="plot (default benchmarks/results/camvid_<protocol>.png)")
    p.add_argument("--readme-table", action="store_true", help="print the README's markdown table at the end")
    p.add_argument("--summarize-only", action="store_true", help="rebuild JSON, plot (and table) from the runs")
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)  # seconds between looks at the runs
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "benchmarks/al_camvid.py", *(sys.argv[1:] if argv is None else argv)])
    args.runs_dir = args.runs_dir or f"runs/al_camvid_{args.protocol}"
    args.json = args.json or f"benchmarks/results/camvid_{args.protocol}.json"
    args.plot = args.plot or f"benchmarks/results/camvid_{args.protocol}.png"
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: must be >= 1")
    for name in ("strategies", "seeds"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            p.error(f"--{name}: {values} repeats an entry")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = make_plan(args)
        if args.summarize_only:
            data = summarize(plan)
            failed: list[Job] = []
        else:
            with file_lock(Path(args.runs_dir) / "driver", wait=False):  # one driver per runs directory
                failed = run_all(plan)
                data = summarize(plan)
    except FastalError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    done = sum(r["status"] == "finished" for r in data["runs"])
    console.print(f"{done}/{len(data['runs'])} runs finished; results: {args.json}, plot: {args.plot}")
    if args.readme_table:
        print(readme_table(data))
    if failed:
        console.print(f"[bold red]failed:[/] {', '.join(j.name for j in failed)} (logs in {args.runs_dir}/logs)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
