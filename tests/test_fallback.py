"""The INT8 fallback's search, as logic: which layers stay float, under which runtimes."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.export import fallback
from retinaunet_deploy.judge.gates import EvalSet

LAYERS = [f"conv{i}" for i in range(10)]


@dataclass
class Verdict:
    passed: bool
    pixel_agreement: float = 0.99
    mean_dice_vs_reference: float = 0.99

    @property
    def failures(self):
        return [] if self.passed else ["planted miss"]

    def summary(self):
        return "passes" if self.passed else "misses"


def _plant(monkeypatch, needs: dict[str, set[str]]):
    """Each runtime passes once the layers in `needs[runtime]` are all kept float; the
    ranking lists the needed layers first (as a real sensitivity ranking would)."""
    state = {"excluded": set()}

    def write_kept_float(all_int8, prepared, qdq, kept):
        assert all_int8 == "all-int8"  # every file is the all-INT8 one with convs in float
        if qdq == "qdq":
            state["excluded"] = set(kept)

    def judge_everywhere(path, card, eval_set, tuning, runtimes=("onnxruntime",)):
        assert eval_set.split == "val"
        return [Verdict(needs[r] <= state["excluded"]) for r in runtimes]

    def layer_sensitivity(prepared, all_int8, kept, work, tuning, card, eval_set, baseline,
                          runtimes=("onnxruntime",)):
        assert set(kept) == state["excluded"]  # ranked on top of the layers already float
        wanted = set().union(*(needs[r] for r in runtimes))
        return [(name, 1.0 if name in wanted else 0.0)
                for name in sorted(LAYERS, key=lambda n: n not in wanted) if name not in kept]

    monkeypatch.setattr(fallback, "write_kept_float", write_kept_float)
    monkeypatch.setattr(fallback, "judge_everywhere", judge_everywhere)
    monkeypatch.setattr(fallback, "layer_sensitivity", layer_sensitivity)
    return state


def _search(split="val"):
    tune = EvalSet([SimpleNamespace(name=f"synthetic-{split}-{i:05d}.png") for i in range(4)],
                   [], [], split)
    tuning = fallback.Tuning(targets=None, runtimes=("onnxruntime", "openvino"))
    return fallback.search_fallback("prepared", "all-int8", "qdq", "work", tuning, {}, tune,
                                    lambda message: None)


def test_one_more_float_layer_makes_the_file_pass_under_openvino_too(monkeypatch):
    state = _plant(monkeypatch, {"onnxruntime": set(), "openvino": {"conv7"}})
    result = _search()
    assert result.kept_float == ["conv7"]
    assert result.tuned_on["runtimes"] == ["onnxruntime", "openvino"]
    assert state["excluded"] == {"conv7"}  # the file written last is the chosen one


def test_openvino_never_costs_tensorrt_more_than_a_few_layers(monkeypatch):
    needs = set(LAYERS[:fallback.OPENVINO_EXTRA_LAYERS + 2])
    state = _plant(monkeypatch, {"onnxruntime": {"conv1"}, "openvino": needs})
    result = _search()
    assert result.kept_float == ["conv1"]              # tuned for TensorRT only
    assert result.tuned_on["runtimes"] == ["onnxruntime"]
    assert "not tuned for" in result.tuned_on["openvino"]
    assert state["excluded"] == {"conv1"}              # and the file on disk says so


def test_a_model_that_passes_only_all_float_is_refused(monkeypatch):
    _plant(monkeypatch, {"onnxruntime": set(LAYERS), "openvino": set()})
    with pytest.raises(ArtifactError, match="only with every layer in float"):
        _search()


def test_the_fallback_refuses_test_images(monkeypatch):
    _plant(monkeypatch, {"onnxruntime": set(), "openvino": set()})
    with pytest.raises(ValueError, match="validation images, not test images"):
        _search("test")


def test_the_runtimes_tuned_for_are_those_judged_and_installed(monkeypatch):
    both = ("onnxruntime", "openvino")
    monkeypatch.setattr(fallback, "openvino_unavailable", lambda: None)
    assert fallback.judging_runtimes(both) == both
    assert fallback.judging_runtimes(both, openvino=False) == ("onnxruntime",)
    assert fallback.judging_runtimes(("onnxruntime",)) == ("onnxruntime",)
    monkeypatch.setattr(fallback, "openvino_unavailable", lambda: "not installed")
    assert fallback.judging_runtimes(both) == ("onnxruntime",)


def test_a_conv_put_back_in_float_computes_as_if_it_had_been_excluded(tiny_exported, tmp_path):
    """The ranking edits the quantised graph instead of re-quantising: same arithmetic."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from retinaunet_deploy.artifacts import load_onnx
    from retinaunet_deploy.export.options import QuantisationOptions
    from retinaunet_deploy.export.quantize import keep_float, quantize

    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(tiny_exported[0] / "model.onnx"), str(prepared),
                      skip_symbolic_shape=True)
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 255, (8, 64, 64, 1)).astype(np.float32)
    options = QuantisationOptions(method="minmax", percentile=99.99, batch_size=4)
    quantize(prepared, tmp_path / "all.onnx", calib, options, tmp_path)
    convs = [n.name for n in load_onnx(prepared).graph.node if n.op_type == "Conv"
             and "head" not in n.name]  # the heads share weights across levels
    chosen = (convs[0], convs[len(convs) // 2], convs[-1])
    quantize(prepared, tmp_path / "excluded.onnx", calib, options, tmp_path, exclude=chosen)
    keep_float(tmp_path / "all.onnx", prepared, tmp_path / "edited.onnx", chosen)

    def count(path, op):
        return sum(n.op_type == op for n in load_onnx(path).graph.node)

    assert count(tmp_path / "edited.onnx", "DequantizeLinear") == count(
        tmp_path / "excluded.onnx", "DequantizeLinear") < count(tmp_path / "all.onnx",
                                                                 "DequantizeLinear")
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    image = rng.uniform(0, 255, (2, 64, 96, 1)).astype(np.float32)
    outputs = [ort.InferenceSession(str(tmp_path / name), plain,
                                    providers=["CPUExecutionProvider"]).run(None, {"image": image})
               for name in ("excluded.onnx", "edited.onnx", "all.onnx")]
    for excluded, edited in zip(outputs[0], outputs[1]):
        np.testing.assert_array_equal(excluded, edited)
    assert any(not np.array_equal(a, b) for a, b in zip(outputs[1], outputs[2]))
    with pytest.raises(ValueError, match="no node named"):
        keep_float(tmp_path / "all.onnx", prepared, tmp_path / "x.onnx", ("not-a-conv",))


def test_gain_leaves_out_a_figure_undefined_on_either_side():
    """A Dice of NaN (no class present in either mask) or a missing box figure must not
    turn the whole ranking gain into NaN, which would sort conv layers at random."""
    from retinaunet_deploy.export.fallback import _gain
    from retinaunet_deploy.judge.agreement import Agreement

    def agreement(pixels, dice, matched=None):
        detections = {} if matched is None else {"matched_fraction": matched}
        return Agreement(images=4, pixel_agreement=pixels, dice_vs_reference={},
                         mean_dice_vs_reference=dice, mean_abs_prob_diff=0.0,
                         max_abs_prob_diff=0.0, detections=detections)

    gain = _gain(agreement(0.99, float("nan"), 0.9), agreement(0.98, 0.5, 0.8))
    assert gain == pytest.approx(0.01 + 0.1)
    assert _gain(agreement(0.99, 0.7), agreement(0.97, 0.6, 0.8)) == pytest.approx(0.02 + 0.1)
