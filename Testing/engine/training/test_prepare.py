"""`lungddpm prepare`: LIDC consensus against hand-computed masks, VOC boxes of the real CT, phantoms, skip reasons."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import copy_series, lidc_message, lidc_roi, lidc_session, lidc_square
from lungddpm.layout.annotations import SliceMap, lidc_mask, polygon_pixels, read_dicom_headers, voc_mask
from lungddpm.cli import main
from lungddpm.demo.phantom import make_phantom
from lungddpm.training.prepare import prepare_dataset, split_patients
from lungddpm.io.volume import Volume, read_volume, write_volume
from lungddpm.layout.sidecar import NoduleRecord, write_sidecar


def test_polygon_pixels_fill_outline_and_inside():
    square = polygon_pixels(np.array([[2, 2], [5, 2], [5, 5], [2, 5]]))
    assert sorted(map(tuple, square)) == [(x, y) for x in range(2, 6) for y in range(2, 6)]
    triangle = {tuple(p) for p in polygon_pixels(np.array([[0, 0], [4, 0], [0, 4]]))}
    assert triangle == {(x, y) for x in range(5) for y in range(5) if x + y <= 4}


def test_lidc_consensus_matches_hand_computed_mask(tmp_path):
    # CT of 8 slices 20 x 20, z = -10 + 2.5 k; three readers outline one nodule on z = -5 (k = 2)
    ct = Volume(np.zeros((8, 20, 20), np.int16), origin=(0.0, 0.0, -10.0), spacing=(1.0, 1.0, 2.5))
    a = lidc_roi(-5.0, lidc_square(2, 2, 6, 6)) + lidc_roi(-5.0, lidc_square(5, 5, 6, 6), "FALSE")  # reader A, a hole
    b = lidc_roi(-5.0, lidc_square(4, 4, 8, 8)) + lidc_roi(-2.5, lidc_square(4, 4, 8, 8))  # reader B, two slices
    c = lidc_roi(-5.0, lidc_square(4, 2, 8, 6))
    far = lidc_roi(2.5, lidc_square(15, 15, 17, 17)) + lidc_roi(100.0, lidc_square(1, 1, 3, 3))  # only C; z = 100 is off the CT
    xml = lidc_message(lidc_session(a), lidc_session(b), lidc_session(c, far))
    (tmp_path / "069.xml").write_text(xml)
    mask = lidc_mask([tmp_path / "069.xml"], SliceMap(ct))

    def box(k, x0, y0, x1, y1):
        m = np.zeros(ct.array.shape, bool)
        m[k, y0:y1 + 1, x0:x1 + 1] = True
        return m

    reader_a = box(2, 2, 2, 6, 6) & ~box(2, 5, 5, 6, 6)
    reader_b = box(2, 4, 4, 8, 8) | box(3, 4, 4, 8, 8)
    reader_c = box(2, 4, 2, 8, 6)
    votes = reader_a.astype(int) + reader_b + reader_c
    expected = (votes >= 2) | box(5, 15, 15, 17, 17)  # 3 readers: >= 1.5 votes; the far nodule has 1 reader
    assert mask.sum() == expected.sum() and np.array_equal(mask, expected)
    assert mask[3].sum() == 0  # B alone on slice k = 3: 1 of 3 readers


def test_voc_boxes_of_the_real_ct_cover_the_tumour(real_ct_dir):
    ct = read_volume(real_ct_dir / "ct.nii.gz")
    crude = read_volume(real_ct_dir / "layout-crude.nii.gz").array == 2
    mask = voc_mask(real_ct_dir / "annotation", SliceMap(ct, read_dicom_headers(real_ct_dir / "dicom")))
    assert np.unique(np.nonzero(mask)[0]).tolist() == list(range(41, 52))  # the 11 boxes on this series
    assert (mask & crude).sum() == crude.sum()  # the crude layout's tumour = ellipses ∩ HU > −300
    assert crude.sum() < mask.sum() < 1.5 * crude.sum()
    assert voc_mask(real_ct_dir / "annotation", SliceMap(ct)).sum() == 0  # without headers UIDs cannot be placed


def test_prepare_real_ct_with_tumour_boxes(real_ct_dir, tmp_path):
    out = tmp_path / "prepared"
    assert main(["prepare", "--input", str(real_ct_dir), "--output", str(out), "--size", "16"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (case,) = manifest["cases"]
    assert manifest["space"] == {"profile": "native", "size": 16, "cond_channels": 2}
    assert case["patient_id"] == "Lung_Dx-A0001" and case["annotation"] == "voc-boxes" and case["split"] == "train"
    assert case["nodule_count"] == 1 and 55 < case["nodule_diameters_mm"][0] < 75  # a ~6 cm tumour
    assert case["spacing_mm"] == [0.8418, 0.8418, 5.0] and 3.0 < case["lung_volume_l"] < 8.0
    x, cond = np.load(out / case["folder"] / "x.npy"), np.load(out / case["folder"] / "cond.npy")
    assert x.shape == (1, 16, 16, 16) and cond.shape == (2, 16, 16, 16)
    assert -1 <= x.min() < x.max() <= 1 and (cond[1] > 0).sum() > 0 and (cond[0] > 0).sum() > (cond[1] > 0).sum()
    assert read_volume(out / case["folder"] / "layout.nii.gz").array.max() == 2
    assert json.loads((out / "skipped.json").read_text()) == []
    assert (out / "manifest.csv").read_text().splitlines()[1].startswith("lung-pet-ct-dx-A0001,Lung_Dx-A0001,train,")


def test_missing_slices_are_skipped(real_ct_dir, tmp_path):
    case = tmp_path / "cases" / "gap"
    shutil.copytree(real_ct_dir / "dicom", case / "dicom")
    files = sorted((case / "dicom").iterdir())
    headers = read_dicom_headers(case / "dicom")
    middle = sorted(headers.slices.items(), key=lambda kv: kv[1].position[2])[30][0]
    for f in files:  # remove the slice in the middle of the series
        if middle.encode() in f.read_bytes():
            f.unlink()
    summary = prepare_dataset([tmp_path / "cases"], tmp_path / "out", size=16)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert summary["prepared"] == 0 and skipped[0]["case_id"] == "gap"
    assert skipped[0]["reason"].startswith("missing slices: slice gaps range 5.00..10.00 mm")


def test_truncated_or_duplicated_slice_files_are_skipped(real_ct_dir, tmp_path):
    # the same series check as read_volume (lungddpm.io.integrity): its problem text is the skip reason
    cut, twice = (copy_series(real_ct_dir, tmp_path / "cases" / case / "dicom") for case in ("cut", "twice"))
    (cut / "1-31.dcm").write_bytes((cut / "1-31.dcm").read_bytes()[:200_000])
    shutil.copyfile(twice / "1-31.dcm", twice / "1-31b.dcm")
    assert prepare_dataset([tmp_path / "cases"], tmp_path / "out", size=16)["prepared"] == 0
    reasons = {s["case_id"]: s["reason"] for s in json.loads((tmp_path / "out" / "skipped.json").read_text())}
    assert reasons["cut"] == "unreadable slice file 1-31.dcm (truncated or damaged)"
    assert reasons["twice"].startswith("duplicated slices: slice 33 (1-31")


def _phantom_case(folder, seed, boost_hu=0):
    ph = make_phantom(seed=seed, nodules=1)
    ct = ph.ct.array.copy()
    if boost_hu:
        ct[(ct > 20) & (ct < 100)] += boost_hu  # soft tissue and blood brighter, as after contrast injection
    folder.mkdir(parents=True)
    write_volume(ph.ct.with_array(ct), folder / "ct.nrrd")
    write_volume(ph.layout.with_array((ph.layout.array == 2).astype(np.uint8)), folder / "nodules.nrrd")
    return ph


def test_prepare_phantoms_split_and_skip_reasons(tmp_path):
    phantoms = {f"ph{n}": _phantom_case(tmp_path / "in" / f"ph{n}", n) for n in range(4)}
    _phantom_case(tmp_path / "in" / "contrast", 9, boost_hu=250)
    (tmp_path / "in" / "broken").mkdir()
    (tmp_path / "in" / "broken" / "ct.nrrd").write_bytes(b"NRRD0004\ngarbage")
    summary = prepare_dataset([tmp_path / "in"], tmp_path / "out", size=16, val_fraction=0.25, seed=3)
    assert summary["prepared"] == 4 and summary["skipped"] == 2
    reasons = {s["case_id"]: s["reason"] for s in json.loads((tmp_path / "out" / "skipped.json").read_text())}
    assert reasons["contrast"].startswith("contrast-enhanced: median soft tissue between the lungs is")
    assert reasons["broken"].startswith("unreadable:")
    cases = json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"]
    assert [c["split"] for c in cases].count("validation") == 1
    for c in cases:  # nodule sizes: equivalent-sphere diameters of the phantom's nodule label
        truth = (phantoms[c["case_id"]].layout.array == 2).sum() * np.prod(phantoms[c["case_id"]].layout.spacing)
        assert c["nodule_count"] == 1 and c["nodule_diameters_mm"][0] == pytest.approx((6 * truth / np.pi) ** (1 / 3), abs=0.01)
    again = prepare_dataset([tmp_path / "in"], tmp_path / "out2", size=16, val_fraction=0.25, seed=3)
    assert again["prepared"] == 4
    assert json.loads((tmp_path / "out2" / "manifest.json").read_text())["cases"] == cases  # same seed, same split


def test_split_is_by_patient_and_seeded():
    patients = ["p1", "p1", "p2", "p3", "p3", "p4", "p5"]
    val = split_patients(patients, 0.4, seed=1)
    assert len(val) == 2 and val <= set(patients)
    assert split_patients(patients, 0.4, seed=1) == val
    assert any(split_patients(patients, 0.4, seed=s) != val for s in range(2, 10))
    assert split_patients(["only"], 0.5, seed=0) == set()  # one patient: it trains


def test_prepare_writes_each_nodules_characteristics(tmp_path):
    # an LIDC case: three readers outline the phantom nodule's bounding square on each of its slices and rate it
    ph = make_phantom(seed=0, nodules=1)
    write_volume(ph.ct, tmp_path / "in" / "lidc" / "ct.nrrd")
    _phantom_case(tmp_path / "in" / "mask", 1)
    nodule = ph.layout.array == 2
    rois, boxed = "", np.zeros_like(nodule)
    for k in np.unique(np.nonzero(nodule)[0]):
        j, i = np.nonzero(nodule[k])
        rois += lidc_roi(ph.ct.origin[2] + k * ph.ct.spacing[2], lidc_square(i.min(), j.min(), i.max(), j.max()))
        boxed[k, j.min():j.max() + 1, i.min():i.max() + 1] = True
    tags = ("texture", "spiculation", "malignancy", "calcification")
    codes = {"A": (3, 5, 4, 6), "B": (3, 4, 5, 6), "C": (2, 5, 5, 3)}
    sessions = [lidc_session((rois, dict(zip(tags, c)))) for c in codes.values()]
    (tmp_path / "in" / "lidc" / "reading.xml").write_text(lidc_message(*sessions))
    prepare_dataset([tmp_path / "in"], tmp_path / "out", size=16, val_fraction=0.0)
    cases = {c["case_id"]: c for c in json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"]}
    # by hand: texture (3+3+2)/3, spiculation (5+4+5)/3, malignancy (5+4+5)/3 -> 2.67, 4.67, 4.67; calcification
    # 6 twice; diameter and centre of the boxed voxels (identity direction: LPS = origin + spacing · (i, j, k))
    k, j, i = np.nonzero(boxed)
    centre = np.asarray(ph.ct.origin) + np.asarray(ph.ct.spacing) * [i.mean(), j.mean(), k.mean()]
    diameter = round((6 * boxed.sum() * np.prod(ph.ct.spacing) / np.pi) ** (1 / 3), 2)
    (lidc,) = cases["lidc"]["nodules"]
    assert lidc["component"] == 1 and lidc["center_lps_mm"] == pytest.approx(centre.tolist(), abs=1e-3)
    assert lidc["attributes"] == {"texture": 2.67, "spiculation": 4.67, "malignancy": 4.67, "calcification": 6,
                                  "readers": 3, "diameter_mm": diameter}
    assert cases["lidc"]["nodule_diameters_mm"] == [diameter]
    (masked,) = cases["mask"]["nodules"]  # a mask says where and how large, nothing more
    assert masked["attributes"] == {"diameter_mm": cases["mask"]["nodule_diameters_mm"][0]}
    rows = {r.split(",")[0]: r for r in (tmp_path / "out" / "nodules.csv").read_text().splitlines()}
    assert rows["case_id"].startswith("case_id,split,folder,component,center_lps_mm,diameter_mm,readers,subtlety,")
    assert rows["lidc"].endswith(f",{diameter},3,,,6,,,,4.67,2.67,4.67,"
                                 f"\"{diameter:g} mm nodule with no calcification, rated spiculation 4.67, "
                                 f"texture 2.67, malignancy 4.67 (mean of 3 readers)\"")
    assert (tmp_path / "out" / "manifest.csv").read_text().splitlines()[0].endswith("lung_volume_l,source")

    prepare_dataset([tmp_path / "in" / "lidc"], tmp_path / "cubes", profile="released-patch", size=16)
    (cube,) = json.loads((tmp_path / "cubes" / "manifest.json").read_text())["cases"]
    assert cube["nodules"] == [lidc]


def test_prepare_reads_the_attributes_of_a_masks_sidecar(tmp_path):
    ph = make_phantom(seed=2, nodules=2, nodule_attributes=True)
    for name in ("described", "moved"):
        write_volume(ph.ct, tmp_path / "in" / name / "ct.nrrd")
        write_volume(ph.layout.with_array((ph.layout.array == 2).astype(np.uint8)), tmp_path / "in" / name / "nodules.nrrd")
    records = ph.nodule_records()
    write_sidecar(tmp_path / "in" / "described" / "nodules.nrrd", records)
    write_sidecar(tmp_path / "in" / "moved" / "nodules.nrrd", [NoduleRecord(1, (0.0, 0.0, 0.0), records[0].attributes)])
    prepare_dataset([tmp_path / "in"], tmp_path / "out", size=16, val_fraction=0.0)
    (case,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"]
    assert case["nodules"] == [r.to_dict() for r in records]
    by_centre = {tuple(n["center_lps_mm"]): n["attributes"] for n in ph.nodules}
    for record in records:  # the phantom's drawn values (diameter: the mask's)
        drawn = min(by_centre, key=lambda c: np.linalg.norm(np.subtract(c, record.center_lps_mm)))
        assert {**by_centre[drawn].to_dict(), "diameter_mm": record.attributes.diameter_mm} == record.attributes.to_dict()
    (skipped,) = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert skipped["case_id"] == "moved" and skipped["reason"].startswith("invalid nodule sidecar: nodule record 1 ")
