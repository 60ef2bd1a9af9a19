"""The measured limit as the best of repeats interleaved with the rows, and a share over
100% named as a measurement fault, never printed as a figure (planted numbers; nothing
here asserts a speed)."""

import numpy as np
import pytest

from retinaunet_deploy.bench.harness import limit_shares, measure_latency
from retinaunet_deploy.bench.peak import LimitProbe, best_of, gflop_per_call
from retinaunet_deploy.bench.report import faults_text, limits_text, write_sweep_markdown
from retinaunet_deploy.bench.rows import REFERENCE, BenchOptions, Row
from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.runtime.base import BackendBase

# The disturbed run of the issue: int8 measured at 1047 while the machine gives ~1750.
REPEATS = [
    {"when": "before batch 1", "fp32": {"p50_ms": 40.0, "gflops": 370.0},
     "int8": {"p50_ms": 14.13, "gflops": 1047.0}},
    {"when": "between batch 1 and 8", "fp32": {"p50_ms": 39.0, "gflops": 379.5},
     "int8": {"p50_ms": 8.455, "gflops": 1750.0}},
    {"when": "after batch 8", "fp32": {"p50_ms": 41.0, "gflops": 361.0},
     "int8": {"p50_ms": 8.494, "gflops": 1742.0}},
]


def test_each_precision_takes_its_best_repeat_and_keeps_every_one():
    limits = best_of(REPEATS)
    assert limits["int8"]["gflops"] == 1750.0 and limits["int8"]["p50_ms"] == 8.455
    assert limits["fp32"]["gflops"] == 379.5 and limits["fp32"]["p50_ms"] == 39.0
    assert [r["gflops"] for r in limits["int8"]["repeats"]] == [1047.0, 1750.0, 1742.0]
    assert [r["when"] for r in limits["fp32"]["repeats"]] == [
        "before batch 1", "between batch 1 and 8", "after batch 8"]
    assert best_of([]) == {}


def _row(name, backend, precision, p50_by_batch):
    return {"name": name, "backend": backend, "precision": precision,
            "latency": {str(b): {"inference": {"p50_ms": ms}} for b, ms in p50_by_batch.items()}}


def test_a_share_over_the_limit_is_a_named_fault_not_a_figure():
    limits = {**best_of(REPEATS[:1]), "workload": "planted"}     # only the disturbed repeat
    gflops_per_image = 10.0
    rows = [
        # 10 GFLOP in 7.366 ms = 1357.6 GFLOP/s: 130% of the disturbed 1047.
        _row("openvino int8 (model.int8.onnx)", "openvino", "int8", {1: 7.366, 8: 100.0}),
        _row("onnxruntime fp16 (model.fp16.onnx)", "onnxruntime", "fp16", {1: 54.05}),
        _row("tensorrt int8 (model.int8.plan)", "tensorrt", "int8", {1: 1.0}),
    ]
    faults = limit_shares(rows, gflops_per_image, limits)
    int8 = rows[0]["latency"]
    assert int8["1"]["limit_fault"] is True and "share_of_limit" not in int8["1"]
    assert int8["8"]["share_of_limit"] == pytest.approx(800 / 1047, rel=1e-3)   # 76%: a figure
    assert "limit_fault" not in int8["8"]
    # fp16 on CPU is measured against the fp32 limit: 185 GFLOP/s of 370 = 50%.
    assert rows[1]["latency"]["1"]["share_of_limit"] == pytest.approx(0.5, rel=1e-3)
    assert "share_of_limit" not in rows[2]["latency"]["1"]      # GPU rows have no CPU limit
    (fault,) = faults
    assert fault["row"] == "openvino int8 (model.int8.onnx)" and fault["batch"] == 1
    assert fault["precision"] == "int8" and fault["limit_gflops"] == 1047.0
    assert fault["attained_gflops"] == pytest.approx(1357.6, abs=0.1)
    assert "openvino int8 (model.int8.onnx), batch 1" in fault["note"]
    assert "the limit measurement was disturbed" in fault["note"]
    assert "130%" not in fault["note"] and "%" not in fault["note"]


def test_the_best_repeat_clears_the_fault():
    rows = [_row("openvino int8 (model.int8.onnx)", "openvino", "int8", {1: 7.366})]
    assert limit_shares(rows, 10.0, {**best_of(REPEATS), "workload": "planted"}) == []
    assert rows[0]["latency"]["1"]["share_of_limit"] == pytest.approx(1357.6 / 1750, rel=1e-3)


def test_the_report_names_the_fault_and_prints_no_share_for_it(tmp_path):
    limits = {**best_of(REPEATS[:1]), "workload": "planted workload"}
    row = {**_row("openvino int8 (model.int8.onnx)", "openvino", "int8", {1: 7.366}),
           "status": "ok", "size_bytes": 1000}
    row["latency"]["1"].update(end_to_end={"p50_ms": 8.0, "images_per_s": 125.0},
                               speedup_vs_reference=2.0)
    faults = limit_shares([row], 10.0, limits)
    report = {"preset": "tiny", "machine": {"cpu": "planted CPU", "cores": 2, "threads": 2},
              "limits": limits, "limit_faults": faults,
              "sweeps": [{"size": 64, "parameters": 1, "gflops_per_image": 10.0,
                          "rows": [row]}]}
    write_sweep_markdown(tmp_path / "report.md", report)
    text = (tmp_path / "report.md").read_text()
    table_line = next(line for line in text.splitlines() if line.startswith("| openvino int8"))
    assert table_line.rstrip().endswith("| fault |") and "130%" not in text
    assert "Limit measurement disturbed" in text
    assert "openvino int8 (model.int8.onnx), batch 1: attained 1358 GFLOP/s" in text
    assert faults_text([]) == []


def test_the_limits_line_shows_every_repeat():
    text = limits_text({**best_of(REPEATS), "bf16": {"skipped": "no native bf16"},
                        "workload": "planted"})
    assert "int8 1750 GFLOP/s (best of 3: 1047, 1750, 1742)" in text
    assert "fp32 380 GFLOP/s (best of 3: 370, 380, 361)" in text
    assert "bf16: no native bf16" in text


class FakeRequest:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def infer(self, inputs):
        import time

        self.log.append(self.name)
        time.sleep(0.002)   # long enough for a p50 of milliseconds (no speed is asserted)


def test_the_probe_keeps_its_repeats_and_reports_the_best():
    log = []
    probe = LimitProbe(threads=2, min_seconds=0.0)
    probe._requests = {"fp32": FakeRequest(log, "fp32"), "int8": FakeRequest(log, "int8")}
    probe.workload = "planted"
    probe.measure("first")
    probe.measure("second")
    limits = probe.limits()
    assert [r["when"] for r in limits["int8"]["repeats"]] == ["first", "second"]
    assert limits["int8"]["gflops"] == max(r["gflops"] for r in limits["int8"]["repeats"])
    assert limits["int8"]["gflops"] == pytest.approx(
        gflop_per_call() / (limits["int8"]["p50_ms"] / 1e3), rel=1e-2)
    assert {"fp32", "int8"} <= set(log)
    probe.unavailable = "OpenVINO is not installed: no limit measured"
    assert probe.limits() == {"skipped": probe.unavailable}


def test_the_limit_is_measured_before_between_and_after_the_batch_sizes():
    from retinaunet_deploy.model.anchors import AnchorConfig

    events = []
    anchors = AnchorConfig()

    class Runner(BackendBase):
        def run(self, batch):
            events.append(f"run {len(batch)}")
            n, h, w = batch.shape[:3]
            a = anchors.num_anchors((h, w))
            return {"mask": np.full((n, h, w, 2), 0.5, np.float32),
                    "cls_logits": np.full((n, a, 1), -9.0, np.float32),
                    "box_deltas": np.zeros((n, a, 4), np.float32)}

    card = ModelCard.from_dict({
        "card_version": 1, "builder": {}, "normalization": {},
        "input": {"channels": 1, "stride": 16, "patch_size": 32, "pixel_dtype": "uint8",
                  "pixel_max": 255},
        "class_names": ["background", "object"], "det_class_names": ["object"],
        "anchors": anchors.to_dict(), "postprocess": {}})
    rows = [Row(REFERENCE, "keras", "fp32", "model.keras", runner=Runner())]
    measure_latency(rows, card, np.zeros((2, 32, 32, 1), np.float32),
                    BenchOptions(batch_sizes=(1, 4), rounds=1, min_seconds=0.0),
                    between=events.append)
    probes = [e for e in events if not e.startswith("run")]
    assert probes == ["before batch 1", "between batch 1 and 4", "after batch 4"]
    between = events.index("between batch 1 and 4")
    assert set(events[events.index("before batch 1") + 1:between]) == {"run 1"}
    assert set(events[between + 1:events.index("after batch 4")]) == {"run 4"}
    assert rows[0].latency["1"]["inference"]["p50_ms"] > 0 and "4" in rows[0].latency
