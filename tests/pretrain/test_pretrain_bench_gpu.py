"""bench/bench_train_gpu.py, the script a GPU machine runs as is: its FLOP count against a hand
count of ViT-B/32, and its CPU path (tiny model: eager, gradient checkpointing, 1-process DDP,
real shards) end to end in a few seconds."""

from __future__ import annotations

import json

import pytest

from bench import bench_train_gpu as bench
from pretrain.factory import get_model_config


def test_flops_of_vit_b32_match_a_hand_count():
    cfg = get_model_config("ViT-B-32")
    # image tower: 50 tokens x 768, 12 blocks; per block 2*T*W*(3W + W + 8W) + 2*2*T*T*W
    block = 2 * 50 * 768 * (12 * 768) + 4 * 50 * 50 * 768
    image = 2 * 49 * 3072 * 768 + 12 * block + 2 * 768 * 512
    # text tower: 77 tokens x 512, 12 blocks, causal attention counted at half
    text = 12 * (2 * 77 * 512 * (12 * 512) + 2 * 77 * 77 * 512) + 2 * 512 * 512
    assert bench.forward_flops_per_sample(cfg, 256) == image + text + 4 * 256 * 512
    assert 8.7e9 < image < 8.9e9  # ViT-B/32 at 224 px: 4.4 GMACs (timm / open_clip's profile)
    assert bench.train_flops_per_sample(cfg, 256) == 3 * bench.forward_flops_per_sample(cfg, 256)


def test_peak_by_device_name():
    assert bench.peak_tflops("NVIDIA H200") == bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0 and bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("Mystery GPU") is None


def test_cpu_path_runs_every_kind_of_case(tiny_shards, tmp_path):
    out = tmp_path / "gpu.json"
    report = bench.main(["--device", "cpu", "--model", "tiny", "--precision", "fp32", "--batch-size", "8",
                         "--steps", "2", "--warmup", "1", "--peak-tflops", "1", "--eager", "--data-workers", "0",
                         "--cases", "eager", "gc", "ddp", "shards", "--shards", tiny_shards, "--out", str(out)])
    assert json.loads(out.read_text()) == report
    rows = {r["case"]: r for r in report["cases"]}
    assert list(rows) == ["eager", "gc", "ddp", "shards"]
    assert rows["gc"]["grad_checkpointing"] and rows["ddp"]["ddp"] and rows["shards"]["data"] == "shards"
    for r in rows.values():
        assert r["samples_per_s"] > 0 and r["step_s"] > 0 and r["loss"] > 0
        assert r["mfu"] == pytest.approx(r["model_tflops_per_s"] / 1.0)
        assert r["model_tflops_per_s"] == pytest.approx(report["flops_per_sample"] * r["samples_per_s"] / 1e12)
    skipped = bench.main(["--device", "cpu", "--model", "tiny", "--precision", "fp32", "--batch-size", "4",
                          "--steps", "1", "--warmup", "0", "--cases", "shards", "--out", str(tmp_path / "s.json")])
    assert skipped["cases"] == [{"case": "shards", "skipped": "no --shards given"}]


def test_without_a_gpu_it_is_skipped_visibly(monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        bench.main([])
    assert exit_.value.code == bench.EXIT_SKIPPED == 77
