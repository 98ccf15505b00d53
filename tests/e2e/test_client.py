"""The command-line client end to end: ``python -m service.client`` against a real server (REST and
gRPC on loopback), image files written here, answers checked against ``:classify``."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.client import main
from service.settings import Settings
from tests.support.models import make_model_repo
from tests.support.servers import Running, free_port, running_server

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = make_model_repo(tmp_path_factory.mktemp("client"))
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        poll_interval_s=0,
        admin_token=TOKEN,  # type: ignore[arg-type]
    )
    with running_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of PNG and JPEG files of several sizes and modes (one in a subfolder), and a
    text file that folder scans pass over."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    rng = np.random.default_rng(21)
    for i, (mode, fmt, size) in enumerate(
        [("RGB", "PNG", (32, 32)), ("RGB", "JPEG", (120, 80)), ("RGBA", "PNG", (50, 50)),
         ("L", "JPEG", (64, 64)), ("RGB", "PNG", (33, 31)), ("P", "PNG", (40, 40)),
         ("RGB", "JPEG", (32, 32))]
    ):  # fmt: skip
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        pixels[: size[1] // 2] //= 3  # some structure, so JPEG and resizing matter
        place = folder / "more" if i == 6 else folder
        suffix = "png" if fmt == "PNG" else "jpg"
        Image.fromarray(pixels).convert(mode).save(place / f"img{i}.{suffix}", format=fmt)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def run(server: Running, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The client in this process; its exit code, stdout and stderr."""
    code = main(["--url", server.url, "--grpc-url", server.grpc_url, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def classify(server: Running, files: list[Path], top_k: int) -> list[list[dict[str, Any]]]:
    form = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
    response = httpx.post(
        f"{server.url}/v1/models/tiny:classify", params={"top_k": top_k}, files=form, timeout=10
    )
    assert response.status_code == 200, response.text
    predictions: list[list[dict[str, Any]]] = response.json()["predictions"]
    return predictions


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_predict_a_folder_as_json_lines_equal_to_classify(
    server: Running, photos: Path, protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", str(photos), "--model", "tiny", "--top-k", "4", "--batch-size", "3"]
    code, out, err = run(server, capsys, *args, "--json", "--protocol", protocol)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    files = sorted(p for p in photos.rglob("*") if p.suffix in (".png", ".jpg"))
    assert [Path(line["file"]) for line in lines] == files  # the text file passed over
    assert {(line["model_name"], line["model_version"]) for line in lines} == {("tiny", "2")}
    expected = classify(server, files, top_k=4)
    for line, want in zip(lines, expected, strict=True):
        got = line["predictions"]
        assert [c["name"] for c in got] == [c["name"] for c in want], line["file"]
        np.testing.assert_allclose(
            [c["probability"] for c in got], [c["probability"] for c in want], rtol=1e-6
        )


def test_predict_table_lists_each_file_with_its_classes(
    server: Running, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [photos / "img0.png", photos / "img1.jpg"]
    code, out, _ = run(server, capsys, "predict", *map(str, files), "--model", "tiny")
    assert code == 0
    rows = out.splitlines()
    expected = classify(server, files, top_k=3)
    assert len(rows) == 2
    for row, path, want in zip(rows, files, expected, strict=True):
        assert row.startswith(str(path))
        assert [c["name"] for c in want] == row.split()[1::2]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_models_and_health_over_both_protocols(
    server: Running, protocol: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    token_file = tmp_path / ".admin-token"
    token_file.write_text(TOKEN + "\n")  # as make serve writes it
    if protocol == "grpc":  # the repository index, which takes the token
        code, _, err = run(server, capsys, "models", "--protocol", protocol)
        assert code == 1 and "UNAUTHENTICATED" in err and "ADMIN_TOKEN" in err
        code, _, err = run(server, capsys, "models", "--token-file", str(tmp_path / "absent"))
        assert code == 1 and "--token-file" in err
    auth = ["--token-file", str(token_file)]
    code, out, _ = run(server, capsys, *auth, "models", "--json", "--protocol", protocol)
    assert code == 0
    rows = {(r["name"], r["version"]): r["state"] for r in map(json.loads, out.splitlines())}
    assert rows[("tiny", "2")].startswith("READY") and rows[("tiny", "1")] == "UNLOADED"
    assert rows[("cifar10_cnn", "1")].startswith("READY")
    code, out, _ = run(server, capsys, "models", "--protocol", protocol, "--token", TOKEN)
    assert code == 0 and out.splitlines()[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
    code, out, _ = run(server, capsys, "--protocol", protocol, "health")
    assert (code, out.strip()) == (0, "live: yes, ready: yes")


def test_layers_and_shapes(
    server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(server, capsys, "layers", "cifar10_cnn")
    assert code == 0 and "Total params: 122,570" in out
    code, out, _ = run(server, capsys, "layers", "cifar10_cnn", "--json")
    assert code == 0 and json.loads(out)["total_params"] == 122_570
    spec = tmp_path / "spec.json"
    layer = {"type": "conv2d", "filters": 96, "kernel": 11, "stride": 4, "padding": 0}
    spec.write_text(json.dumps({"input_shape": [227, 227, 3], "layers": [layer]}))
    code, out, _ = run(server, capsys, "shapes", str(spec), "--json")
    assert code == 0
    assert json.loads(out)["layers"][0]["output_shape"] == [55, 55, 96]
    code, out, _ = run(server, capsys, "shapes", str(spec))
    assert code == 0 and "Total params: 34,944" in out


def test_exit_codes_for_bad_input(
    server: Running, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG but not really")
    bad_spec = tmp_path / "bad.json"
    bad_spec.write_text("{not json")
    impossible = tmp_path / "impossible.json"
    impossible.write_text(json.dumps({"input_shape": [4, 4, 3], "layers": [
        {"type": "conv2d", "filters": 1, "kernel": 9}]}))  # fmt: skip
    image = str(photos / "img0.png")
    cases = [
        (["predict", str(tmp_path / "missing.png")], "no such file"),
        (["predict", str(junk), "--model", "tiny"], "junk.png"),
        (["predict", str(junk), "--model", "tiny", "--protocol", "grpc"], "junk.png"),
        (["predict", image, "--model", "nope"], "unknown model 'nope'"),
        (["predict", image, "--model", "nope", "--protocol", "grpc"], "unknown model 'nope'"),
        (["predict", image, "--top-k", "0"], "not a positive integer"),
        (["predict"], "required"),
        (["frobnicate"], "invalid choice"),
        (["layers", "nope"], "404"),
        (["shapes", str(bad_spec)], "not JSON"),
        (["shapes", str(impossible)], "422"),
    ]
    for args, message in cases:
        code, _, err = run(server, capsys, *args)
        assert code == 1, (args, err)
        assert message in err, (args, err)


def test_module_exit_codes_for_an_unreachable_server_and_no_torch(photos: Path) -> None:
    port = free_port()
    image = str(photos / "img0.png")
    command = [sys.executable, "-m", "service.client", "--url", f"http://127.0.0.1:{port}",
               "--grpc-url", f"127.0.0.1:{port}", "--timeout", "5"]  # fmt: skip
    for args in (["health"], ["predict", image], ["predict", image, "--protocol", "grpc"]):
        done = subprocess.run(
            [*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (args, done.stderr)
        assert "cifar-client:" in done.stderr and "Traceback" not in done.stderr
    code = "import sys, service.client; print(sorted({'torch', 'onnxruntime'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_console_script_points_at_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["cifar-client"].partition(":")
    assert (module, function) == ("service.client", "main")


def test_health_reports_a_server_that_is_not_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    settings = Settings(model_repository=empty, providers=["CPUExecutionProvider"])
    with running_server(settings) as server:
        for protocol in ("rest", "grpc"):
            code, out, _ = run(server, capsys, "health", "--protocol", protocol)
            assert (code, out.strip()) == (2, "live: yes, ready: no")


def test_feedback_labels_an_answer_by_its_request_id(
    server: Running, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = photos / "img0.png"
    form = [("file", (image.name, image.read_bytes(), "image/png"))]
    answer = httpx.post(f"{server.url}/v1/models/tiny:classify", files=form, timeout=30)
    request_id = answer.headers["x-request-id"]
    code, out, err = run(server, capsys, "feedback", request_id, "cat", "--token", TOKEN)
    assert (code, out.strip()) == (0, f"{request_id}: labelled cat"), err
    code, out, _ = run(server, capsys, "feedback", request_id, "3", "--token", TOKEN, "--json")
    assert (code, json.loads(out)) == (0, {"labelled": 1})
    code, _, err = run(server, capsys, "feedback", "no-such-id", "cat", "--token", TOKEN)
    assert code == 1 and "404" in err
    code, _, err = run(server, capsys, "feedback", request_id, "kitten", "--token", TOKEN)
    assert code == 1 and "422" in err
