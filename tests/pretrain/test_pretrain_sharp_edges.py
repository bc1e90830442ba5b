"""The training CLIs' sharp edges (issue 25), each with its exact one-line message: shards that
match no file, a corrupt or truncated checkpoint (named, and never torch's weights_only advice),
a checkpoint given as its .pt file, and Ray Train's controller-state warning gone from the log."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines import contamination_report, evaluate
from pipelines import pretrain as pretrain_job
from pretrain.checkpoint import CHECKPOINT_FILE, TOKENIZER_FILE, CheckpointError, load_model, save_checkpoint
from pretrain.factory import create_model
from pretrain.optim import param_groups
from pretrain.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
RANDOM_BYTES = random.Random(0).randbytes(4096)  # torch's unpickler stops at its first byte it cannot read
RANDOM_REASON = "Unsupported operand 205"
TRUNCATED_REASON = "PytorchStreamReader failed reading zip archive: failed finding central directory"


def _cli(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"pipelines/{script}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _exit_message(run, argv: list[str]) -> str:
    """The message a CLI's run() exits with (SystemExit's argument: printed as is, no traceback)."""
    with pytest.raises(SystemExit) as exited:
        run(argv)
    message = exited.value.code
    assert isinstance(message, str) and "\n" not in message
    return message


@pytest.fixture
def checkpoint(tokenizer, tiny_shards, tmp_path) -> Path:
    """A real tiny checkpoint directory (checkpoint.pt + tokenizer.json) at step 3, its optimizer
    grouped as training groups it (so a run can resume from it)."""
    cfg = TrainConfig(train_data=tiny_shards, tokenizer_json=tokenizer.to_str(), out_dir=str(tmp_path / "run"),
                      model="tiny")
    model = create_model("tiny")
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    return save_checkpoint(tmp_path / "run" / "ckpt", model, optimizer, 3, cfg)


def _damaged(checkpoint: Path, folder: Path, content: bytes) -> Path:
    """A copy of ``checkpoint``'s directory whose checkpoint.pt holds ``content``; its file."""
    folder.mkdir()
    (folder / TOKENIZER_FILE).write_bytes((checkpoint / TOKENIZER_FILE).read_bytes())
    (folder / CHECKPOINT_FILE).write_bytes(content)
    return folder / CHECKPOINT_FILE


# 1. shards that match no file: one line, before a tokenizer is trained or Ray starts


@pytest.mark.parametrize("with_tokenizer", [False, True], ids=["train-tokenizer", "given-tokenizer"])
def test_pretrain_train_data_matching_no_file_is_one_line(with_tokenizer, tokenizer, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("reached past the --train-data check")

    monkeypatch.setattr(pretrain_job, "prepare_tokenizer", never)
    monkeypatch.setattr(pretrain_job, "init_ray", never)
    extra = []
    if with_tokenizer:
        tokenizer.save(tmp_path / "tok.json")
        extra = ["--tokenizer", str(tmp_path / "tok.json")]
    pattern = f"{tmp_path}/x/{{00000..00003}}.tar"
    argv = ["--model", "tiny", "--steps", "2", "--workers", "2", "--out", str(tmp_path / "out"), *extra]
    assert _exit_message(pretrain_job.run, ["--train-data", pattern, *argv]) == \
        f"pretrain: --train-data '{pattern}': no file matches"
    assert _exit_message(pretrain_job.run, ["--train-data", f"{tmp_path}/x/*.tar", *argv]) == \
        f"pretrain: --train-data '{tmp_path}/x/*.tar': no file matches"
    (tmp_path / "empty").mkdir()
    assert _exit_message(pretrain_job.run, ["--train-data", str(tmp_path / "empty"), *argv]) == \
        f"pretrain: --train-data {tmp_path}/empty: no NNNNN.tar shards in this directory"
    assert not (tmp_path / "out").exists()


def test_pretrain_names_the_part_of_a_list_that_matches_nothing(tiny_shards, tmp_path):
    shards_dir = tiny_shards.rsplit("/", 1)[0]
    listed = f"{tiny_shards}::{tmp_path}/more/{{00000..00001}}.tar"
    assert _exit_message(pretrain_job.run, ["--train-data", listed, "--out", str(tmp_path / "o")]) == \
        f"pretrain: --train-data '{tmp_path}/more/{{00000..00001}}.tar': no file matches"
    short = f"{shards_dir}/{{00000..00004}}.tar"  # four shards exist: the fifth is named
    assert _exit_message(pretrain_job.run, ["--train-data", short, "--out", str(tmp_path / "o")]) == \
        f"pretrain: --train-data '{short}': {shards_dir}/00004.tar: shard not found"


def test_pretrain_cli_no_file_matches_prints_one_line_and_no_traceback(tmp_path):
    pattern = f"{tmp_path}/x/{{00000..00003}}.tar"
    done = _cli("pretrain.py", "--train-data", pattern, "--model", "tiny", "--steps", "2", "--workers", "2",
                "--out", str(tmp_path / "out"))
    assert done.returncode != 0
    assert done.stderr == f"pretrain: --train-data '{pattern}': no file matches\n" and done.stdout == ""


def test_evaluate_and_report_shards_matching_no_file_are_one_line(checkpoint, tiny_shards, tmp_path):
    pattern = f"{tmp_path}/x/{{00000..00003}}.tar"
    out = str(tmp_path / "e.json")
    assert _exit_message(evaluate.run, ["--checkpoint", str(checkpoint), "--retrieval-shards", pattern,
                                        "--out", out]) == f"evaluate: --retrieval-shards '{pattern}': no file matches"
    (tmp_path / "heldout").mkdir()
    assert _exit_message(evaluate.run, ["--checkpoint", str(checkpoint), "--dataset", "openclipart",
                                        "--eval-shards", str(tmp_path / "heldout"), "--out", out]) == \
        f"evaluate: --eval-shards {tmp_path}/heldout: no .tar shards in this directory"
    assert _exit_message(contamination_report.run, [
        "--train-data", pattern, "--checkpoint", str(checkpoint), "--dataset", "fashion-mnist",
        "--out", str(tmp_path / "report")]) == f"contamination_report: --train-data '{pattern}': no file matches"


# 2. a corrupt or truncated checkpoint: named, one line, no weights_only advice


def test_corrupt_and_truncated_checkpoints_are_named_without_torch_advice(checkpoint, tiny_shards, tmp_path):
    whole = (checkpoint / CHECKPOINT_FILE).read_bytes()
    cases = {_damaged(checkpoint, tmp_path / "random", RANDOM_BYTES): RANDOM_REASON,
             _damaged(checkpoint, tmp_path / "truncated", whole[: len(whole) // 2]): TRUNCATED_REASON}
    for file, reason in cases.items():
        expected = f"{file}: not a readable openwit checkpoint (truncated or corrupt: {reason})"
        with pytest.raises(CheckpointError) as raised:
            load_model(file.parent)
        assert str(raised.value) == expected and raised.value.__suppress_context__  # torch's error not shown
        for given in (file, file.parent):  # the file or its directory
            message = _exit_message(evaluate.run, ["--checkpoint", str(given), "--dataset", "digits",
                                                   "--out", str(tmp_path / "e.json")])
            assert message == f"evaluate: {expected}"
            assert "weights_only" not in message and "Traceback" not in message
    truncated = tmp_path / "truncated" / CHECKPOINT_FILE
    assert _exit_message(contamination_report.run, [
        "--train-data", tiny_shards, "--checkpoint", str(truncated),
        "--dataset", "fashion-mnist", "--out", str(tmp_path / "report")]) == \
        f"contamination_report: {truncated}: not a readable openwit checkpoint (truncated or corrupt: {TRUNCATED_REASON})"


def test_evaluate_cli_corrupt_checkpoint_prints_one_line_and_no_traceback(checkpoint, tmp_path):
    file = _damaged(checkpoint, tmp_path / "random", RANDOM_BYTES)
    done = _cli("evaluate.py", "--checkpoint", str(file), "--dataset", "digits", "--out", str(tmp_path / "e.json"))
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr == f"evaluate: {file}: not a readable openwit checkpoint (truncated or corrupt: {RANDOM_REASON})\n"


def test_a_torch_file_that_is_no_openwit_checkpoint_is_named(checkpoint, tmp_path):
    file = tmp_path / "other" / CHECKPOINT_FILE
    file.parent.mkdir()
    torch.save({"state_dict": {}, "epoch": 1}, file)  # e.g. an open_clip checkpoint
    (file.parent / TOKENIZER_FILE).write_bytes((checkpoint / TOKENIZER_FILE).read_bytes())
    assert _exit_message(evaluate.run, ["--checkpoint", str(file), "--dataset", "digits",
                                        "--out", str(tmp_path / "e.json")]) == \
        f"evaluate: {file}: not an openwit checkpoint (no model, model_config, step in it)"


# 3. the checkpoint file wherever a checkpoint is taken


def test_evaluate_accepts_the_checkpoint_file(checkpoint, tiny_shards, tmp_path):
    file = checkpoint / CHECKPOINT_FILE
    result = evaluate.run(["--checkpoint", str(file), "--retrieval-shards", tiny_shards, "--retrieval-limit", "32",
                           "--out", str(tmp_path / "e.json")])
    assert result["checkpoint"] == str(file) and result["step"] == 3 and result["retrieval"]["n"] == 32
    assert json.loads((tmp_path / "e.json").read_text())["step"] == 3
    # a file without its tokenizer beside it: named
    alone = tmp_path / "alone" / "model.pt"
    alone.parent.mkdir()
    alone.write_bytes(file.read_bytes())
    assert _exit_message(evaluate.run, ["--checkpoint", str(alone), "--retrieval-shards", tiny_shards,
                                        "--out", str(tmp_path / "e.json")]) == \
        f"evaluate: {alone.parent}/{TOKENIZER_FILE}: missing: a checkpoint needs its {TOKENIZER_FILE} beside model.pt"


def test_contamination_report_accepts_the_checkpoint_file(checkpoint, tiny_shards, tmp_path):
    # the CLIP checkpoint file is accepted and read; the run stops at the next input, the
    # detector weights, which are corrupt here (named like any checkpoint)
    weights = tmp_path / "detector.pt"
    weights.write_bytes(RANDOM_BYTES)
    assert _exit_message(contamination_report.run, [
        "--train-data", tiny_shards, "--checkpoint", str(checkpoint / CHECKPOINT_FILE), "--dataset", "fashion-mnist",
        "--eval-limit", "20", "--detector", "learned", "--detector-weights", str(weights),
        "--out", str(tmp_path / "report")]) == \
        f"contamination_report: {weights}: not a readable copy-detector checkpoint (truncated or corrupt: {RANDOM_REASON})"


def test_pretrain_resumes_from_the_checkpoint_file(checkpoint, tiny_shards, tmp_path):
    out = tmp_path / "resumed"
    summary = pretrain_job.run([
        "--train-data", tiny_shards, "--model", "tiny", "--steps", "4", "--batch-size", "8", "--workers", "0",
        "--tokenizer", str(checkpoint / TOKENIZER_FILE), "--resume-from", str(checkpoint / CHECKPOINT_FILE),
        "--out", str(out), "--log-every", "1", "--data-workers", "0", "--shuffle-buffer", "20", "--no-progress",
    ])
    assert summary["config"]["resume_from"] == str(checkpoint / CHECKPOINT_FILE)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4]  # started at the checkpoint's step 3
    assert _exit_message(pretrain_job.run, ["--train-data", tiny_shards, "--out", str(out),
                                            "--resume-from", str(tmp_path / "nothing.pt")]) == \
        f"pretrain: --resume-from: {tmp_path}/nothing.pt: neither a checkpoint (its .pt file or directory) " \
        "nor a pretrain run with result.json"


# 4. Ray Train's "Failed to query Ray Train Controller actor state", once a second before


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_run_logs_no_controller_state_warning(tiny_shards, tmp_path):
    done = _cli("pretrain.py", "--train-data", tiny_shards, "--model", "tiny", "--steps", "20", "--batch-size", "16",
                "--workers", "2", "--out", str(tmp_path / "run"), "--data-workers", "0", "--no-progress",
                timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "[pretrain] done: step 20" in log
    assert "Failed to query Ray Train Controller actor state" not in log
    assert "PlacementGroupCleaner" not in log
