"""The tamper check's back door: run.json deleted and config.toml edited in a run
killed after training cycle 2. A lost run.json is refused like any damage (a record made anew from
config.toml would let the edit through), and accepted only when asked, then noted in results.json."""

from __future__ import annotations

import json
from pathlib import Path

from test_run_guard import cli, copy_of, edit_results, one_line, snapshot


def test_a_deleted_run_json_does_not_let_an_edit_through(reference: Path, tmp_path: Path, capsys) -> None:
    run_dir = copy_of(reference, tmp_path)  # P: cycle 2 trained, not evaluated
    edit_results(run_dir, lambda r: r["cycles"].pop())
    old_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    (run_dir / "run.json").unlink()
    config = run_dir / "config.toml"
    config.write_text(config.read_text().replace("epochs = 3\n", "epochs = 1\n"))
    before = snapshot(run_dir)
    code, err = cli(["run", "--resume", run_dir], capsys)
    assert code == 2 and f"{run_dir / 'run.json'}: missing; it holds the run's id and the configuration" \
        in one_line(err)  # fmt: skip
    assert snapshot(run_dir) == before
    # Asked for, the run goes on under config.toml as it is, under a new id, and says so.
    code, err = cli(["run", "--resume", run_dir, "--accept-config-change"], capsys)
    assert code == 0, err
    res = json.loads((run_dir / "results.json").read_text())
    assert res["config_changes"] == [{"from_cycle": 2, "changed": {"run.json": [None, "made anew"]}}]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["run_id"] != old_id and record["config"]["epochs"] == 1
