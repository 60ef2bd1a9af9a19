"""Real labelled images that ship inside a package's wheel, written as folder datasets.

``stardist-nuclei``: StarDist's wheel carries one image of the 2018 Data Science
Bowl (Caicedo et al., Nature Methods 16, 2019; the BBBC038 images, released under
CC0 1.0): ``stardist/data/images/img2d.tif``, a 512x512 16-bit fluorescence image
of cell nuclei, and ``mask2d.tif``, its 16-bit instance labels (one id per
nucleus, many of them touching). Nothing is downloaded at run time: the files are
read from the installed package (``pip install -e '.[realdata]'``), found without
importing StarDist (which would pull in its compiled extension and numba).

One image cannot make train, validation and test splits, so it is cut into nine
crops of mixed, non-square sizes on a fixed grid (no pixel in two crops). The mask
is class 1 ("nucleus") wherever an instance is; `instances/` keeps the ids.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

# Row and column cuts of the 512x512 image: crops of 144-208 px, none square at 128.
STARDIST_ROWS = (0, 160, 352, 512)
STARDIST_COLS = (0, 176, 320, 512)


def stardist_files() -> tuple[Path, Path]:
    """(image, labels) paths inside the installed StarDist package."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the StarDist package is not installed; pip install -e '.[realdata]' "
                        "(its wheel ships the DSB 2018 nuclei image)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    image, labels = folder / "img2d.tif", folder / "mask2d.tif"
    for path in (image, labels):
        if not path.is_file():
            raise DataError(f"{path} is missing from the installed StarDist; reinstall it "
                            f"(pip install --force-reinstall stardist)")
    return image, labels


def stardist_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The whole image (512, 512, 1) uint16 and its instance labels (512, 512) int32."""
    from retinaunet_deploy.data.readers import read_image, read_labels

    image_path, labels_path = stardist_files()
    return read_image(image_path), read_labels(labels_path, "instance label image").astype(
        np.int32)


def import_stardist_nuclei(out_dir: Path) -> dict[str, tuple[int, int]]:
    """Write the nine crops as ``out_dir/{images,masks,instances}/*.tif``.

    Returns file name -> (height, width). Instance ids are renumbered 1..n per crop.
    """
    import tifffile

    from retinaunet_deploy.artifacts import atomic_path

    image, instances = stardist_nuclei()
    out_dir = Path(out_dir)
    for sub in ("images", "masks", "instances"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    written = {}
    for i, (top, bottom) in enumerate(itertools.pairwise(STARDIST_ROWS)):
        for j, (left, right) in enumerate(itertools.pairwise(STARDIST_COLS)):
            name = f"nuclei_r{i}c{j}.tif"
            crop = instances[top:bottom, left:right]
            _, renumbered = np.unique(crop, return_inverse=True)
            labels = renumbered.reshape(crop.shape).astype(np.uint16)  # 0 stays 0
            for sub, array in (("images", image[top:bottom, left:right, 0]),
                               ("masks", (labels > 0).astype(np.uint8)),
                               ("instances", labels)):
                with atomic_path(out_dir / sub / name) as tmp:
                    tifffile.imwrite(tmp, np.ascontiguousarray(array))
            written[name] = (bottom - top, right - left)
    return written
