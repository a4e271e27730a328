"""`lungddpm serve` flags that the API tests leave at their defaults, each shown end to end on a real server."""

from __future__ import annotations

import json

from helpers import random_model
from lungddpm import save_checkpoint
from serving import call, start_server


def test_models_folder_and_keep_time_reach_the_clients(tmp_path):
    models = tmp_path / "models"
    save_checkpoint(models / "tiny-extra.pt", random_model(image_size=8))
    server = start_server(tmp_path / "server", "--models", str(models), "--keep-hours", "0.5")
    try:
        status, _, data = call(server, "GET", "/v1/models")
        offered = {m["name"] for m in json.loads(data)["models"]}
        assert status == 200 and {"demo", "demo-nodules", "tiny-extra"} <= offered  # --models DIR adds its files
        status, _, data = call(server, "GET", "/v1/jobs/" + "0" * 32)
        assert status == 404 and "kept 0.5 h" in json.loads(data)["error"]  # --keep-hours: the time jobs are kept
    finally:
        server.stop()
