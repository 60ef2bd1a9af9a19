"""Streaming predict (issue 19): unique output names for any inputs, all bad inputs named
before anything is written, one image in memory at a time, results.jsonl appended per
image, `--resume` byte-identical to an uninterrupted run, disk-full and unwritable output
folders as one line naming the path and the OS reason, and the detection cap recorded."""

import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import weakref
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from retinaunet_deploy.cli import cli
from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_samples
from retinaunet_deploy.errors import ConfigError, InputError, OutputError
from retinaunet_deploy.predict import output_names, predict_files
from retinaunet_deploy.predict import writer as writer_module


def _key(name):
    import unicodedata

    return unicodedata.normalize("NFC", name).casefold()


def _assert_unique(names):
    assert len({_key(n) for n in names}) == len(names), names


# === Output names ===

@pytest.mark.parametrize("given", [
    ["a.png", "a.tif", "a_tif.png"],
    ["x/a.png", "y/a.png", "x__a.png"],
    ["A.png", "a.png", "a.PNG", "a_png.png", "a_png-0.png", "a_png-1.png"],
    ["x/a.png", "X/a.png", "y/a.tif", "x__a_png.png", "x__a_png-0.png", "x__a.png", "a.tiff"],
])
def test_output_names_never_clash_case_insensitively(given):
    paths = [Path("/data") / g for g in given]
    names = output_names(paths)
    _assert_unique(names)
    # The same set in any order: the same name for each file.
    shuffled = paths[:]
    random.Random(0).shuffle(shuffled)
    assert dict(zip(shuffled, output_names(shuffled))) == dict(zip(paths, names))


def test_output_names_keep_plain_stems_and_tell_folders_apart():
    assert output_names([Path("/d/a.png"), Path("/d/b.tif")]) == ["a", "b"]
    assert output_names([Path("/d/x/img.png"), Path("/d/y/img.png"), Path("/d/z.png")]) == \
        ["x__img", "y__img", "z"]
    assert output_names([Path("/d/a.png"), Path("/d/a.tif")]) == ["a_png", "a_tif"]
    # OME-TIFF's double suffix is the suffix: x.ome.tif is x (its mask not x.ome.ome.tif).
    assert output_names([Path("/d/slide.ome.tif"), Path("/d/b.OME.TIFF")]) == ["slide", "b"]
    assert output_names([Path("/d/a.ome.tif"), Path("/d/a.png")]) == ["a_ome_tif", "a_png"]
    # The inputs: a.tif's first disambiguation is a_tif.png's stem, so both move on.
    assert output_names([Path("/d/a.png"), Path("/d/a.tif"), Path("/d/a_tif.png")]) == \
        ["a_png", "a_tif-1", "a_tif_png"]


def test_output_names_of_random_adversarial_sets_are_unique():
    rng = random.Random(1)
    parts = ["a", "A", "x", "x__a", "a_png", "a_tif", "a_png-0", "a-1", "x__a_png"]
    for _ in range(300):
        given = {f"/r/{rng.choice(['', 'x/', 'X/', 'y/', 'x/y/'])}{rng.choice(parts)}"
                 f"{rng.choice(['.png', '.tif', '.PNG', '.tiff'])}"
                 for _ in range(rng.randint(2, 9))}
        _assert_unique(output_names([Path(g) for g in sorted(given)]))


def test_the_same_file_twice_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"a\.png is given twice .*give each image once"):
        output_names([tmp_path / "a.png", tmp_path / "x" / ".." / "a.png"])


# === Fixtures ===

@pytest.fixture(scope="module")
def model(tiny_exported):
    return tiny_exported[0] / "model.onnx"


def _save(path: Path, image: np.ndarray) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, image[..., 0])
    else:
        Image.fromarray(image[..., 0]).save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Eight synthetic test images (80-160 px) whose names clash: a.png a.tif a_tif.png
    x/a.png y/a.png x__a.png, and two more."""
    root = tmp_path_factory.mktemp("inputs")
    images = [s.image for s in synthetic_samples(SyntheticConfig(size=64), 8, seed=3,
                                                 split="test")]
    names = ["a.png", "a.tif", "a_tif.png", "x/a.png", "y/a.png", "x__a.png", "b.png", "c.tif"]
    return [_save(root / n, im) for n, im in zip(names, images)]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(model, inputs, tmp_path_factory):
    """One uninterrupted run over `inputs` (score threshold 0.05): its folder."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    predict_files(model, inputs, out, threads=1, score_threshold=0.05)
    return out


# === The run ===

def test_clashing_inputs_get_their_own_files_and_lines(uninterrupted, inputs):
    summary = json.loads((uninterrupted / "detections.json").read_text())
    assert list(summary["images"]) == [str(p) for p in inputs]
    masks = {e["mask"] for e in summary["images"].values()}
    assert len(masks) == len(inputs) == len(list((uninterrupted / "masks").iterdir()))
    assert len(list((uninterrupted / "overlays").iterdir())) == len(inputs)
    lines = _lines(uninterrupted)
    assert lines[0]["kind"] == "retinaunet-deploy predict results"
    assert lines[0]["options"]["score_threshold"] == 0.05 and lines[0]["artifact_sha256"]
    assert [line.pop("path") for line in lines[1:]] == [str(p) for p in inputs]
    assert lines[1:] == list(summary["images"].values())
    for path, entry in summary["images"].items():
        mask = np.asarray(Image.open(uninterrupted / entry["mask"]))
        assert mask.shape == tuple(entry["size"]) == Image.open(path).size[::-1]
        from retinaunet_deploy.artifacts import sha256_file

        assert sha256_file(uninterrupted / entry["mask"]) == entry["mask_sha256"]
        assert entry["warnings"] == [] and entry["detections_capped"] is False


def test_every_bad_input_is_named_in_one_error_and_nothing_is_written(model, inputs, tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((10, 40), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    bad = [tmp_path / n for n in ("rgb.png", "small.png", "broken.png")]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(model), str(inputs[0]), *map(str, bad),
                                      "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: 3 of 4 images cannot be predicted")
    for path, why in zip(bad, ("3 channel(s)", "smaller than one network stride",
                               "cannot read")):
        assert f"{path}: " in lines[0] and why in lines[0]
    assert not out.exists()


def test_one_image_is_held_at_a_time(model, inputs, tmp_path, monkeypatch):
    """Planning keeps no pixels, and no image is read before the one before it is
    written and let go."""
    from retinaunet_deploy.data import readers

    alive, events, real_read = [], [], readers.read_image

    def read(path):
        events.append(("read", sum(ref() is not None for ref in alive)))
        image = real_read(path)
        alive.append(weakref.ref(image))
        return image

    real_write = writer_module.ResultWriter.write

    def write(self, item, *args):
        events.append(("write", item.name))
        return real_write(self, item, *args)

    monkeypatch.setattr(readers, "read_image", read)
    monkeypatch.setattr(writer_module.ResultWriter, "write", write)
    # (The default, pipelined executor holds a bounded few: tests/test_predict_pipeline.py.)
    predict_files(model, inputs, tmp_path / "out", threads=1, executor="sequential")
    assert [n for kind, n in events if kind == "read"] == [0] * len(
        [e for e in events if e[0] == "read"]), events
    writes = [i for i, (kind, _) in enumerate(events) if kind == "write"]
    assert len(writes) == len(inputs)
    # From the first write on, reads and writes alternate.
    assert all(events[i][0] != events[i + 1][0] for i in range(writes[0] - 1, len(events) - 1))


# === Resume ===

def test_a_run_stopped_part_way_and_resumed_is_byte_identical(model, inputs, uninterrupted,
                                                              tmp_path, monkeypatch):
    from retinaunet_deploy.predict import stream

    out = tmp_path / "out"
    calls, real = [], stream.predict_item

    def stopping(predictor, item, image):
        calls.append(item.name)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C during the fourth image
        return real(predictor, item, image)

    monkeypatch.setattr(stream, "predict_item", stopping)
    with pytest.raises(KeyboardInterrupt):
        predict_files(model, inputs, out, threads=1, score_threshold=0.05)
    assert len(_lines(out)) == 1 + 3 and not (out / "detections.json").exists()
    monkeypatch.setattr(stream, "predict_item", real)
    # A kill in the middle of an append leaves half a line; a later edit spoils a mask.
    with open(out / "results.jsonl", "a") as handle:
        handle.write('{"path": "half a li')
    first = _lines_without_last(out)[1]
    (out / first["mask"]).write_bytes(b"spoilt")
    echoed = []
    predict_files(model, inputs, out, threads=1, score_threshold=0.05, resume=True,
                  echo=echoed.append)
    assert echoed == [f"resuming: 2 of {len(inputs)} images already done in {out}"]
    assert _files(out) == _files(uninterrupted)


def _lines_without_last(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()[:-1]]


def test_resume_refuses_other_options_or_artifact(model, inputs, uninterrupted, tmp_path,
                                                  tiny_exported):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    with pytest.raises(ConfigError, match=r"results\.jsonl: the earlier run had options "
                                          r".*\"score_threshold\": 0\.05.* this one .*0\.5.*"
                                          r"without --resume"):
        predict_files(model, inputs, out, threads=1, score_threshold=0.5, resume=True)
    with pytest.raises(ConfigError, match=r"the earlier run had artifact_sha256"):
        predict_files(tiny_exported[0] / "model.keras", inputs, out, score_threshold=0.05,
                      resume=True)
    assert _files(out) == _files(uninterrupted)
    # All done: resuming again redoes nothing and rewrites the same summary.
    predict_files(model, inputs, out, threads=1, score_threshold=0.05, resume=True)
    assert _files(out) == _files(uninterrupted)


def test_no_overlays_writes_the_same_masks_and_lines_without_overlays(model, inputs,
                                                                      uninterrupted, tmp_path):
    out = tmp_path / "out"
    predict_files(model, inputs, out, threads=1, score_threshold=0.05, overlays=False)
    full, bare = _files(uninterrupted), _files(out)
    assert not (out / "overlays").exists()
    masks = {k: v for k, v in full.items() if k.startswith("masks/")}
    assert bare == {**masks, "results.jsonl": bare["results.jsonl"],
                    "detections.json": bare["detections.json"]}
    with_overlays, without = _lines(uninterrupted), _lines(out)
    assert without[0]["options"] == {**with_overlays[0]["options"], "overlays": False}
    for line, bare_line in zip(with_overlays[1:], without[1:]):
        assert bare_line == {k: v for k, v in line.items()
                             if k not in ("overlay", "overlay_sha256")}
    # Resume keeps to it: all done, nothing redone; with overlays asked for, refused.
    predict_files(model, inputs, out, threads=1, score_threshold=0.05, overlays=False,
                  resume=True)
    assert _files(out) == bare
    with pytest.raises(ConfigError, match=r"\"overlays\": false"):
        predict_files(model, inputs, out, threads=1, score_threshold=0.05, resume=True)


def test_an_earlier_runs_folder_is_refused_without_resume(model, inputs, uninterrupted,
                                                          tmp_path):
    """Starting afresh dropped the earlier record while its masks stayed beside the new
    ones (a fresh-user trial: results.jsonl of one run, detections.json of another)."""
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    with pytest.raises(ConfigError, match=r"holds the results of an earlier predict run "
                                          r"\(results\.jsonl\); finish it with --resume"):
        predict_files(model, inputs[:1], out, threads=1, score_threshold=0.5)
    assert _files(out) == _files(uninterrupted)


def test_an_input_inside_the_outputs_is_refused(model, inputs, uninterrupted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    mask = next((out / "masks").iterdir())
    with pytest.raises(InputError, match=rf"{mask.name} is inside .*outputs, which this run "
                                         rf"writes"):
        predict_files(model, [mask], out, threads=1, resume=True)
    assert _files(out) == _files(uninterrupted)


def test_an_unreachable_ray_head_is_one_line_at_once(model, inputs, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:1' "
                                          r"\(.*\); start its head"):
        predict_files(model, inputs[:1], out, threads=1, executor="ray",
                      ray_address="127.0.0.1:1")
    assert not out.exists()


# === Output faults ===

@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` made read-only: by permissions, or for root (whom permissions do not stop)
    by a read-only bind mount of it onto itself."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], check=False,
                          capture_output=True)
    if bind.returncode:
        pytest.skip(f"root without mount rights cannot make a read-only folder: {bind.stderr}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _one_line_error(result, *expected):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "a bug" not in result.output, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[-1], (text, lines[-1])
    return lines[-1]


def test_check_writable_names_the_path_and_the_os_reason(tmp_path):
    from retinaunet_deploy.artifacts import check_writable

    # Checked by creating it, and left as it was found: a stage refused after the check
    # (bad data, bad options) must leave no empty folder behind.
    check_writable(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    check_writable(tmp_path / "kept")
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(OutputError, match=rf"^{target}: cannot write \({tmp_path / 'file'} "
                                              r"is a file, not a folder\); choose a folder"):
            check_writable(target)
    with _read_only(tmp_path / "ro") as folder:
        reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
        with pytest.raises(OutputError, match=rf"^{folder / 'sub'}: cannot write \({reason}\)"):
            check_writable(folder / "sub")
        with pytest.raises(OutputError, match=rf"^{folder}: cannot write \({reason}\)"):
            check_writable(folder)


def test_predict_into_a_read_only_folder_or_under_a_file_is_one_line(model, inputs, tmp_path):
    with _read_only(tmp_path / "ro") as folder:
        result = CliRunner().invoke(cli, ["predict", str(model), str(inputs[0]), "--out",
                                          str(folder / "out")])
        _one_line_error(result, f"{folder / 'out'}: cannot write (")
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, ["predict", str(model), str(inputs[0]), "--out",
                                      str(tmp_path / "file" / "out")])
    _one_line_error(result, f"{tmp_path / 'file'} is a file, not a folder")


def test_stages_refuse_an_unwritable_output_before_their_work(run_copy, tmp_path, monkeypatch):
    from retinaunet_deploy import model as model_package
    from retinaunet_deploy.bench.harness import run_bench
    from retinaunet_deploy.export.calibration import calibrate
    from retinaunet_deploy.export.onnx import export_onnx

    def no_work(*args, **kwargs):
        raise AssertionError("the stage started its work")

    monkeypatch.setattr(model_package.RetinaUNet, "from_preset", no_work)
    with _read_only(tmp_path / "ro") as folder:
        result = CliRunner().invoke(cli, ["train", "--preset", "tiny", "--size", "64",
                                          "--epochs", "1", "--out", str(folder / "run")])
        _one_line_error(result, f"{folder / 'run'}: cannot write (")
    with _read_only(run_copy):
        for stage in (export_onnx, calibrate, lambda run: run_bench(run, tmp_path / "b")):
            with pytest.raises(OutputError, match=rf"^{run_copy}: cannot write \("):
                stage(run_copy)


class _FillingDisk:
    """Patches the writer so that the disk is full from the `after`-th output file on."""

    def __init__(self, monkeypatch, after: int):
        self.real, self.after, self.count = writer_module.atomic_path, after, 0
        monkeypatch.setattr(writer_module, "atomic_path", self)

    @contextlib.contextmanager
    def __call__(self, path):
        with self.real(path) as tmp:
            if path.parent.name in ("masks", "overlays"):
                self.count += 1
                if self.count > self.after:
                    tmp.write_bytes(b"the first blocks")
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            yield tmp


def test_a_full_disk_keeps_every_finished_image(model, inputs, uninterrupted, tmp_path,
                                                monkeypatch):
    out = tmp_path / "out"
    disk = _FillingDisk(monkeypatch, after=2 * 3 + 1)  # the fourth image's overlay: no room
    with pytest.raises(OutputError) as caught:
        predict_files(model, inputs, out, threads=1, score_threshold=0.05)
    names = output_names(inputs)
    assert str(caught.value) == (
        f"{out / 'overlays' / names[3]}.png: cannot write (No space left on device); free "
        f"space on that disk or choose another --out, then run the same command with "
        f"--resume: the finished images are kept")
    lines = _lines(out)
    assert [line["name"] for line in lines[1:]] == names[:3]
    finished = _files(uninterrupted)
    for line in lines[1:]:
        for kind in ("mask", "overlay"):
            assert (out / line[kind]).read_bytes() == finished[line[kind]]
    assert not (out / "detections.json").exists()
    assert not [p for p in out.rglob(".*") if p.is_file()]   # no temporary file left
    disk.after = 10**6   # space freed
    predict_files(model, inputs, out, threads=1, score_threshold=0.05, resume=True)
    assert _files(out) == _files(uninterrupted)


def test_a_full_disk_while_appending_leaves_no_half_line(model, inputs, tmp_path,
                                                         monkeypatch):
    out = tmp_path / "out"
    appended = []

    class FullOs:
        def __getattr__(self, name):
            return getattr(os, name)

        def write(self, fd, data):
            appended.append(data)
            if len(appended) == 3:
                os.write(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.write(fd, data)

    monkeypatch.setattr(writer_module, "os", FullOs())
    with pytest.raises(OutputError, match=rf"^{out / 'results.jsonl'}: cannot write \(No "
                                          r"space left on device\)"):
        predict_files(model, inputs, out, threads=1)
    text = (out / "results.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 1 + 2


# === What is capped or warned about ===

def test_the_detection_cap_is_an_option_and_recorded(model, inputs, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(model), *map(str, inputs[:3]), "--out",
                                      str(out), "--score-threshold", "0.05",
                                      "--max-detections", "1"])
    assert result.exit_code == 0, result.output
    images = json.loads((out / "detections.json").read_text())["images"]
    capped = [p for p, e in images.items() if e["detections_capped"]]
    assert capped, "no image had more than one detection: pick other images"
    for path, entry in images.items():
        assert len(entry["detections"]) <= 1
        if path in capped:
            assert entry["detections_before_cap"] > 1
            assert (f"warning: {path}: 1 detections kept of {entry['detections_before_cap']} "
                    f"found (the per-image cap); raise it with --max-detections") in result.output
            assert entry["warnings"] and entry["warnings"][0].startswith(f"{path}: 1 detections")
    uncapped = CliRunner().invoke(cli, ["predict", str(model), *map(str, inputs[:3]), "--out",
                                        str(tmp_path / "all"), "--score-threshold", "0.05"])
    assert uncapped.exit_code == 0, uncapped.output
    every = json.loads((tmp_path / "all" / "detections.json").read_text())["images"]
    for path in capped:
        assert len(every[path]["detections"]) == images[path]["detections_before_cap"]
        assert every[path]["detections"][0] == images[path]["detections"][0]


def test_decode_detections_says_what_its_caps_dropped():
    from retinaunet_deploy.postprocess import DetectionConfig, decode_detections

    anchors = np.array([[0, 0, 8, 8], [0, 20, 8, 28], [20, 0, 28, 8], [20, 20, 28, 28],
                        [0, 0, 8, 8.5]], np.float32)
    logits = np.full((1, 5, 1), 5.0, np.float32)
    deltas = np.zeros((1, 5, 4), np.float32)
    config = DetectionConfig(score_threshold=0.5, iou_threshold=0.5, max_detections=2,
                             pre_nms_top_k=100)
    dets = decode_detections(logits, deltas, anchors, (32, 32), config)[0]
    # Five candidates, NMS leaves four (the last overlaps the first), the cap keeps two.
    assert len(dets) == 2 and dets.dropped == 2 and dets.candidates_dropped == 0
    few = decode_detections(logits, deltas, anchors, (32, 32),
                            DetectionConfig(score_threshold=0.5, max_detections=10,
                                            pre_nms_top_k=3))[0]
    assert len(few) == 3 and few.dropped == 0 and few.candidates_dropped == 2
    assert few.capped and dets.capped


def test_an_out_of_calibration_warning_is_printed_and_recorded(model, inputs, tmp_path,
                                                               monkeypatch):
    import retinaunet_deploy.predict as predict_package

    class Range:
        def check(self, image):
            return "mean 99 outside the calibration images' 10..40" if image.mean() > 0 else None

    monkeypatch.setattr(predict_package, "_calibration_range", lambda artifact: Range())
    echoed = []
    results = predict_files(model, inputs[:2], tmp_path / "out", echo=echoed.append)
    for path in inputs[:2]:
        line = f"{path}: mean 99 outside the calibration images' 10..40"
        assert results[str(path)]["warnings"] == [line]
        assert f"warning: {line}" in echoed


def test_a_real_int8_file_warns_on_images_unlike_its_calibration_data(tiny_calibrated,
                                                                      tmp_path):
    """The tiny run's INT8 ONNX file and its recorded calibration range, end to end: a
    training image is like the calibration data, the same image 90 grey levels brighter
    is not, and only its entry (and the console) carry the warning."""
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.data.splits import load_split

    run, _ = tiny_calibrated
    image = load_split(load_card(run), "train")[0].image
    like, bright = tmp_path / "like.png", tmp_path / "bright.png"
    Image.fromarray(image[..., 0]).save(like)
    Image.fromarray(np.clip(image[..., 0].astype(np.int32) + 90, 0, 255).astype(np.uint8)
                    ).save(bright)
    echoed = []
    results = predict_files(run / "model.int8.onnx", [like, bright], tmp_path / "out",
                            threads=1, runtime="onnxruntime", echo=echoed.append)

    def unlike(entry):   # (the tiny model may also hit its detection cap: other warnings)
        return [w for w in entry["warnings"] if "INT8 calibration images" in w]

    assert unlike(results[str(like)]) == []
    [warning] = unlike(results[str(bright)])
    assert warning.startswith(f"{bright}: ") and " is outside " in warning
    assert f"warning: {warning}" in echoed
    lines = _lines(tmp_path / "out")
    assert [unlike(line) for line in lines[1:]] == [[], [warning]]


def test_a_capped_tile_is_one_warning_line_not_a_python_warning(model, inputs, tmp_path,
                                                                monkeypatch):
    """An engine that caps --tile sets `Predictor.tile_warning` (and warns in Python);
    predict prints it once as "warning: ..." (tests/test_runtime.py has the real cap)."""
    import warnings

    from retinaunet_deploy.runtime import Predictor

    real = Predictor.from_artifact.__func__
    line = "--tile 1024 is larger than the engine takes (128 px): tiles of 128 px are used"

    def capped(cls, *args, **kwargs):
        predictor = real(cls, *args, **kwargs)
        predictor.tile_warning = line
        warnings.warn(line, UserWarning, stacklevel=2)
        return predictor

    monkeypatch.setattr(Predictor, "from_artifact", classmethod(capped))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a Python warning escaping would fail the run
        result = CliRunner().invoke(cli, ["predict", str(model), str(inputs[0]), "--out",
                                          str(tmp_path / "out"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.count(line) == 1 and f"warning: {line}\n" in result.output
