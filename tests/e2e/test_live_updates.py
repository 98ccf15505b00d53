"""End to end: new versions published into the repository of a running uvicorn server while
clients send requests without pause, and the repository API through tritonclient."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.settings import Settings
from tests.support.live_updates import (
    POLL_INTERVAL_S,
    favouring_graph,
    publish_graph,
    running_server,
    top1,
    write_version_atomically,
)
from tests.support.models import make_model_repo, tiny_graph, tiny_reference
from tests.support.servers import wait_until

CLIENTS = 3
WINNERS = {2: 3, 3: 5, 4: 8}  # version -> the class its graph always answers
IMAGES = np.random.default_rng(11).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
BODY = {
    "inputs": [
        {
            "name": "images",
            "shape": list(IMAGES.shape),
            "datatype": "UINT8",
            "data": IMAGES.ravel().tolist(),
        }
    ],
    "outputs": [{"name": "probabilities"}],
}


def settings_for(repo: Path, **changes: object) -> Settings:
    return Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        poll_interval_s=POLL_INTERVAL_S,
        **changes,  # type: ignore[arg-type]
    )


def index(base: str) -> dict[str, dict[str, str]]:
    """The repository index, read as local development does (ADMIN_LOOPBACK, below)."""
    rows = httpx.post(f"{base}/v2/repository/index", timeout=10).json()
    return {f"{r['name']}/{r['version']}": r for r in rows}


def test_publishing_while_clients_send_requests_fails_none_and_switches_within_a_few_polls(
    tmp_path: Path,
) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    answers: list[list[tuple[str, np.ndarray]]] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []
    stop = threading.Event()

    def client(base: str, seen: list[tuple[str, np.ndarray]]) -> None:
        with httpx.Client(base_url=base, timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post("/v2/models/tiny/infer", json=BODY)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                seen.append(
                    (body["model_version"], np.reshape(body["outputs"][0]["data"], (2, 10)))
                )

    def total() -> int:
        return sum(len(seen) for seen in answers)

    with running_server(settings_for(repo, admin_loopback=True)) as server:
        base = f"http://{server}"
        threads = [threading.Thread(target=client, args=(base, seen)) for seen in answers]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: all(len(seen) >= 5 for seen in answers), what="clients started")
            # Versions 2..4 in turn, each favouring another class; every swap retires a runtime
            # that requests may still hold.
            switch_s = []
            for version in (2, 3, 4):
                publish_graph(repo, "tiny", favouring_graph(WINNERS[version]), tmp_path / "work")
                switch_s.append(
                    wait_until(
                        lambda: all(seen[-1][0] == str(version) for seen in answers),  # noqa: B023
                        what=f"version {version} served",
                    )
                )
            # A broken version 5 (a truncated graph, its card the hash of the whole) is not
            # served: version 4 goes on answering and the index says why.
            good = tiny_graph().SerializeToString()
            sha = hashlib.sha256(good).hexdigest()
            write_version_atomically(repo, "tiny", 5, good[: len(good) // 2], sha)
            wait_until(
                lambda: index(base).get("tiny/5", {}).get("state") == "UNAVAILABLE",
                what="version 5 listed as unavailable",
            )
            after = total()
            wait_until(lambda: total() > after + 3 * CLIENTS, what="more answers")
            rows = index(base)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)

    assert failures == []
    assert max(switch_s) < 20 * POLL_INTERVAL_S, f"switched after {switch_s} s"
    assert "sha256 of model.onnx" in rows["tiny/5"]["reason"]
    assert [rows[f"tiny/{v}"]["state"] for v in (1, 2, 3, 4)] == ["UNLOADED"] * 3 + ["READY"]
    for seen in answers:
        versions = [int(version) for version, _ in seen]
        assert versions == sorted(versions), "a client went back to an older version"
        assert versions[0] == 1 and versions[-1] == 4
        for answer, probabilities in seen:
            if answer == "1":
                np.testing.assert_allclose(probabilities, tiny_reference(IMAGES), atol=1e-5)
            else:
                assert top1(probabilities) == [WINNERS[int(answer)]] * 2


def test_repository_api_through_tritonclient_with_the_admin_token(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1, 2]}, lecture=False)
    settings = settings_for(repo, admin_token="letmein", version_policy="all")
    with running_server(settings) as server:
        client = triton.InferenceServerClient(url=server)
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_repository_index()
        assert refused.value.status() == "401"
        auth = {"Authorization": "Bearer letmein"}
        rows = client.get_model_repository_index(headers=auth)
        assert [(r["name"], r["version"], r["state"]) for r in rows] == [
            ("tiny", "1", "READY"),
            ("tiny", "2", "READY"),
        ]
        assert client.is_model_ready("tiny", "1") and client.is_model_ready("tiny", "2")
        client.unload_model("tiny", headers=auth)
        assert not client.is_model_ready("tiny")
        time.sleep(3 * POLL_INTERVAL_S)  # polls do not bring an unloaded model back
        assert not client.is_model_ready("tiny")
        client.load_model("tiny", headers=auth)
        assert client.is_model_ready("tiny")
        tensor = triton.InferInput("images", list(IMAGES.shape), "UINT8")
        tensor.set_data_from_numpy(IMAGES)
        result = client.infer("tiny", [tensor], model_version="1")
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), tiny_reference(IMAGES), atol=1e-5
        )
        with pytest.raises(InferenceServerException, match="no model folder"):
            client.load_model("absent", headers=auth)
        client.close()
