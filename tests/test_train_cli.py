"""`fastal train` and `fastal evaluate` end to end on a tiny synthetic set, and their errors."""

from __future__ import annotations

import json
import pickle

import pytest

from fastal.cli import main


def _run(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_train_full_then_evaluate_json(tmp_path, capsys):
    out = tmp_path / "run"
    code = _run(["train", "--full", "--size", "16x24", "--num-images", "4", "--batch-size", "2",
                 "--epochs", "1", "--out", str(out)])  # fmt: skip
    assert code in (0, None)
    record = json.loads((out / "train.json").read_text())
    assert record["full"] and record["history"][0]["steps"] == 2
    assert len(record["per_class_iou"]) == 11

    code = _run(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--size", "16x24",
                 "--json", str(tmp_path / "ev.json")])  # fmt: skip
    assert code in (0, None)
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["miou"] == pytest.approx(record["miou"])  # same teacher, same val split
    assert len(ev["per_class_iou"]) == 11
    assert "mIoU" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["evaluate", "--checkpoint", "missing.pt"], "--checkpoint missing.pt: file not found"),
        (["train", "--backbone", "vgg16"], "unknown backbone 'vgg16'"),
        (["train", "--amp", "fp8"], "amp 'fp8'"),
        (["train", "--epochs", "0"], "--epochs 0: must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    assert _run([*argv, "--out", str(tmp_path)] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
    assert not any(tmp_path.iterdir())  # nothing written


def test_foreign_pickle_is_one_line_and_writes_nothing(tmp_path, capsys):
    # torch's weights_only refusal is several paragraphs; the CLI owes one line.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(pickle.dumps(print, protocol=2))
    out = tmp_path / "run"
    assert _run(["train", "--full", "--weights", str(junk), "--num-images", "2", "--size", "16x24", "--out", str(out)]) == 2
    assert _run(["evaluate", "--checkpoint", str(junk)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert "cannot be read as a torch state_dict (UnpicklingError" in lines[0]
    assert "not a fastal training checkpoint (UnpicklingError" in lines[1]
    assert not out.exists()


def test_evaluate_batch_size_zero_is_one_line(tmp_path, capsys):
    from fastal.train import Trainer, TrainConfig

    ck = tmp_path / "ck.pt"
    Trainer(TrainConfig(), num_classes=11).save(ck)
    assert _run(["evaluate", "--checkpoint", str(ck), "--size", "16x24", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--batch-size 0: must be at least 1" in err and "\n" not in err
