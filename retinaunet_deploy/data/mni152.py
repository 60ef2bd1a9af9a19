"""``import-data mni152-tissue DIR``: nilearn's MNI152 template as a 3-class volume dataset.

The nilearn wheel ships the ICBM 2009a nonlinear symmetric MNI152 template at 1 mm
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``,
197 x 233 x 189 voxels, RAS+ affine with 1 mm spacing and origin (-98, -134, -72) mm).
It is read through nilearn's API, offline (the files are inside the wheel, nothing is
downloaded):

* `nilearn.datasets.load_mni152_template(resolution=1)`: the skull-stripped T1
  template, rescaled by nilearn to 0..1 (float32); written as the image, float32, so
  a model trained on it uses the per-image ``zscore`` normalisation (`normalization`);
* `load_mni152_gm_template(resolution=1)`, `load_mni152_wm_template(resolution=1)`:
  the grey- and white-matter probability maps (0..1).

Labels, per voxel: background (0) where both probabilities are below `THRESHOLD`,
otherwise the argmax of the two: grey matter (1) or white matter (2). CSF and
everything outside the brain are background.

Terms: the ICBM 2009 templates are Copyright (C) 1993-2009 Louis Collins, McConnell
Brain Imaging Centre, Montreal Neurological Institute, McGill University, distributed
with permission to use, copy, modify and distribute for any purpose without fee,
provided the copyright notice appears in all copies, "as is", without warranty
(http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009); nilearn's own dataset
description lists the license as "unknown". Cite Fonov et al., NeuroImage 54 (2011)
and NeuroImage 47 (2009) S102. `TERMS` is written beside the data.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

THRESHOLD = 0.5          # tissue when the larger of the GM/WM probabilities reaches this
NAME = "mni152"
CLASS_NAMES = ("background", "grey_matter", "white_matter")
TERMS = ("MNI152 ICBM 2009a nonlinear symmetric template (1 mm), as shipped in the nilearn "
         "wheel (mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz). Copyright (C) "
         "1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
         "Institute, McGill University. Permission to use, copy, modify, and distribute this "
         "data for any purpose and without fee is granted, provided that the above copyright "
         "notice appears in all copies; the authors and McGill University make no "
         "representations about its suitability for any purpose; it is provided 'as is' "
         "without express or implied warranty "
         "(http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009). nilearn's dataset "
         "description lists the license as 'unknown'. References: Fonov et al., NeuroImage "
         "54(1) 2011; Fonov et al., NeuroImage 47 S102 2009; Collins et al., 1999. Labels "
         f"made by retinaunet-deploy: background where max(P_gm, P_wm) < {THRESHOLD}, else "
         "the argmax (1 grey matter, 2 white matter).\n")


def tissue_labels(gm: np.ndarray, wm: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """(I, J, K) uint8: 0 background where max(gm, wm) < `threshold`, else 1 (grey matter,
    gm >= wm) or 2 (white matter). `gm`, `wm`: probabilities in [0, 1], same shape."""
    tissue = np.where(wm > gm, 2, 1).astype(np.uint8)
    tissue[np.maximum(gm, wm) < threshold] = 0
    return tissue


def mni152_tissue():
    """(T1 image, labels, template `Nifti1Image`) from nilearn's packaged files.

    T1: (197, 233, 189) float32 in 0..1; labels (197, 233, 189) uint8 (`tissue_labels`).
    Raises `DataError` when nilearn is not installed or its maps do not share a grid.
    """
    try:
        from nilearn import datasets
    except ImportError as error:
        raise DataError("nilearn is not installed; pip install -e '.[realdata]' (its wheel "
                        "ships the MNI152 template)") from error
    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    for image in (gm, wm):
        if image.shape != t1.shape or not np.allclose(image.affine, t1.affine):
            raise DataError(f"nilearn's MNI152 tissue maps ({image.shape}) are not on the T1 "
                            f"template's grid {t1.shape}; reinstall nilearn")
    array = np.asarray(t1.get_fdata(dtype=np.float32))
    labels = tissue_labels(np.asarray(gm.get_fdata(dtype=np.float32)),
                           np.asarray(wm.get_fdata(dtype=np.float32)))
    return array, labels, t1


def import_mni152_tissue(out_dir: Path) -> dict[str, tuple[int, ...]]:
    """Write ``out_dir/images/mni152.nii.gz`` (float32 T1), ``masks/mni152.nii.gz`` (uint8
    labels, same affine and header geometry), ``classes.json`` and ``TERMS.txt``.

    Returns {file name: shape}. Every file is written atomically.
    """
    import nibabel as nib

    from retinaunet_deploy.artifacts import atomic_path

    array, labels, template = mni152_tissue()
    out_dir = Path(out_dir)
    for sub in ("images", "masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    file = f"{NAME}.nii.gz"
    for sub, data in (("images", array), ("masks", labels)):
        image = nib.Nifti1Image(data, template.affine, header=template.header.copy())
        image.set_data_dtype(data.dtype)
        with atomic_path(out_dir / sub / file) as tmp:     # a gzipped single-file NIfTI-1
            Path(tmp).write_bytes(gzip.compress(image.to_bytes(), compresslevel=6))
    with atomic_path(out_dir / "classes.json") as tmp:
        Path(tmp).write_text(json.dumps(list(CLASS_NAMES)))
    with atomic_path(out_dir / "TERMS.txt") as tmp:
        Path(tmp).write_text(TERMS)
    return {file: tuple(array.shape)}
