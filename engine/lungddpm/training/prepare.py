"""`lungddpm prepare`: CT folders with nodule annotations -> a prepared training set in a profile's model space.

A *case folder* holds a CT (``ct.nii.gz`` / ``ct.nii`` / ``ct.nrrd`` / ``ct.mha``, else a ``dicom/``
sub-folder, else DICOM files in the folder itself) and optionally nodule annotations: a mask file
``nodules.*`` (nonzero = nodule), LIDC-IDRI XML files anywhere in the folder (50 % reader consensus)
or an ``annotation/`` folder of Pascal-VOC boxes named by SOPInstanceUID. Each input is a case folder
or a folder of case folders.

Per case: read the CT, refuse it with a reason if it cannot be used (unreadable, missing slices,
contrast-enhanced, no lung found, nodules outside the lung), compute the automatic lung mask, compose
the layout, map CT + layout into the profile's model space and write ``cases/<id>/x.npy`` (1, D, H, W)
and ``cond.npy`` (C, D, H, W) for training, plus ``ct.nii.gz`` (HU) and ``layout.nii.gz`` (labels,
channel > 0) on the model grid for inspection. Then ``manifest.json`` / ``manifest.csv`` (case id,
patient id, split, spacing, nodule count and sizes) and ``skipped.json`` (case, reason). The split into
train and validation is by patient, with a seed.

Per nodule (26-connected component of the case layout, numbered as ``layout.sidecar`` numbers them):
``manifest.json`` lists under ``nodules`` its component, centre (LPS mm, the CT's frame) and attributes
(diameter from the mask; for LIDC annotations the readers' characteristics, summarised per consensus
nodule, with the number of readers who rated it; for a mask, the records of its sidecar
``nodules.nodules.json`` if there is one, matched to the nodules by centre). ``nodules.csv`` has one
row per nodule and sample (the characteristics as columns, lists joined with ';', and the nodule's
sentence in the prompt vocabulary); ``manifest.csv`` stays one row per sample.

Profiles ``released-patch`` (Lung-DDPM+) and ``native-patch``: one sample per nodule cube instead of one per case, in
``cases/<id>/cube-<n>/``, cut and pre-processed by ``patches.plan_patches`` / ``patches.encode_patch``
(the functions sampling uses) with the nodule channel only; cases without a nodule are skipped.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungddpm.layout.annotations import (ConsensusNodule, DicomHeaders, SliceMap, is_lidc_xml, lidc_nodules,
                                        read_dicom_headers, union_mask, voc_mask)
from lungddpm.layout.attributes import CHARACTERISTICS, NoduleAttributes, render_prompt
from lungddpm.errors import InputError, LungDDPMError, OutputError, SeriesError
from lungddpm.layout.labels import LUNG, NODULE, compose_layout, validate_layout
from lungddpm.layout.lung_mask import lung_mask
from lungddpm.layout.sidecar import (equivalent_diameter_mm, layout_records, match_records, nodule_components,
                                     read_sidecar, sidecar_path)
from lungddpm.model.config import NATIVE_PROFILE, PATCH_PROFILE, PATCH_PROFILES
from lungddpm.synthesis.patches import cube_encoding, encode_patch, plan_patches
from lungddpm.synthesis.profiles import ModelSpace, NativeProfile, ReleasedProfile, get_profile
from lungddpm.io.atomic import atomic_output, outputs_together, remove_temporaries, write_text
from lungddpm.io.outputs import check_output_folder
from lungddpm.io.volume import Volume, itk_warnings_off, read_volume, resample_like, write_volume

CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha")
MASK_NAMES = ("nodules.nii.gz", "nodules.nii", "nodules.nrrd", "nodules.mha")
# Contrast: median HU of soft tissue between the lungs (heart, great vessels) at mid-lung height. Unenhanced
# blood is 30-60 HU, enhanced blood 150-400 HU.
CONTRAST_HU = 150.0
MEDIASTINUM_HU = (-50.0, 600.0)
MIN_CUBE_SIZE = 8  # the smallest model cube: fewer voxels per side hold no usable anatomy (the demo model has 32)
# bytes per model-space voxel of one sample: x.npy (float32), ct.nii.gz (float32), layout.nii.gz (uint8), and
# cond.npy (float16) per layout channel
SAMPLE_BYTES_PER_VOXEL = 4 + 4 + 1
COND_BYTES_PER_VOXEL = 2


class SkipCase(Exception):
    """A case that preparation leaves out, with the reason recorded in skipped.json."""


@dataclass
class CaseSource:
    """Where one case's CT and annotations are."""

    case_id: str
    folder: Path
    ct: Path
    dicom: Path | None = None
    mask: Path | None = None
    lidc: list[Path] = field(default_factory=list)
    voc: Path | None = None


def _is_dicom_folder(folder: Path) -> bool:
    """Whether a folder directly holds a DICOM series (without ITK's warning for folders that do not)."""
    if not folder.is_dir():
        return False
    with itk_warnings_off():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def find_case(folder: Path) -> CaseSource | None:
    """The case a folder holds, or None when it holds no CT."""
    dicom = folder / "dicom" if _is_dicom_folder(folder / "dicom") else folder if _is_dicom_folder(folder) else None
    ct = next((folder / n for n in CT_NAMES if (folder / n).is_file()), dicom)
    if ct is None:
        return None
    mask = next((folder / n for n in MASK_NAMES if (folder / n).is_file()), None)
    lidc = sorted(p for p in folder.rglob("*.xml") if is_lidc_xml(p))
    voc = folder / "annotation" if (folder / "annotation").is_dir() else None
    return CaseSource(folder.name, folder, ct, dicom, mask, lidc, voc)


def discover_cases(inputs: list[str | Path]) -> list[CaseSource]:
    """Case folders among the inputs (each a case folder or a folder of case folders), sorted by case id."""
    cases = []
    for entry in map(Path, inputs):
        if not entry.is_dir():
            raise InputError(f"{entry}: not a folder; give a case folder or a folder of case folders")
        case = find_case(entry)
        found = [case] if case else [c for c in map(find_case, sorted(p for p in entry.iterdir() if p.is_dir())) if c]
        if not found:
            raise InputError(f"{entry}: no CT found (ct.nii.gz/.nii/.nrrd/.mha, a dicom/ folder or DICOM files); "
                             "see `lungddpm prepare --help` for the folder layout")
        cases += found
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"case folder names must be unique; repeated: {sorted({i for i in ids if ids.count(i) > 1})}")
    return sorted(cases, key=lambda c: c.case_id)


def mediastinum_hu(ct: Volume, lung: Volume) -> float | None:
    """Median HU of soft tissue between the lungs, anterior half, middle half of the lungs' height (LPS-oriented)."""
    hu = sitk.GetArrayFromImage(sitk.DICOMOrient(ct.to_sitk(), "LPS"))  # axes (S, P, L)
    mask = sitk.GetArrayFromImage(sitk.DICOMOrient(lung.to_sitk(), "LPS")) > 0
    k, j, i = np.nonzero(mask)
    if k.size == 0:
        return None
    ks = slice(*np.percentile(k, [25, 75]).astype(int))
    js = slice(j.min(), int(j.min() + 0.5 * (j.max() - j.min())))
    centre, half = (i.min() + i.max()) / 2, 0.1 * (i.max() - i.min())
    region = hu[ks, js, int(centre - half):int(centre + half) + 1]
    tissue = region[(region >= MEDIASTINUM_HU[0]) & (region <= MEDIASTINUM_HU[1]) & ~mask[ks, js, int(centre - half):int(centre + half) + 1]]
    return float(np.median(tissue)) if tissue.size else None


def nodule_diameters_mm(layout: Volume) -> list[float]:
    """Equivalent-sphere diameter (mm) of each 26-connected nodule of a layout, largest first."""
    components, count = nodule_components(layout)
    return component_diameters_mm(components, range(1, count + 1), layout.spacing)


def component_diameters_mm(components: np.ndarray, labels: Iterable[int], spacing: Sequence[float]) -> list[float]:
    """Equivalent-sphere diameter (mm) of the given labels of a component array, largest first."""
    counts = np.bincount(components.ravel())
    sizes = (int(counts[label]) for label in labels if label < counts.size and counts[label])
    return sorted((equivalent_diameter_mm(c, spacing) for c in sizes), reverse=True)


def component_attributes(layout: Volume, consensus: list[ConsensusNodule]) -> dict[int, NoduleAttributes]:
    """The rated consensus nodules' attributes by the layout component holding most of each (the largest wins)."""
    components = nodule_components(layout)[0].ravel()
    best: dict[int, tuple[int, NoduleAttributes]] = {}
    for nodule in consensus:
        labels = components[nodule.voxels]
        labels = labels[labels > 0]
        if nodule.attributes is None or not labels.size:
            continue
        values, counts = np.unique(labels, return_counts=True)
        label, count = int(values[np.argmax(counts)]), int(counts.max())  # ties: the lower component
        if count > best.get(label, (0, None))[0]:
            best[label] = (count, nodule.attributes)
    return {label: attributes for label, (_, attributes) in sorted(best.items())}


def case_layout(source: CaseSource, ct: Volume, headers: DicomHeaders) -> tuple[Volume, str, dict[int, NoduleAttributes]]:
    """The case's layout (automatic lung mask + annotated nodules), the kind of annotation used, rated nodules by component."""
    try:
        lung = lung_mask(ct)
    except InputError as exc:
        raise SkipCase(f"no lung found: {exc}") from None
    if not (lung.array > 0).any():
        raise SkipCase("no lung found by the automatic lung mask")
    slices = SliceMap(ct, headers)
    consensus: list[ConsensusNodule] = []
    if source.mask is not None:
        nodules, kind = resample_like(read_volume(source.mask), ct, interpolator="nearest"), "mask"
    elif source.lidc:
        consensus = lidc_nodules(source.lidc, slices)
        nodules, kind = ct.with_array(union_mask(consensus, ct.array.shape).astype(np.uint8)), "lidc-consensus"
    elif source.voc is not None:
        nodules, kind = ct.with_array(voc_mask(source.voc, slices).astype(np.uint8)), "voc-boxes"
    else:
        nodules, kind = None, "none"
    layout = compose_layout(lung, nodules)
    try:
        validate_layout(ct, layout, ct_name=f"{source.case_id} CT", layout_name=f"{source.case_id} layout")
    except InputError as exc:
        raise SkipCase(f"invalid layout: {exc}") from None
    if source.mask is not None and sidecar_path(source.mask).is_file():
        try:
            return layout, kind, match_records(layout, read_sidecar(source.mask))
        except InputError as exc:
            raise SkipCase(f"invalid nodule sidecar: {exc}") from None
    return layout, kind, component_attributes(layout, consensus)


def read_case(source: CaseSource) -> tuple[Volume, Volume, str, DicomHeaders, dict[int, NoduleAttributes]]:
    """A case's CT, layout, annotation kind, DICOM headers and rated nodules, after the checks that may skip it."""
    try:
        ct = read_volume(source.ct)  # a DICOM series is checked there for missing, duplicated or unreadable slices
    except SeriesError as exc:
        raise SkipCase(exc.problem) from None
    except InputError as exc:
        raise SkipCase(f"unreadable: {exc}") from None
    headers = read_dicom_headers(source.dicom) if source.dicom else DicomHeaders()
    if headers.contrast_agent and headers.contrast_agent.upper() not in ("NONE", "NO"):
        raise SkipCase(f"contrast-enhanced: DICOM ContrastBolusAgent is {headers.contrast_agent!r}")
    layout, kind, attributes = case_layout(source, ct, headers)
    blood = mediastinum_hu(ct, layout)
    if blood is not None and blood > CONTRAST_HU:
        raise SkipCase(f"contrast-enhanced: median soft tissue between the lungs is {blood:.0f} HU (> {CONTRAST_HU:.0f})")
    return ct, layout, kind, headers, attributes


def write_sample(out_dir: Path, space: ModelSpace, prof: ReleasedProfile | NativeProfile, description: str) -> None:
    """x.npy and cond.npy (model space) plus ct.nii.gz (HU) and layout.nii.gz (labels) on the model grid."""
    for name, array in (("x.npy", space.x_ref[0].numpy().astype(np.float32)), ("cond.npy", space.cond[0].numpy().astype(np.float16))):
        with atomic_output(out_dir / name) as temporary:
            np.save(temporary, array)
    grid = Volume.from_sitk(space.grid)
    write_volume(grid.with_array(prof.decode(space.x_ref, space).astype(np.float32)), out_dir / "ct.nii.gz",
                 metadata={"descrip": f"{description} (HU)"})
    channels = np.transpose(space.cond[0].numpy(), (0, *(1 + a for a in prof.inverse_axes))) > 0
    labels = np.zeros(channels.shape[1:], np.uint8)
    if channels.shape[0] == 2:
        labels[channels[0]] = LUNG
    labels[channels[-1]] = NODULE
    write_volume(grid.with_array(labels), out_dir / "layout.nii.gz", metadata={"descrip": "layout in model space"})


def _case_record(source: CaseSource, ct: Volume, layout: Volume, kind: str, headers: DicomHeaders) -> dict:
    """The manifest fields every sample of a case shares."""
    return {
        "case_id": source.case_id, "patient_id": headers.patient_id or source.case_id, "source": str(source.ct),
        "annotation": kind, "shape_ijk": list(ct.array.shape[::-1]), "spacing_mm": [round(s, 4) for s in ct.spacing],
        "lung_volume_l": round(float((layout.array >= LUNG).sum()) * float(np.prod(ct.spacing)) / 1e6, 3),
    }


def prepare_case(source: CaseSource, out_dir: Path, profile: str, size: int, cond_channels: int) -> dict:
    """Prepare one case into out_dir; returns its manifest record or raises SkipCase."""
    ct, layout, kind, headers, attributes = read_case(source)
    prof = get_profile(profile)
    space = prof.encode(ct, layout, size, cond_channels)
    write_sample(out_dir, space, prof, f"{source.case_id} in {profile} model space")
    diameters = nodule_diameters_mm(layout)
    return {**_case_record(source, ct, layout, kind, headers),
            "model_spacing_mm": [round(s, 4) for s in space.grid.GetSpacing()],
            "nodule_count": len(diameters), "nodule_diameters_mm": diameters,
            "nodules": [r.to_dict() for r in layout_records(layout, attributes)]}


def prepare_patch_case(source: CaseSource, out_dir: Path, size: int, patch_spacing_mm: float | None,
                       profile: str = PATCH_PROFILE) -> list[dict]:
    """Prepare one case as Lung-DDPM+ nodule cubes in out_dir/cube-<n>; returns one record per cube or raises SkipCase."""
    ct, layout, kind, headers, attributes = read_case(source)
    if not (layout.array == NODULE).any():
        raise SkipCase("no nodule: Lung-DDPM+ trains on nodule cubes; annotate the nodules or leave the case out")
    try:
        patches, components = plan_patches(layout, size, patch_spacing_mm)
    except InputError as exc:
        raise SkipCase(f"nodule too large for the patch: {exc}") from None
    shared = {**_case_record(source, ct, layout, kind, headers), "case_nodule_count": int(components.max())}
    nodules = layout_records(layout, attributes)
    records = []
    for index, patch in enumerate(patches):
        space = encode_patch(ct, layout, patch, profile)
        write_sample(out_dir / f"cube-{index:02d}", space, cube_encoding(profile),
                     f"{source.case_id} nodule cube {index} in {profile} model space")
        diameters = component_diameters_mm(components, patch.components, ct.spacing)
        records.append({**shared, "cube": index, "cube_start_ijk": [round(float(v), 3) for v in patch.start],
                        "model_spacing_mm": [round(s, 4) for s in patch.grid.GetSpacing()],
                        "nodule_count": len(diameters), "nodule_diameters_mm": diameters,
                        "nodules": [nodules[label - 1].to_dict() for label in patch.components],
                        "folder": f"cases/{source.case_id}/cube-{index:02d}"})
    return records


def default_cond_channels(profile: str, cond_channels: int | None) -> int:
    """The layout channels of a profile (2 = lung + nodule, 1 = nodule only), checked against a requested count."""
    if profile in PATCH_PROFILES:
        if cond_channels not in (None, 1):
            raise InputError(f"the {profile} profile (Lung-DDPM+ cubes) has one layout channel (the nodule), not "
                             f"{cond_channels}; omit --cond-channels or pass --cond-channels 1")
        return 1
    return 2 if cond_channels is None else cond_channels


def split_patients(patients: list[str], val_fraction: float, seed: int) -> set[str]:
    """The patients of the validation split: a seeded shuffle of the sorted ids, the first round(f · n) of them."""
    unique = sorted(set(patients))
    random.Random(seed).shuffle(unique)
    count = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and len(unique) > 1:
        count = min(max(count, 1), len(unique) - 1)
    return set(unique[:count])


def prepare_dataset(inputs: list[str | Path], output: str | Path, *, profile: str = NATIVE_PROFILE, size: int = 128,
                    cond_channels: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                    patch_spacing_mm: float | None = None,
                    progress: Callable[[dict], None] | None = None) -> dict:
    """Prepare every case found in inputs into output; returns {'prepared', 'samples', 'skipped', 'manifest'}.

    cond_channels None: the profile's (2, or 1 for the patch profiles). patch_spacing_mm: patch profiles only,
    the cube's isotropic voxel size (None: the CT's own voxels, the released Lung-DDPM+ geometry).
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction {val_fraction} must lie in [0, 1)")
    if size < MIN_CUBE_SIZE:
        raise InputError(f"size {size} (--size) is too small: give a model cube of at least {MIN_CUBE_SIZE} voxels per "
                         "side, e.g. 128 (the released model) or 64 (Lung-DDPM+ cubes)")
    patch = profile in PATCH_PROFILES
    if not patch:
        get_profile(profile)
    if patch_spacing_mm is not None and not (patch and patch_spacing_mm > 0):
        raise InputError(f"patch spacing {patch_spacing_mm} mm: a positive cube voxel size, for --profile {'/'.join(PATCH_PROFILES)} "
                         "only; omit --patch-spacing for full-volume profiles")
    cond_channels = default_cond_channels(profile, cond_channels)
    output = Path(output)
    sources = discover_cases(inputs)
    sample_bytes = size**3 * (SAMPLE_BYTES_PER_VOXEL + COND_BYTES_PER_VOXEL * cond_channels)
    # one sample per case (patch sets: per nodule cube, so this estimate is a lower bound there)
    check_output_folder(output, protect=inputs, needed_bytes=len(sources) * sample_bytes)
    with outputs_together():  # every file of the prepared set appears at the end, or none does
        samples, skipped, prepared = [], [], 0
        for done, source in enumerate(sources, start=1):
            folder = output / "cases" / source.case_id
            try:
                with outputs_together():  # a case that fails half-way leaves none of its files
                    if patch:
                        records = prepare_patch_case(source, folder, size, patch_spacing_mm, profile)
                    else:
                        records = [{**prepare_case(source, folder, profile, size, cond_channels),
                                    "folder": f"cases/{source.case_id}"}]
            except OutputError:
                raise  # no space left: stop, not a reason to skip the case
            except SkipCase as exc:
                skipped.append({"case_id": source.case_id, "source": str(source.folder), "reason": str(exc)})
            except (LungDDPMError, RuntimeError, OSError, ValueError) as exc:
                skipped.append({"case_id": source.case_id, "source": str(source.folder), "reason": f"unreadable: {exc}"})
            else:
                samples += records
                prepared += 1
            if progress is not None:
                progress({"case": source.case_id, "done": done, "skipped": len(skipped)})
        validation = split_patients([c["patient_id"] for c in samples], val_fraction, seed)
        for c in samples:
            c["split"] = "validation" if c["patient_id"] in validation else "train"
        space = {"profile": profile, "size": size, "cond_channels": cond_channels}
        if patch:
            space["patch_spacing_mm"] = patch_spacing_mm
        manifest = {"space": space, "split": {"val_fraction": val_fraction, "seed": seed}, "cases": samples}
        write_text(output / "manifest.json", json.dumps(manifest, indent=2))
        write_text(output / "skipped.json", json.dumps(skipped, indent=2))
        _write_csv(output / "manifest.csv", samples, patch)
        _write_nodules_csv(output / "nodules.csv", samples, patch)
    remove_temporaries(output)  # left by a killed earlier attempt
    return {"prepared": prepared, "samples": len(samples), "skipped": len(skipped), "manifest": str(output / "manifest.json")}


def _write_csv(path: Path, cases: list[dict], patch: bool = False) -> None:
    """The manifest as CSV (lists joined with ';'); patch sets add the cube columns."""
    columns = ["case_id", "patient_id", "split", "folder", "annotation", "nodule_count", "nodule_diameters_mm",
               "spacing_mm", "model_spacing_mm", "shape_ijk", "lung_volume_l", "source"]
    if patch:
        columns[4:4] = ["cube", "cube_start_ijk", "case_nodule_count"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    for c in cases:
        writer.writerow({k: ";".join(map(str, c[k])) if isinstance(c[k], list) else c[k] for k in columns})
    write_text(path, buffer.getvalue())


def _write_nodules_csv(path: Path, samples: list[dict], patch: bool = False) -> None:
    """One row per nodule of each sample: where it is, its characteristics (empty: unknown) and its prompt sentence."""
    sample_columns = ["case_id"] + (["cube"] if patch else []) + ["split", "folder"]
    attribute_columns = ["diameter_mm", "readers"] + [c.field for c in CHARACTERISTICS]
    columns = sample_columns + ["component", "center_lps_mm"] + attribute_columns + ["prompt"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    for sample in samples:
        for nodule in sample["nodules"]:
            attributes = nodule["attributes"]
            writer.writerow({**{k: sample[k] for k in sample_columns}, "component": nodule["component"],
                             "center_lps_mm": ";".join(map(str, nodule["center_lps_mm"])),
                             **{k: attributes.get(k, "") for k in attribute_columns},
                             "prompt": render_prompt(NoduleAttributes.from_dict(attributes))})
    write_text(path, buffer.getvalue())
