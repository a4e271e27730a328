"""The module's server client and remote job, headless, against a real `lungddpm serve` on 127.0.0.1."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from serving import start_server
from slicer_testing import MODULE_DIR, poll_until_running, require_slicer_core

require_slicer_core(module_level=True)
try:
    from test_slicer_mrml import assert_unchanged, case, scene_case, snapshot  # noqa: F401  (its fixtures)
except ImportError:  # slicer-core's `slicer` package imports every module of this folder (slicer/), this one too,
    pass  # while test_slicer_mrml is half imported; pytest's own import of this file comes after and succeeds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


def _unfinished(server) -> list[str]:
    """The server's jobs that are queued or running, read from its job records."""
    records = (json.loads(p.read_text()) for p in (server.work_dir / "jobs").glob("*/job.json"))
    return [r["id"] for r in records if r["state"] in ("queued", "running")]


def _remote(server, token=None):
    from LungDDPMSlicerLib import remote

    return remote.Server(server.url, token or server.token, timeout_s=60)


def test_connection_models_and_the_servers_refusals(server):
    from LungDDPMSlicerLib import remote

    line = remote.test_connection(_remote(server))
    assert line.startswith("lungddpm ") and " on cpu, 2 model(s): demo, demo-nodules" in line
    assert [m["name"] for m in remote.list_models(_remote(server))] == ["demo", "demo-nodules"]
    with pytest.raises(remote.RemoteError, match="check the token") as refused:
        remote.test_connection(_remote(server, token="not-the-token-of-this-server"))
    assert refused.value.status == 401
    with pytest.raises(remote.RemoteError, match="cannot be reached"):
        remote.health(remote.Server("http://127.0.0.1:9", "x" * 20, timeout_s=5))
    with pytest.raises(ValueError, match="must look like http://127.0.0.1:8890"):
        remote.connect("ftp://host/", server.token)
    with pytest.raises(ValueError, match="needs its token"):
        remote.connect(server.url, "  ")
    assert remote.connect(f" {server.url} ", f"{server.token}\n") == remote.Server(server.url, server.token)


def test_a_server_run_is_imported_exactly_as_a_local_run(mrml_context, scene_case, server, tmp_path):  # noqa: F811
    from lungddpm.demo.demo import DEMO_MODEL
    from LungDDPMSlicerLib import engine, jobs, mrml, remote_jobs

    before = snapshot(mrml_context, scene_case)
    request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                    [scene_case["nodule_id"]], DEMO_MODEL, seeds=[7], device="cpu", sampler="ddim",
                                    steps=2)
    local = jobs.run_to_end(jobs.SynthesisJob(mrml_context, request, engine_dir=engine.find_engine_dir(MODULE_DIR),
                                              work_dir=tmp_path / "local", log=lambda line: None))[0]
    job = remote_jobs.RemoteSynthesisJob(mrml_context, request, server=_remote(server), model="demo",
                                         work_dir=tmp_path / "remote", log=lambda line: None)
    (output,) = jobs.run_to_end(job, poll_s=0.05)
    assert (job.step, job.total) == (2, 2)
    assert output.volume_node.GetName() == local.volume_node.GetName() == "A0001 CT synthetic (seed 7)"
    np.testing.assert_array_equal(mrml.volume_array(output.volume_node), mrml.volume_array(local.volume_node))
    assert np.array_equal(mrml.ijk_to_ras(output.volume_node), mrml.ijk_to_ras(local.volume_node))
    ours, theirs = mrml.provenance(output.volume_node), mrml.provenance(local.volume_node)
    differ = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    assert differ <= {"reference", "layout", "sampling_seconds", "model"}  # file names and the time differ
    assert ours["model_sha256"] == theirs["model_sha256"] and ours["SYNTHETIC"] == "true"
    remote_segments = mrml.segment_mask(mrml_context, output.segmentation_node,
                                        output.segmentation_node.GetSegmentation().GetNthSegmentID(0), scene_case["ct"])
    local_segments = mrml.segment_mask(mrml_context, local.segmentation_node,
                                       local.segmentation_node.GetSegmentation().GetNthSegmentID(0), scene_case["ct"])
    assert np.array_equal(remote_segments, local_segments)
    assert not (tmp_path / "remote").exists()
    assert not (server.work_dir / "jobs" / job.job_id).exists()  # the finished job's files left the server
    new = {n.GetID() for o in (output, local) for n in (o.volume_node, o.volume_node.GetDisplayNode(),
                                                          o.segmentation_node, o.segmentation_node.GetDisplayNode())}
    assert_unchanged(mrml_context, scene_case, before, allowed_new=new)


def test_nodule_attribute_tags_reach_the_server(mrml_context, scene_case, server, tmp_path):  # noqa: F811
    from LungDDPMSlicerLib import checkpoint_info, engine, jobs, mrml, nodule_attributes, remote_jobs

    engine_dir = engine.find_engine_dir(MODULE_DIR)
    model = engine_dir / "lungddpm" / "models" / "demo-nodules.pt"
    takes = checkpoint_info.read_model_attributes(model).attributes
    nodule_attributes.set_attribute_tags(scene_case["segmentation"], scene_case["nodule_id"], takes,
                                         {"texture": 1, "spiculation": 5})
    request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                    [scene_case["nodule_id"]], model, seeds=[1], device="cpu", sampler="ddim", steps=2,
                                    model_attributes=takes, guidance=2.0)
    job = remote_jobs.RemoteSynthesisJob(mrml_context, request, server=_remote(server), model="demo-nodules",
                                         work_dir=tmp_path / "remote", log=lambda line: None, engine_dir=engine_dir)
    (output,) = jobs.run_to_end(job, poll_s=0.05)
    record = mrml.provenance(output.volume_node)
    assert record["guidance"] == "2" and record["attribute_schema"] == ",".join(takes)
    assert [entry["attributes"] for entry in json.loads(record["nodule_attributes"])] == [{"texture": 1, "spiculation": 5}]


def test_cancel_stops_the_servers_job_and_a_refusal_fails_with_its_message(mrml_context, scene_case, server,  # noqa: F811
                                                                           tmp_path):
    from lungddpm.demo.demo import DEMO_MODEL
    from LungDDPMSlicerLib import jobs, remote, remote_jobs

    before = snapshot(mrml_context, scene_case)
    request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                    [scene_case["nodule_id"]], DEMO_MODEL, seeds=[1], sampler="ddim", steps=200)
    job = remote_jobs.RemoteSynthesisJob(mrml_context, request, server=_remote(server), model="demo",
                                         work_dir=tmp_path / "work", log=lambda line: None)
    job.start()
    poll_until_running(job)
    assert job.state is jobs.JobState.RUNNING and job.step >= 1, job.error
    job.cancel()
    assert job.state is jobs.JobState.CANCELLED and not (tmp_path / "work").exists()
    deadline = time.monotonic() + 30
    while remote.status(_remote(server), job.job_id)["state"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remote.status(_remote(server), job.job_id)["state"] == "cancelled"
    assert_unchanged(mrml_context, scene_case, before)

    early = remote_jobs.RemoteSynthesisJob(mrml_context, request, server=_remote(server), model="demo",
                                           work_dir=tmp_path / "early", log=lambda line: None)
    early.start()  # cancelled while its upload is under way: no job of it is left running on the server
    early.cancel()
    early._call.thread.join(60)
    assert early.state is jobs.JobState.CANCELLED and not (tmp_path / "early").exists()
    deadline = time.monotonic() + 30
    while _unfinished(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _unfinished(server) == []

    refused = remote_jobs.RemoteSynthesisJob(mrml_context, request, server=_remote(server), model="released-128",
                                             work_dir=tmp_path / "refused", log=lambda line: None)
    with pytest.raises(jobs.EngineError, match="model 'released-128' is not offered by this server; choose one of demo"):
        jobs.run_to_end(refused)
    assert not (tmp_path / "refused").exists()
    assert_unchanged(mrml_context, scene_case, before)
