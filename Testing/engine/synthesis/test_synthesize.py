"""synthesize(): any orientation and spacing in, a CT in HU on the same grid out; outside the lungs untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import random_model
from lungddpm import ConfigError
from lungddpm.sampling.options import DEFAULT_SOLVER_STEPS
from lungddpm.layout.labels import NODULE
from lungddpm.layout.nodules import add_nodule
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.model.fastpath import (ACTIVATION_BYTES, MAX_BATCH, MEMORY_SHARE, auto_batch, available_bytes,
                                     sample_bytes)
from lungddpm.synthesis.synthesize import Variant, synthesize, synthesize_variants, write_result
from lungddpm.io.volume import index_to_physical, read_volume, same_grid
from test_profiles import OBLIQUE, RAS

LPS = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
NODULE_CENTRE_LPS = (-70.0, 10.0, 20.0)  # inside the phantom's right lung


@pytest.fixture(scope="module")
def native_model():
    return random_model(seed=4, profile="native")


@pytest.fixture(scope="module")
def released_model():
    return random_model(seed=5, profile="released")


def _case(direction, spacing=(1.4, 1.4, 5.0), size=(240, 240, 64)):
    ph = make_phantom(phantom_grid(size, spacing, direction=direction), seed=1)
    return ph.ct, add_nodule(ph.layout, NODULE_CENTRE_LPS, 14.0)


@pytest.mark.parametrize("direction", [LPS, RAS, OBLIQUE], ids=["LPS", "RAS", "oblique"])
def test_output_on_reference_grid_outside_unchanged_nodule_where_asked(direction, native_model):
    ct, layout = _case(direction)
    before = ct.array.copy(), layout.array.copy()
    result = synthesize(ct, layout, native_model, seed=0, device="cpu")
    out = result.image
    assert same_grid(out, ct) and out.array.shape == ct.array.shape and out.array.dtype == ct.array.dtype
    region = layout.array > 0
    assert np.array_equal(out.array[~region], ct.array[~region])
    assert not np.array_equal(out.array[region], ct.array[region])
    assert np.array_equal(result.labels.array, layout.array) and same_grid(result.labels, ct)
    centroid = index_to_physical(ct, np.argwhere(result.labels.array == NODULE)[:, ::-1].astype(float)).mean(0)
    assert np.linalg.norm(centroid - np.array(NODULE_CENTRE_LPS)) <= max(ct.spacing)  # within one voxel
    assert np.array_equal(ct.array, before[0]) and np.array_equal(layout.array, before[1])  # inputs untouched
    md = result.metadata
    assert md["SYNTHETIC"] == "true" and md["seed"] == "0" and md["device"] == "cpu" and md["profile"] == "native"


def test_same_seed_same_output_other_seed_differs(native_model):
    ct, layout = _case(LPS, spacing=(2.8, 2.8, 5.0), size=(128, 128, 64))
    a = synthesize(ct, layout, native_model, seed=11, device="cpu").image.array
    b = synthesize(ct, layout, native_model, seed=11, device="cpu").image.array
    c = synthesize(ct, layout, native_model, seed=12, device="cpu").image.array
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("source", ["dicom", "ct.nii.gz"])
def test_real_ct_from_dicom_and_nifti(source, shared_dir, released_model, tmp_path):
    data = shared_dir / "data" / "lung-pet-ct-dx-A0001"
    ct = read_volume(data / source)
    layout = read_volume(data / "layout-crude.nii.gz")
    progress = []
    result = synthesize(ct, layout, released_model, seed=0, device="cpu", progress=lambda i, n: progress.append(i))
    steps = min(DEFAULT_SOLVER_STEPS, released_model.config.timesteps)  # the default sampler's passes
    assert progress == list(range(0, steps + 1)) and result.metadata["steps"] == str(steps)
    assert same_grid(result.image, ct, tol=1e-3) and result.image.array.dtype == np.int16
    region = layout.array > 0
    assert np.array_equal(result.image.array[~region], ct.array[~region])
    image_path, labels_path = write_result(result, tmp_path / "out.nii.gz", protect=(data,))
    back = read_volume(image_path)
    assert same_grid(back, ct, tol=1e-3) and np.array_equal(back.array, result.image.array)
    assert labels_path.name == "out_labels.nii.gz" and np.array_equal(read_volume(labels_path).array, layout.array)


def test_write_result_marks_the_file_synthetic(native_model, tmp_path):
    import SimpleITK as sitk

    ct, layout = _case(LPS, spacing=(2.8, 2.8, 5.0), size=(128, 128, 64))
    result = synthesize(ct, layout, native_model, seed=0, device="cpu")
    image_path, _ = write_result(result, tmp_path / "syn.nrrd")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("SYNTHETIC") == "true" and "not a patient scan" in reader.GetMetaData("descrip")


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m", "dpmpp3m"])
def test_fast_samplers_in_physical_space(sampler, native_model):
    ct, layout = _case(OBLIQUE, spacing=(2.8, 2.8, 5.0), size=(128, 128, 64))
    calls = []
    result = synthesize(ct, layout, native_model, seed=0, device="cpu", sampler=sampler, steps=4, progress=lambda i, n: calls.append((i, n)))
    region = layout.array > 0
    assert same_grid(result.image, ct) and np.array_equal(result.image.array[~region], ct.array[~region])
    assert calls == [(i, 4) for i in range(5)]
    assert result.metadata["sampler"] == sampler and result.metadata["steps"] == "4"
    with pytest.raises(ConfigError, match="variant"):
        synthesize(ct, layout, native_model, sampler=sampler, steps=4, variant="released")


def test_unknown_sampler_and_wrong_steps(native_model):
    ct, layout = _case(LPS, spacing=(2.8, 2.8, 5.0), size=(128, 128, 64))
    with pytest.raises(ConfigError, match="sampler"):
        synthesize(ct, layout, native_model, sampler="euler")
    with pytest.raises(ConfigError, match="steps"):
        synthesize(ct, layout, native_model, sampler="ddpm", steps=3)
    with pytest.raises(ConfigError, match="steps must lie"):
        synthesize(ct, layout, native_model, steps=9)  # more solver steps than the model's T = 8


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_variants_of_one_reference_in_one_network_pass(native_model, precision):
    """synthesize_variants: each variant its own layout and seed; batched in fp32 within 1 HU of alone, bf16 within its
    tolerance (batch-size-dependent kernels; see Testing/engine/generation/test_generate.py); progress over all passes."""
    ct, layout = _case(LPS, spacing=(2.8, 2.8, 5.0), size=(128, 128, 64))
    variants = [Variant(layout, 11), Variant(add_nodule(layout, (60.0, 0.0, 30.0), 14.0), 12), Variant(layout, 13)]
    alone = [synthesize(ct, v.layout, native_model, seed=v.seed, device="cpu", precision=precision) for v in variants]
    calls = []
    together = synthesize_variants(ct, variants, native_model, device="cpu", precision=precision, batch=2,
                                   progress=lambda step, total: calls.append((step, total)))
    assert calls == [(i, 2 * DEFAULT_SOLVER_STEPS) for i in range(2 * DEFAULT_SOLVER_STEPS + 1)]  # 2 passes of 2, 1
    for v, a, b in zip(variants, alone, together):
        assert np.array_equal(a.labels.array, b.labels.array) and np.array_equal(b.labels.array, v.layout.array)
        assert (a.metadata["batch"], a.metadata["batch_rule"], b.metadata["batch"], b.metadata["batch_rule"]) == \
            ("1", "auto", "2", "given") and b.metadata["batch_cases"] == "3"
        assert {k: x for k, x in a.metadata.items() if not k.startswith(("batch", "sampling"))} == \
            {k: x for k, x in b.metadata.items() if not k.startswith(("batch", "sampling"))}
        region = v.layout.array > 0
        d = np.abs(a.image.array.astype(float) - b.image.array.astype(float))
        assert np.array_equal(a.image.array[~region], b.image.array[~region])  # the reference, voxel for voxel
        if precision == "fp32":
            assert d.max() <= 1.0
        else:
            assert d[region].mean() <= 2.0 and np.percentile(d[region], 99) <= 20.0
    assert not np.array_equal(together[0].image.array, together[2].image.array)  # same layout, other seed
    with pytest.raises(ConfigError, match="at least 1"):
        synthesize_variants(ct, variants, native_model, batch=0)


def test_auto_batch_takes_what_fits_in_half_the_free_memory():
    """The rule: min(samples, MAX_BATCH, MEMORY_SHARE × free / sample_bytes), at least 1; guided passes count twice."""
    config = random_model().config
    one = sample_bytes(config)
    assert one == ACTIVATION_BYTES * config.num_channels * config.image_size**3 and sample_bytes(config, True) == 2 * one
    cpu = torch.device("cpu")
    assert auto_batch(config, cpu, 10, available=int(100 * one)) == MAX_BATCH
    assert auto_batch(config, cpu, 2, available=int(100 * one)) == 2
    assert auto_batch(config, cpu, 10, available=int(3 / MEMORY_SHARE * one)) == 3
    assert auto_batch(config, cpu, 10, guided=True, available=int(3 / MEMORY_SHARE * one)) == 1
    assert auto_batch(config, cpu, 10, available=0) == 1  # never less than one sample
    free = available_bytes(cpu)
    assert free is None or free > 0


def test_guidance_doubles_the_passes_only_for_an_attribute_model_away_from_w_1():
    from helpers import small_config
    from lungddpm.synthesis.synthesize import is_guided

    described = small_config(attributes=("texture",), guidance_scale=3.0)
    assert is_guided(described, None) and is_guided(described, 2.0) and is_guided(described, 0.0)
    assert not is_guided(described, 1.0) and not is_guided(small_config(attributes=("texture",), guidance_scale=1.0), None)
    assert not is_guided(small_config(), 3.0)


def test_patch_profile_options_are_taken_or_refused():
    from helpers import small_config
    from lungddpm.synthesis.synthesize import profile_for

    patch = small_config(profile="native-patch", in_channels=2, patch_spacing_mm=1.5)
    assert profile_for(patch).patch_spacing_mm == 1.5 and profile_for(patch, patch_spacing_mm=0.5).patch_spacing_mm == 0.5
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="must be a positive voxel size in mm"):
            profile_for(patch, patch_spacing_mm=bad)
    with pytest.raises(ConfigError, match="does not apply to a Lung-DDPM\\+ patch model"):
        profile_for(patch, blend_margin_mm=2.0)


def test_every_variant_s_request_is_checked_before_any_work():
    ph = make_phantom(phantom_grid(size=(48, 48, 32), spacing=(6.0, 6.0, 8.0)), seed=0, nodules=1)
    model = random_model(attributes=("texture",), in_channels=2, profile="released-patch")
    from lungddpm.errors import InputError
    from lungddpm.layout.attributes import NoduleAttributes

    variants = [Variant(ph.layout, 0, NoduleAttributes(texture=1)), Variant(ph.layout, 1, NoduleAttributes(margin=2))]
    with pytest.raises(InputError, match="leave out margin from --nodule/--prompt"):
        synthesize_variants(ph.ct, variants, model, sampler="ddim", steps=1, device="cpu")
