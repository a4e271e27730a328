"""A generated data set on disk: nnU-Net v2 folders, a MONAI datalist and a provenance manifest.

Layout of ``<root>/Dataset<NNN>_<Name>/``::

    imagesTr/<case>_0000.nii.gz   synthetic CT in HU (nnU-Net channel 0 = CT)
    labelsTr/<case>.nii.gz        its labels (0 background, 1 lung, 2 nodule; or 0/1 nodule only)
    layouts/<case>.nii.gz         the full 0/1/2 layout, only when labelsTr holds nodule-only labels
    provenance/<case>.json        where the case came from; written last, so it marks the case done
    dataset.json                  nnU-Net v2 description; datalist.json: MONAI (decathlon) datalist
    manifest.jsonl, manifest.csv  one provenance record per case

Each case's files are written under the hidden ``.partial/`` (where nnU-Net does not look for cases)
and moved into place together, the provenance last (``io.atomic.outputs_together``), so an
interrupted run leaves either a finished case or none. The data-set level files are rebuilt from
the provenance files found on disk, so shards running on different machines need no communication.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungddpm.errors import ConfigError, InputError
from lungddpm.layout.labels import NODULE
from lungddpm.io.atomic import outputs_together, write_text
from lungddpm.io.volume import Volume, write_volume

FILE_ENDING = ".nii.gz"
LABEL_SETS = {
    "layout": {"background": 0, "lung": 1, "nodule": 2},
    "nodule": {"background": 0, "nodule": 1},
}
MANIFEST_COLUMNS = ("case", "synthetic", "reference_id", "reference_path", "layout_source", "variant", "seed",
                    "model", "model_sha256", "sampler", "steps", "aas_variant", "guidance", "lungddpm_version", "image", "label")


@dataclass(frozen=True)
class DatasetPaths:
    """File names of one generated data set (see the module docstring)."""

    root: Path

    def image(self, case: str) -> Path:
        """The case's CT in imagesTr (channel 0000)."""
        return self.root / "imagesTr" / f"{case}_0000{FILE_ENDING}"

    def label(self, case: str) -> Path:
        """The case's label image in labelsTr."""
        return self.root / "labelsTr" / f"{case}{FILE_ENDING}"

    def layout(self, case: str) -> Path:
        """The case's full 0/1/2 layout (written when labelsTr holds nodule-only labels)."""
        return self.root / "layouts" / f"{case}{FILE_ENDING}"

    @property
    def staging(self) -> Path:
        """The hidden folder where case files are written before they move into place."""
        return self.root / ".partial"

    def provenance(self, case: str) -> Path:
        """The case's provenance record; its presence marks the case done."""
        return self.root / "provenance" / f"{case}.json"

    def is_done(self, case: str) -> bool:
        """Whether the case's provenance, image and label files all exist."""
        return all(p.is_file() for p in (self.provenance(case), self.image(case), self.label(case)))


def dataset_folder(root: str | Path, dataset_id: int, name: str) -> DatasetPaths:
    """The nnU-Net v2 folder <root>/Dataset<NNN>_<name>."""
    if not 0 <= dataset_id <= 999:
        raise ConfigError(f"dataset id {dataset_id} must be 0..999 (nnU-Net uses three digits); e.g. 501")
    if not name or not all(c.isalnum() or c == "-" for c in name):
        raise ConfigError(f"dataset name {name!r} must be letters, digits or '-' (nnU-Net: Dataset<NNN>_<name>)")
    return DatasetPaths(Path(root) / f"Dataset{dataset_id:03d}_{name}")


def label_image(layout: Volume, label_set: str) -> Volume:
    """The label image to train on: the layout itself, or nodule = 1 and everything else 0."""
    if label_set not in LABEL_SETS:
        raise ConfigError(f"label set {label_set!r} is unknown; choose one of {sorted(LABEL_SETS)}")
    array = np.asarray(layout.array, dtype=np.uint8)
    if label_set == "nodule":
        array = (array == NODULE).astype(np.uint8)
    return layout.with_array(array.copy())


def write_case(paths: DatasetPaths, case: str, image: Volume, layout: Volume, label_set: str, record: dict,
               metadata: dict[str, str], protect: tuple[str | Path, ...] = ()) -> None:
    """Write one case's image, labels (and layout) and its provenance: they appear together, or none of them."""
    label_meta = {**metadata, "descrip": f"labels of a SYNTHETIC CT ({_label_text(label_set)})"}
    files = [(image, paths.image(case), metadata), (label_image(layout, label_set), paths.label(case), label_meta)]
    if label_set != "layout":
        files.append((layout, paths.layout(case), {**metadata, "descrip": "layout of a SYNTHETIC CT (0 bg, 1 lung, 2 nodule)"}))
    with outputs_together(paths.staging):
        for volume, final, meta in files:
            write_volume(volume, final, metadata=meta, protect=protect)
        write_text(paths.provenance(case), json.dumps(record, indent=2, sort_keys=True) + "\n")  # moved last


def _label_text(label_set: str) -> str:
    """The label values of a label set as text, e.g. '0 background, 1 nodule'."""
    return ", ".join(f"{v} {k}" for k, v in LABEL_SETS[label_set].items())


def read_provenance(paths: DatasetPaths, *, finished_only: bool = True) -> list[dict]:
    """The provenance records on disk, sorted by case name: of the finished cases (image and label there), or all."""
    folder = paths.root / "provenance"
    records = []
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        case = file.stem
        if finished_only and not paths.is_done(case):
            continue
        try:
            records.append(json.loads(file.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise InputError(f"{file}: not valid JSON ({exc}); delete it so the case is generated again") from None
    return records


def set_aside_incomplete(paths: DatasetPaths) -> list[str]:
    """Move the files of cases that are on disk in part only (a killed run) to the staging folder; returns the cases.

    nnU-Net takes every image in imagesTr as a case, so a leftover image would contradict numTraining;
    generate makes such cases again.
    """
    leftovers: dict[str, list[Path]] = {}
    for folder, ending in (("imagesTr", f"_0000{FILE_ENDING}"), ("labelsTr", FILE_ENDING), ("layouts", FILE_ENDING),
                           ("provenance", ".json")):
        for file in sorted((paths.root / folder).glob(f"[!.]*{ending}")):
            case = file.name[: -len(ending)]
            if not paths.is_done(case):
                leftovers.setdefault(case, []).append(file)
    aside = paths.staging / "incomplete"
    for file in (f for files in leftovers.values() for f in files):
        (aside / file.parent.name).mkdir(parents=True, exist_ok=True)
        os.replace(file, aside / file.parent.name / file.name)
    return sorted(leftovers)


def finalize(paths: DatasetPaths, *, description: str = "") -> dict:
    """(Re)write dataset.json, datalist.json and the manifests from the finished cases on disk (complete ones only)."""
    records = read_provenance(paths)
    set_aside = set_aside_incomplete(paths)
    if paths.staging.is_dir() and not any(paths.staging.iterdir()):
        paths.staging.rmdir()
    if not records:
        raise InputError(f"{paths.root} holds no finished cases; run lungddpm generate first")
    label_sets = sorted({r["label_set"] for r in records})
    if len(label_sets) != 1:
        raise ConfigError(f"{paths.root} mixes label sets {label_sets}; regenerate into one folder per label set")
    dataset = {
        "name": paths.root.name,
        "description": description or "SYNTHETIC chest CTs made by lungddpm (Lung-DDPM); not patient scans",
        "synthetic": True,
        "channel_names": {"0": "CT"},
        "labels": LABEL_SETS[label_sets[0]],
        "numTraining": len(records),
        "file_ending": FILE_ENDING,
        "reference": "Jiang et al., Lung-DDPM, IEEE TBME 2025 (synthesis); see manifest.jsonl for each case's provenance",
    }
    datalist = {"description": dataset["description"], "labels": {str(v): k for k, v in dataset["labels"].items()},
                "training": [{"image": r["image"], "label": r["label"], "case": r["case"], "synthetic": True} for r in records]}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    with outputs_together():
        write_text(paths.root / "dataset.json", json.dumps(dataset, indent=2) + "\n")
        write_text(paths.root / "datalist.json", json.dumps(datalist, indent=2) + "\n")
        write_text(paths.root / "manifest.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        write_text(paths.root / "manifest.csv", buffer.getvalue())
    return {"dataset": str(paths.root), "cases": len(records), "labels": dataset["labels"], "set_aside": set_aside}
