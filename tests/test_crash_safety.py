"""Crash safety: an export killed while it writes model.onnx leaves the previous run intact.

Each round starts `retinaunet-deploy export` in a subprocess, waits until its
temporary ONNX file appears (the write and the parity check on it are under
way), then kills it (SIGKILL: no cleanup at all; every other round SIGINT, which
runs Python's cleanup). The previous model.onnx (deliberately different bytes:
exported without simplification) and manifest.json must be byte-for-byte
unchanged, verify against each other, and load and run. 8 rounds (4 of each signal; RETINAUNET_KILL_ROUNDS for more), two at a time.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROUNDS = int(os.environ.get("RETINAUNET_KILL_ROUNDS", "8"))
# A shell starts background jobs with SIGINT ignored, and Python then keeps ignoring it;
# restore Ctrl-C's usual meaning (KeyboardInterrupt) as in a terminal.
RESTORE_CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"
CLI = [sys.executable, "-c", f"{RESTORE_CTRL_C}; from retinaunet_deploy.cli import main; main()"]


@pytest.fixture(scope="module")
def previous_run(tiny_exported, tmp_path_factory):
    """The tiny run whose model.onnx was exported without simplification."""
    from retinaunet_deploy.export.onnx import ExportOptions, export_onnx

    run = tmp_path_factory.mktemp("crash") / "run"
    shutil.copytree(tiny_exported[0], run)
    export_onnx(run, ExportOptions(simplify=False, parity_images=4))
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir()
            if p.is_file() and not p.name.startswith(".")}


def _kill_mid_write(run: Path, sig: int, seed: int) -> int:
    """Start an export of `run`, kill it with `sig` once its temporary ONNX exists."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(CLI + ["export", str(run), "--parity-images", "8"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(run.glob(".model.*.tmp.onnx")):
                time.sleep(random.Random(seed).uniform(0, 0.03))  # somewhere in the write
                process.send_signal(sig)
                break
            time.sleep(0.002)
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()


def _one_round(previous_run: Path, root: Path, index: int) -> str | None:
    """One kill; returns a description of what broke, or None."""
    from retinaunet_deploy.artifacts import load_manifest, verify_lineage
    from retinaunet_deploy.runtime import Predictor

    run = root / f"round{index}"
    shutil.copytree(previous_run, run)
    before = _snapshot(run)
    sig = signal.SIGKILL if index % 2 == 0 else signal.SIGINT
    code = _kill_mid_write(run, sig, index)
    if code == 0:
        return f"round {index}: the export finished before the signal"
    after = _snapshot(run)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return f"round {index} ({sig.name}): files changed: {changed}"
    load_manifest(run)
    verify_lineage(run, "model.onnx", "export")
    predictor = Predictor.from_artifact(run / "model.onnx", threads=1)
    result = predictor.predict(np.zeros((64, 64), np.uint8))
    if result.mask.shape != (64, 64):
        return f"round {index}: the previous model.onnx does not run"
    return None


def test_killed_export_leaves_previous_artifact_and_manifest_intact(previous_run, tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = list(pool.map(lambda i: _one_round(previous_run, tmp_path, i),
                                 range(ROUNDS)))
    assert [f for f in failures if f] == []

    # A later export over a killed one succeeds and sweeps the temporary files it left.
    from retinaunet_deploy.artifacts import leftover_temporary_files
    from retinaunet_deploy.export.onnx import ExportOptions, export_onnx

    run = tmp_path / "round0"  # SIGKILL: its temporary file is still there
    assert leftover_temporary_files(run)
    export_onnx(run, ExportOptions(parity_images=4))
    assert leftover_temporary_files(run) == []
    assert (run / "model.onnx").read_bytes() != (previous_run / "model.onnx").read_bytes()


def test_atomic_write_keeps_nothing_on_error_and_makes_a_normal_file(tmp_path):
    import stat

    from retinaunet_deploy.artifacts import atomic_path

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the stage failed")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    # Readable like any file this user writes (mkstemp alone would leave 0600).
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_killed_predict_resumes_to_the_outputs_of_an_uninterrupted_run(tiny_exported, tmp_path):
    """`predict` SIGKILLed after a few images, then `--resume`d: every file (masks,
    overlays, results.jsonl, detections.json) byte-identical to an uninterrupted run."""
    from PIL import Image

    from retinaunet_deploy.predict import predict_files

    model = tiny_exported[0] / "model.onnx"
    rng = np.random.default_rng(7)
    images = []
    for i in range(24):
        path = tmp_path / "images" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (320, 352), dtype=np.uint8)).save(path)
        images.append(path)
    whole = tmp_path / "whole"
    predict_files(model, images, whole, threads=1, score_threshold=0.05)

    out = tmp_path / "killed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(CLI + ["predict", str(model), *map(str, images), "--out", str(out),
                                      "--threads", "1", "--score-threshold", "0.05"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 1 + 3:
                process.kill()
                break
            time.sleep(0.002)
        assert process.wait(timeout=60) == -signal.SIGKILL, "predict finished before the kill"
    finally:
        if process.poll() is None:
            process.kill()
    done = results.read_text().count("\n") - 1
    assert 3 <= done < len(images) and not (out / "detections.json").exists()
    predict_files(model, images, out, threads=1, score_threshold=0.05, resume=True)

    def files(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file()}

    assert files(out) == files(whole)
