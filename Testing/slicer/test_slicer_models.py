"""The model list, model files (bundled, local, cached, downloaded with a SHA-256 check), estimates, geometry."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from slicer_testing import REPO  # also puts LungDDPMSlicerLib on sys.path
from LungDDPMSlicerLib import engine, estimates, geometry, models

MODEL_LIST = REPO / "Resources" / "models.json"
ENGINE_DIR = REPO / "engine"


@pytest.fixture()
def entries() -> dict[str, models.ModelEntry]:
    """The shipped model list by name."""
    return {e.name: e for e in models.load_model_list(MODEL_LIST)}


@pytest.fixture()
def http_folder(tmp_path: Path):
    """(folder, base URL) of an HTTP server on 127.0.0.1 serving a temporary folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *args: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_model_list_is_valid_and_complete(entries):
    """The list holds the bundled demo and both released checkpoints (Lung-DDPM+ runnable) with sizes, memory, basis."""
    demo, released, plus = entries["demo-native-32"], entries["lung-ddpm-lidc-idri"], entries["lung-ddpm-plus"]
    assert demo.source == "bundled" and demo.supported
    assert (released.source, released.input_size, released.in_channels, released.timesteps) == ("local_file", 128, 3, 250)
    assert released.file_name == "Lung-DDPM-LIDC-IDRI-100000-steps.pt" and "drive.google.com" in released.download_page
    assert (plus.file_name, plus.input_size, plus.in_channels, plus.profile) == ("best_model.pt", 64, 2, "released-patch")
    assert plus.supported and plus.unsupported_reason is None and plus.timesteps == 250
    for entry in entries.values():
        assert entry.version and entry.citation and entry.cpu_memory_gb > 0 and entry.gpu_memory_gb > 0
        assert "not measured" in entry.estimate_basis or entry.gpu_seconds_per_step is not None
        assert entry.sha256 is not None or entry.source in ("bundled", "local_file")


def test_model_list_validation_rejects_bad_entries(tmp_path, entries):
    """Missing fields, a URL without a hash, a bad hash and duplicate names are refused with the entry named."""
    raw = json.loads(MODEL_LIST.read_text())
    good = raw["models"][0]
    cases = [
        ({**good, "source": "url", "url": "http://x/y.pt"}, "needs both 'url' and 'sha256'"),
        ({k: v for k, v in good.items() if k != "input_size"}, "missing fields"),
        ({**good, "sha256": "ABC"}, "64 lower-case hex"),
        ({**good, "supported": False}, "unsupported_reason"),
        ({**good, "gpu_seconds_per_step": -1}, "gpu_seconds_per_step"),
        ({**good, "colour": "red"}, "unknown fields"),
    ]
    for entry, message in cases:
        path = tmp_path / "models.json"
        path.write_text(json.dumps({"schema_version": 1, "models": [entry]}))
        with pytest.raises(models.ModelListError, match=message):
            models.load_model_list(path)
    path.write_text(json.dumps({"schema_version": 1, "models": [good, good]}))
    with pytest.raises(models.ModelListError, match="unique names"):
        models.load_model_list(path)


def test_bundled_demo_model_resolves_once_it_exists(entries, tmp_path):
    """The bundled demo checkpoint is found in the engine package (skips while it is still being trained)."""
    demo = entries["demo-native-32"]
    path = ENGINE_DIR / "lungddpm" / "models" / demo.file_name
    if not path.is_file():
        with pytest.raises(models.ModelUnavailableError, match="bundled file"):
            models.resolve_model_file(demo, engine_dir=ENGINE_DIR, cache_dir=tmp_path)
        pytest.skip(f"{path} does not exist yet (the demo model is trained separately)")
    assert models.resolve_model_file(demo, engine_dir=ENGINE_DIR, cache_dir=tmp_path) == path


def test_download_with_good_and_bad_checksum(http_folder, tmp_path):
    """A matching SHA-256 keeps the file; a wrong one raises a clear error and leaves no file or .part behind."""
    folder, base = http_folder
    payload = b"lung-ddpm test weights " * 1000
    (folder / "weights.pt").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    target = tmp_path / "cache" / "weights.pt"
    assert models.download(f"{base}/weights.pt", target, good) == target
    assert target.read_bytes() == payload
    target.unlink()
    bad = "0" * 64
    with pytest.raises(models.ChecksumError) as error:
        models.download(f"{base}/weights.pt", target, bad)
    assert f"{base}/weights.pt" in str(error.value) and good in str(error.value) and bad in str(error.value)
    assert list(target.parent.iterdir()) == []


def test_download_failure_leaves_no_partial_file(http_folder, tmp_path):
    """A missing URL (HTTP 404) raises and leaves nothing in the cache."""
    _, base = http_folder
    target = tmp_path / "cache" / "absent.pt"
    with pytest.raises(OSError):
        models.download(f"{base}/absent.pt", target, "0" * 64)
    assert list(target.parent.iterdir()) == []


def test_download_reports_progress_and_cleans_up_when_the_server_is_down_or_cuts_off(http_folder, tmp_path):
    """Progress counts up to the size; a refused connection or a body cut short leaves nothing in the cache."""
    folder, base = http_folder
    payload = bytes(range(256)) * 10000  # 2.5 MB: several chunks
    (folder / "big.pt").write_bytes(payload)
    seen = []
    target = tmp_path / "cache" / "big.pt"
    models.download(f"{base}/big.pt", target, hashlib.sha256(payload).hexdigest(),
                    functools.partial(models.urllib_download, progress=lambda got, total: seen.append((got, total))))
    assert target.read_bytes() == payload
    assert seen[-1] == (len(payload), len(payload)) and len(seen) >= 3 and seen == sorted(seen)

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on this port: connection refused
    down = tmp_path / "down" / "x.pt"
    with pytest.raises(OSError):
        models.download(f"http://127.0.0.1:{port}/x.pt", down, "0" * 64)
    assert list(down.parent.iterdir()) == []

    cut = tmp_path / "cut" / "x.pt"
    with truncating_server(len(payload), payload[:100_000]) as url, pytest.raises(OSError):
        models.download(url, cut, hashlib.sha256(payload).hexdigest())
    assert list(cut.parent.iterdir()) == []


@contextlib.contextmanager
def truncating_server(announced: int, body: bytes):
    """The URL of a one-shot HTTP server on 127.0.0.1 that announces `announced` bytes, sends `body`, and hangs up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        """Answer one request with a short body."""
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % announced + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/x.pt"
    finally:
        thread.join(timeout=10)
        listener.close()


def test_resolve_downloads_once_then_uses_the_cache(entries, tmp_path):
    """A URL entry downloads into the cache (file:// here) and is then found there and re-verified."""
    source = tmp_path / "published.pt"
    source.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    entry = dataclasses.replace(entries["demo-native-32"], source="url", url=source.as_uri(), sha256=sha,
                                file_name="published.pt")
    cache = tmp_path / "cache"
    assert models.resolve_model_file(entry, engine_dir=ENGINE_DIR, cache_dir=cache) == cache / "published.pt"

    def no_download(url: str, target: Path) -> None:
        """A downloader that must not be called."""
        raise AssertionError("the cached file should have been used")

    assert models.resolve_model_file(entry, engine_dir=ENGINE_DIR, cache_dir=cache, downloader=no_download) == \
        cache / "published.pt"
    (cache / "published.pt").write_bytes(b"tampered")
    with pytest.raises(models.ChecksumError, match="differs from the expected"):
        models.resolve_model_file(entry, engine_dir=ENGINE_DIR, cache_dir=cache, downloader=no_download)


def test_local_file_entries_say_where_to_get_the_file(entries, tmp_path):
    """A released checkpoint: the chosen file, else the cache; if neither, the download page and cache folder."""
    released = entries["lung-ddpm-lidc-idri"]
    with pytest.raises(models.ModelUnavailableError) as error:
        models.resolve_model_file(released, engine_dir=ENGINE_DIR, cache_dir=tmp_path)
    assert released.download_page in str(error.value) and str(tmp_path) in str(error.value)
    chosen = tmp_path / "mine.pt"
    chosen.write_bytes(b"x")
    assert models.resolve_model_file(released, engine_dir=ENGINE_DIR, cache_dir=tmp_path, local_file=chosen) == chosen
    (tmp_path / released.file_name).write_bytes(b"y")
    assert models.resolve_model_file(released, engine_dir=ENGINE_DIR, cache_dir=tmp_path) == tmp_path / released.file_name
    plus = entries["lung-ddpm-plus"]
    assert models.resolve_model_file(plus, engine_dir=ENGINE_DIR, cache_dir=tmp_path, local_file=chosen) == chosen
    withdrawn = dataclasses.replace(plus, supported=False, unsupported_reason="withdrawn by its authors")
    with pytest.raises(models.ModelUnavailableError, match="withdrawn by its authors"):
        models.resolve_model_file(withdrawn, engine_dir=ENGINE_DIR, cache_dir=tmp_path, local_file=chosen)


def test_cache_folder_can_be_overridden(monkeypatch, tmp_path):
    """$LUNGDDPM_MODEL_CACHE replaces the platform cache folder."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "models"))
    assert models.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.default_cache_dir().parts[-2:] == ("lungddpm", "models")


def test_estimates_warn_with_the_alternative(entries):
    """No GPU, a too-small GPU and a long CPU run each give a warning that names what to do instead."""
    released, demo = entries["lung-ddpm-lidc-idri"], entries["demo-native-32"]
    ddpm = estimates.estimate(released, "auto", 1, [], 16.0, demo=demo, sampler="ddpm")
    assert ddpm.device == "cpu" and ddpm.seconds == pytest.approx(48.0 * 250)
    assert "3.3 h" in ddpm.summary() and "250 network passes × 48 s" in ddpm.summary()
    (long_run,) = [w for w in ddpm.warnings if "On a CPU this takes" in w]
    assert "3.3 h" in long_run and "dpmpp2m sampler with 3 steps (about 2 min)" in long_run and demo.title in long_run
    small = estimates.estimate(released, "cuda", 1, [estimates.Gpu("T400", 2.0)], 16.0, demo=demo)
    assert small.device == "cuda" and small.seconds is None and "not measured" in small.summary()
    assert any("T400 has 2 GB" in w and "'cpu' (about 2 min)" in w for w in small.warnings)
    missing = estimates.estimate(demo, "cuda", 1, [], 16.0, demo=demo)
    assert any("No CUDA GPU" in w for w in missing.warnings)
    mac = estimates.estimate(demo, "auto", 1, [], 16.0, demo=demo, apple_gpu=True)
    assert any("Apple GPU (MPS)" in w for w in mac.warnings) and not any("runs on the CPU." in w for w in mac.warnings)
    assert any("runs on the CPU." in w for w in estimates.estimate(demo, "auto", 1, [], 16.0, demo=demo).warnings)
    assert estimates.apple_gpu_likely("Darwin", "arm64") and not estimates.apple_gpu_likely("Darwin", "x86_64")
    assert not estimates.apple_gpu_likely("Linux", "arm64")
    tight = estimates.estimate(released, "cpu", 1, [], 4.0, demo=demo)
    assert any("4 GB of RAM" in w for w in tight.warnings)
    assert estimates.estimate(demo, "cpu", 2, [], 16.0, demo=demo, sampler="ddpm").seconds == pytest.approx(0.5 * 250 * 2)
    assert estimates.parse_nvidia_smi("NVIDIA H200, 143771\nbad line\nTesla T4, 15360\n") == \
        [estimates.Gpu("NVIDIA H200", 143771 / 1024), estimates.Gpu("Tesla T4", 15.0)]
    assert [estimates.format_duration(s) for s in (40, 600, 14000)] == ["40 s", "10 min", "3.9 h"]


def test_estimates_for_solvers_ddpm_and_patch_models(entries):
    """Passes are T for ddpm and `steps` (default 3, at most T) for solvers; patch models pay per cube or batch."""
    released, plus, demo = entries["lung-ddpm-lidc-idri"], entries["lung-ddpm-plus"], entries["demo-native-32"]
    default = estimates.estimate(released, "cpu", 1, [], 64.0, demo=demo)  # the panel's default: dpmpp2m, 3 steps
    assert default.seconds == pytest.approx(144.0) and default.warnings == []
    assert default.summary() == "CPU: about 2 min (3 network passes × 48 s), peak RAM about 6.5 GB"
    for sampler in ("dpmpp3m", "ddim"):
        assert estimates.estimate(released, "cpu", 3, [], 64.0, sampler=sampler, steps=25).seconds == \
            pytest.approx(48.0 * 25 * 3)
    assert estimates.estimate(demo, "cpu", 1, [], 64.0, sampler="ddpm", steps=7).seconds == pytest.approx(0.5 * 250)
    assert estimates.estimate(demo, "cpu", 1, [], 64.0, steps=900).seconds == pytest.approx(0.5 * 250)  # at most T
    # Lung-DDPM+ on a CPU: a batch of k cubes costs k passes, so 6 nodules cost 6 passes per step.
    cpu = estimates.estimate(plus, "cpu", 2, [], 64.0, nodules=6)
    assert cpu.seconds == pytest.approx(7.8 * 3 * 6 * 2)
    assert "3 network passes × 6 cube(s) × 7.8 s, × 2 variants" in cpu.summary()
    assert estimates.estimate(plus, "cpu", 1, [], 64.0, nodules=0).seconds == pytest.approx(7.8 * 3)  # unknown: 1
    assert estimates.estimate(plus, "cpu", 1, [], 64.0, sampler="ddpm", nodules=1).seconds == pytest.approx(7.8 * 250)
    # On a GPU a batch of up to 4 cubes counts as one pass: 6 nodules are 2 batches; unmeasured time stays unknown.
    h200 = [estimates.Gpu("NVIDIA H200", 140.0)]
    gpu = estimates.estimate(plus, "auto", 1, h200, 64.0, nodules=6)
    assert gpu.seconds is None and "3 network passes × 2 batch(es) of up to 4 cubes" in gpu.summary()
    timed = dataclasses.replace(plus, gpu_seconds_per_step=0.5)
    assert estimates.estimate(timed, "auto", 1, h200, 64.0, nodules=6).seconds == pytest.approx(0.5 * 3 * 2)
    assert estimates.estimate(timed, "auto", 1, h200, 64.0, nodules=4).seconds == pytest.approx(0.5 * 3 * 1)
    assert [estimates.cube_batches(n) for n in (0, 1, 4, 5, 8, 9)] == [1, 1, 1, 2, 2, 3]


def test_panel_rules_for_samplers_precisions_and_patch_models(entries):
    """Steps only for solvers (1..T), AAS variant only for ddpm, patch spacing for patch models, fp16 only with CUDA."""
    from LungDDPMSlicerLib import panel

    released, plus = entries["lung-ddpm-lidc-idri"], entries["lung-ddpm-plus"]
    assert panel.widget_states("dpmpp2m", released) == panel.WidgetStates(True, 250, False, False)
    assert panel.widget_states("ddpm", released) == panel.WidgetStates(False, 250, True, False)
    assert panel.widget_states("ddim", plus).patch_spacing_enabled
    assert panel.widget_states("dpmpp3m", None) == panel.WidgetStates(True, panel.UNKNOWN_MAX_STEPS, False, True)
    assert panel.sampling_options("dpmpp2m", 12, "released", "bf16", 0.0) == \
        panel.SamplingOptions("dpmpp2m", 12, "paper", "bf16", None)
    assert panel.sampling_options("ddpm", 12, "released", "fp32", 1.5) == \
        panel.SamplingOptions("ddpm", None, "released", "fp32", 1.5)
    assert panel.offered_precisions(False) == ("auto", "fp32", "bf16") and panel.offered_precisions(True)[-1] == "fp16"
    assert "CUDA GPU" in panel.precision_problem("fp16", "cpu", True)
    assert "CUDA GPU" in panel.precision_problem("fp16", "auto", False)
    assert panel.precision_problem("fp16", "cuda", True) == panel.precision_problem("bf16", "cpu", False) == ""
    assert set(panel.SAMPLER_TIPS) == set(engine.SAMPLERS) and set(panel.PRECISION_TIPS) == set(engine.PRECISIONS)


def test_mirrored_engine_constants_agree_with_the_engine():
    """The module's copies of the engine's samplers, defaults, precisions and cube batch equal the engine's own."""
    from lungddpm.cli import build_parser
    from lungddpm.model import config, fastpath
    from lungddpm.runtime import precision
    from lungddpm.sampling import options

    assert set(engine.SAMPLERS) == set(options.SAMPLERS) and engine.SAMPLERS[0] == options.DEFAULT_SAMPLER
    assert (engine.DEFAULT_SAMPLER, engine.DEFAULT_SOLVER_STEPS) == (options.DEFAULT_SAMPLER, options.DEFAULT_SOLVER_STEPS)
    assert engine.PRECISIONS == precision.PRECISION_CHOICES and engine.DEFAULT_PRECISION == precision.AUTO
    assert build_parser().parse_args(["synthesize", "--reference", "r", "--layout", "l", "--model", "m", "--output", "o"]).precision == \
        engine.DEFAULT_PRECISION  # the panel's default is the command line's
    assert estimates.PATCH_BATCH == fastpath.MAX_BATCH  # the cubes per pass where memory allows (fastpath.auto_batch)
    assert estimates.PATCH_PROFILES == config.PATCH_PROFILES
    assert config.released_lung_ddpm_plus().profile in config.PATCH_PROFILES


def test_geometry_round_trip_and_sheared_matrices():
    """IJK-to-RAS <-> LPS geometry round-trips for a flipped, permuted, anisotropic grid; shear is refused."""
    matrix = np.array([[0.0, 0.0, -2.5, 10.0], [0.0, -0.7, 0.0, 20.0], [0.7, 0.0, 0.0, -5.0], [0, 0, 0, 1]])
    lps = geometry.lps_geometry_from_ijk_to_ras(matrix)
    np.testing.assert_allclose(lps.origin, (-10.0, -20.0, -5.0))
    np.testing.assert_allclose(lps.spacing, (0.7, 0.7, 2.5))
    np.testing.assert_allclose(np.array(lps.direction).reshape(3, 3), [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=0)
    np.testing.assert_allclose(geometry.ijk_to_ras_from_lps_geometry(lps), matrix, atol=1e-15)
    sheared = matrix.copy()
    sheared[0, 1] = 0.3
    with pytest.raises(geometry.GeometryError, match="not orthogonal"):
        geometry.lps_geometry_from_ijk_to_ras(sheared)
    assert geometry.same_matrix(matrix, matrix + 1e-6) and not geometry.same_matrix(matrix, matrix + 0.01)
