"""Stored variant predictions: a variant judged twice runs once; a changed file, another
option or a damaged store is run again, never trusted; the bench re-judges from the store."""

import dataclasses
import json
import shutil

import pytest

from retinaunet_deploy.card import load_card
from retinaunet_deploy.judge.gates import evaluate_variant, make_eval_set
from retinaunet_deploy.judge.targets import targets_for
from retinaunet_deploy.runtime import registry


@pytest.fixture(scope="module")
def judged_run(tiny_exported, tmp_path_factory):
    """A private copy of the exported tiny run, its card and a 3-image test eval set."""
    run = tmp_path_factory.mktemp("variant_store") / "run"
    shutil.copytree(tiny_exported[0], run)
    card = load_card(run)
    return run, card, make_eval_set(run, card, 3, threads=2)


@pytest.fixture
def runs(monkeypatch):
    """Every batch ONNX Runtime runs, counted by a wrapper around its registered opener."""
    calls = []
    entry = registry.RUNTIMES["onnxruntime"]

    def counting(path, threads=None, **options):
        backend = entry.opener(path, threads=threads, **options)
        run = backend.run

        def counted(batch):
            calls.append(len(batch))
            return run(batch)

        backend.run = counted
        return backend

    monkeypatch.setitem(registry.RUNTIMES, "onnxruntime",
                        dataclasses.replace(entry, opener=counting))
    return calls


def _judge(run, card, eval_set, file="model.onnx", fused=True):
    return evaluate_variant(run / file, card, eval_set, targets_for("fp32"), fused=fused,
                            threads=2, intervals=True, store=eval_set.store)


def _entries(run):
    return sorted(p.name for p in (run / "reference" / "variants").glob("*.json"))


def test_a_variant_judged_twice_runs_once(judged_run, runs):
    run, card, eval_set = judged_run
    first = _judge(run, card, eval_set)
    ran = len(runs)
    assert ran > 0
    second = _judge(run, card, eval_set)
    assert len(runs) == ran, "the second judgement ran the backend"
    assert second.to_dict() == first.to_dict()
    # The first two images are a prefix of the stored three: served too.
    assert _judge(run, card, eval_set.head(2)).pixel_agreement >= 0.0 and len(runs) == ran
    key = json.loads((run / "reference" / "variants" / _entries(run)[0]).read_text())
    assert key["runtime"] == "onnxruntime" and key["options"] == {"optimize": True}
    assert [name for name, _ in key["images"]] == eval_set.names
    assert key["providers"] == ["CPUExecutionProvider"]
    # Unfused is another judgement (another key): it runs, once.
    _judge(run, card, eval_set, fused=False)
    assert len(runs) > ran
    assert len(_entries(run)) == 2


def test_a_changed_file_or_a_damaged_store_is_run_again(judged_run, runs, tmp_path):
    import onnx

    run, card, eval_set = judged_run
    before = _judge(run, card, eval_set)
    ran = len(runs)
    # The same graph with one more metadata entry: another sha256, so judged afresh.
    model = onnx.load(run / "model.onnx")
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "re-exported": "yes"})
    onnx.save(model, run / "model.changed.onnx")
    changed = _judge(run, card, eval_set, "model.changed.onnx")
    assert len(runs) > ran
    assert changed.pixel_agreement == before.pixel_agreement
    ran = len(runs)
    # A truncated array file: recomputed, never half-read.
    for stored in (run / "reference" / "variants").glob("*.npz"):
        stored.write_bytes(stored.read_bytes()[:200])
    assert _judge(run, card, eval_set).to_dict() == before.to_dict()
    assert len(runs) > ran
    ran = len(runs)
    _judge(run, card, eval_set)
    assert len(runs) == ran  # re-stored whole by the recomputation
    # A key edited to claim other images: stale, recomputed.
    for key_path in (run / "reference" / "variants").glob("*.json"):
        key = json.loads(key_path.read_text())
        key["images"][0][1] = "0" * 16
        key_path.write_text(json.dumps(key))
    _judge(run, card, eval_set)
    assert len(runs) > ran


def test_the_bench_rejudges_an_unchanged_file_from_its_stored_predictions(judged_run, runs):
    from retinaunet_deploy.bench.harness import STORED_NOTE, measure_fidelity, row_targets
    from retinaunet_deploy.bench.rows import Row

    run, card, eval_set = judged_run
    calibrated = _judge(run, card, eval_set)  # as calibrate judges fused, with the store

    def row():
        runner = registry.open_backend(run / "model.onnx", "onnxruntime", 2,
                                       providers=["CPUExecutionProvider"])
        return Row("onnxruntime fp32 (model.onnx)", "onnxruntime", "fp32", "model.onnx",
                   notes="plain", runner=runner, runtime="onnxruntime")

    ran = len(runs)
    rows = [row()]
    measure_fidelity(rows, card, eval_set, row_targets(run))
    assert len(runs) == ran, "the bench ran a file whose predictions were stored"
    assert rows[0].status == "ok" and rows[0].fidelity["predictions"] == "stored"
    assert rows[0].notes == f"plain; {STORED_NOTE}"
    figures = {k: v for k, v in rows[0].fidelity.items() if k != "predictions"}
    assert figures == calibrated.to_dict()
    # With nothing stored, the bench runs the file (and stores it for the next bench).
    for stored in (run / "reference" / "variants").glob("*.json"):
        stored.unlink()
    rows = [row()]
    measure_fidelity(rows, card, eval_set, row_targets(run))
    assert len(runs) > ran and rows[0].fidelity["predictions"] == "run"
    assert rows[0].notes == "plain"


def test_the_store_keeps_the_most_recently_used_entries(tmp_path, monkeypatch):
    import os

    import numpy as np

    from retinaunet_deploy.judge import store as store_module
    from retinaunet_deploy.runtime.predictor import Prediction

    monkeypatch.setattr(store_module, "MAX_VARIANT_ENTRIES", 2)
    store = store_module.VariantStore(tmp_path)
    predictions = [Prediction(np.zeros((4, 4), np.uint8), None,
                              np.full((4, 4, 3), 1 / 3, np.float32))]
    keys = [{"format": store_module.FORMAT, "file_sha256": f"{i}" * 64, "runtime": "onnxruntime",
             "options": {"optimize": True}, "images": [["a.png", "0" * 16]]} for i in range(3)]
    for age, key in zip((30, 20), keys[:2]):
        store.save(key, "test", predictions)
        stamp = store.entry(key["file_sha256"], "onnxruntime", key["options"], "test").key_path
        os.utime(stamp, (stamp.stat().st_mtime - age,) * 2)
    assert store.load(keys[0], "test") is not None  # used now: the newest
    store.save(keys[2], "test", predictions)
    assert store.load(keys[0], "test") is not None and store.load(keys[2], "test") is not None
    assert store.load(keys[1], "test") is None
    assert len(list(store.folder.glob("*.npz"))) == 2
