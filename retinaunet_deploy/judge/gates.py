"""The gates: a variant, run as apps run it, against the stored float reference.

`calibrate` (which writes or refuses a file) and `bench` (which reports) judge
with the same functions and the same reference (`judge.reference`):

* `make_eval_set`: whole held-out images of one split, their ground truth and
  the Keras float predictions on them;
* `judge`: the `Agreement` of a variant's predictions with that reference,
  against `Targets`, with 95% bootstrap intervals over images;
* `evaluate_variant`: open a file in a registered runtime
  (`runtime.registry.open_backend`), run it through the `Predictor` and judge it;
* `stored_or_run`: a backend's predictions, from the run's `VariantStore` when the
  same file ran in the same runtime and options on these images before;
* `rejudge`: apply (new) targets to a variant's stored predictions, running nothing.

The reported figures are always on the test split; anything tuned (the INT8
fallback) sees the validation split only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retinaunet_deploy.artifacts import sha256_file
from retinaunet_deploy.card import ModelCard, load_card
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.judge.agreement import Agreement, compare
from retinaunet_deploy.judge.store import VariantStore
from retinaunet_deploy.judge.targets import Targets, targets_for
from retinaunet_deploy.runtime import registry

# The opener option that switches a runtime's graph fusion (True: as the CPU runs it;
# False: every op as written, exact fake-quant for Q/DQ). Runtimes not named always fuse.
FUSE_OPTION = {"onnxruntime": "optimize"}


def runtime_options(runtime: str, fused: bool) -> dict:
    """The opener options that run `runtime` fused or not (``{"optimize": fused}`` for
    ONNX Runtime; ``{}`` for runtimes that always fuse)."""
    option = FUSE_OPTION.get(runtime)
    return {option: bool(fused)} if option else {}


@dataclass
class EvalSet:
    """Whole held-out images with the float reference's predictions on them.

    Attributes:
        samples: `data.folder.Sample`s (whole images of any size).
        truths: per sample, ground-truth (boxes (M, 4) float32, classes (M,)).
        reference: per sample, the float model's `Prediction` with probabilities.
        split: "test" (every reported figure) or "val" (anything tuned).
        run_dir: the run folder whose `VariantStore` keeps judged predictions (None:
            not stored).
    """

    samples: list
    truths: list
    reference: list
    split: str = "test"
    run_dir: Path | None = None

    def head(self, count: int) -> EvalSet:
        return EvalSet(self.samples[:count], self.truths[:count], self.reference[:count],
                       self.split, self.run_dir)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    @property
    def store(self) -> VariantStore | None:
        """The run's store of judged variant predictions, or None without a run folder."""
        return VariantStore(Path(self.run_dir)) if self.run_dir is not None else None


def make_eval_set(run_dir: Path, card: ModelCard, count: int, threads: int | None = None,
                  split: str = "test", progress=None) -> EvalSet:
    """`count` whole images of `split` (fewer if a folder split is smaller), their ground
    truth, and the stored float reference on them."""
    from retinaunet_deploy.data.splits import held_out_set
    from retinaunet_deploy.judge.ground_truth import sample_truths
    from retinaunet_deploy.judge.reference import float_reference

    samples = held_out_set(card, count, split)
    reference = float_reference(run_dir, card, samples, split, threads=threads,
                                progress=progress)
    return EvalSet(samples, sample_truths(samples), reference, split, Path(run_dir))


def judge(eval_set: EvalSet, predictions: list, card: ModelCard, targets: Targets | None = None,
          intervals: bool = True) -> Agreement:
    """A variant's predictions on `eval_set` against its float reference.

    Detection classes come from the card (`det_class_names`), never from the
    mask classes. `intervals` adds 95% bootstrap intervals over the images.
    """
    return compare(eval_set.reference, predictions, card.class_names, eval_set.truths,
                   targets, num_det_classes=card.num_det_classes, intervals=intervals)


def stored_or_run(backend, card: ModelCard, eval_set: EvalSet, store: VariantStore | None = None,
                  runtime: str | None = None, options: dict | None = None,
                  batch_size: int = 8) -> tuple[list, bool]:
    """A backend's predictions (with probabilities) on the eval set's whole images, and
    whether they came from `store` rather than from running it.

    With a store, predictions stored for the same file (sha256 of ``backend.path``),
    `runtime` name, opener `options`, reported providers, settings, batch size and
    images are returned without calling the backend; otherwise it runs and its
    predictions are stored. A backend without a file (``path`` None) always runs.
    Raises `ConfigError` for a store without a runtime name.
    """
    from retinaunet_deploy.runtime.predictor import Predictor

    key = None
    if store is not None and getattr(backend, "path", None) is not None:
        if not runtime:
            raise ConfigError("stored predictions are keyed by their runtime: name it")
        key = store.key(backend.path, runtime, options or {}, card, eval_set.samples,
                        batch_size, providers=getattr(backend, "providers", None))
        stored = store.load(key, eval_set.split)
        if stored is not None:
            return stored, True
    predictor = Predictor(backend, card, batch_size=batch_size)
    predictions = predictor.predict([s.image for s in eval_set.samples], probabilities=True)
    if key is not None:
        store.save(key, eval_set.split, predictions)
    return predictions, False


def run_predictor(backend, card: ModelCard, eval_set: EvalSet, batch_size: int = 8,
                  store: VariantStore | None = None, runtime: str | None = None,
                  options: dict | None = None) -> list:
    """A backend's predictions (with probabilities) on the eval set's whole images; with a
    `store` (and the `runtime` name and opener `options` it was opened with), read from
    it or stored there (`stored_or_run`)."""
    return stored_or_run(backend, card, eval_set, store, runtime, options, batch_size)[0]


def evaluate_variant(path: Path, card: ModelCard, eval_set: EvalSet, targets: Targets,
                     fused: bool, threads: int | None = None, batch_size: int = 8,
                     intervals: bool = False, runtime: str = "onnxruntime",
                     store: VariantStore | None = None) -> Agreement:
    """Run a variant on the whole held-out images, as apps run it, and judge it.

    Args:
        fused: run with the runtime's graph optimisations (as the CPU will run it);
            False runs every op as written (exact fake-quant for Q/DQ). Runtimes
            without a switch (`FUSE_OPTION`; OpenVINO) always fuse.
        intervals: bootstrap intervals (for reported figures; the fallback's many
            trials skip them).
        runtime: a registered runtime name (`runtime.registry`), e.g. "onnxruntime" or
            "openvino" (its int8 kernels for a Q/DQ file).
        store: keep the predictions in (and reuse them from) the run's `VariantStore`,
            e.g. ``eval_set.store``; None: run and keep nothing.
    Raises:
        ArtifactError: the file is missing or corrupt; ConfigError: unknown runtime.
    """
    name = registry.resolve(path, runtime).name
    options = runtime_options(name, fused)
    backend = registry.open_backend(path, name, threads, **options)
    try:
        predictions = run_predictor(backend, card, eval_set, batch_size, store, name, options)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    return judge(eval_set, predictions, card, targets, intervals=intervals)


def rejudge(run_dir: Path, file: str, runtime: str, targets: Targets | None = None,
            fused: bool = True, split: str = "test", intervals: bool = True,
            progress=None) -> Agreement:
    """Judge a run's variant again from its stored predictions, without running it: apply
    new `targets` (or gates registered since) to an old run.

    Args:
        file: the variant, relative to `run_dir` (e.g. "model.int8.onnx"); it must be
            unchanged since its predictions were stored.
        runtime: the registered runtime it was judged in; `fused` as in
            `evaluate_variant`.
        targets: None: `targets_for` the precision it runs at there.
    Raises:
        ArtifactError: no stored predictions match the file as it is now (changed,
            never judged in that runtime, or a damaged store).
    """
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    path = run_dir / file
    if not path.is_file():
        from retinaunet_deploy import remake

        raise ArtifactError(f"{path} not found; {remake.missing(path)}")
    entry = registry.resolve(path, runtime)
    options = runtime_options(entry.name, fused)
    store = VariantStore(run_dir)
    file_sha256 = sha256_file(path)
    stored = store.entry(file_sha256, entry.name, options, split).stored_key()
    remedy = (f"judge it first ('retinaunet-deploy calibrate {run_dir}' or "
              f"'retinaunet-deploy bench {run_dir}')")
    if stored is None:
        raise ArtifactError(f"no stored predictions of {file} as it is now in {entry.name} "
                            f"{options or ''} on {split} images in {store.folder}; {remedy}")
    eval_set = make_eval_set(run_dir, card, len(stored.get("images", [])), split=split,
                             progress=progress)
    key = store.key(path, entry.name, options, card, eval_set.samples,
                    stored.get("batch_size", 8), stored.get("providers"), file_sha256)
    predictions = store.load(key, split)
    if predictions is None:
        raise ArtifactError(f"the stored predictions of {file} in {store.folder} do not match "
                            f"the run's card and images or are damaged; {remedy}")
    targets = targets or targets_for(entry.precision_of(file))
    return judge(eval_set, predictions, card, targets, intervals=intervals)


def variant_figures(agreement: Agreement, eval_set: EvalSet, evaluated: str,
                    warning: str | None, **extra) -> dict:
    """What calibration.json and the manifest record about one judged variant."""
    return {"agreement": agreement.to_dict(), "evaluated": evaluated,
            "images": len(eval_set.samples), "split": eval_set.split,
            "few_images_warning": warning, **extra}
