"""``python -m bench``: every subcommand parses its flags from its own module, and the parts the
benchmarks share (bodies, the onnxruntime timer) give what the benchmarks rely on."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import COMMANDS, main
from bench.bodies import pixels, v2_binary, v2_json
from bench.onnx_timer import images_per_second, latest_version


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_documents_its_flags(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: python -m bench {command}" in capsys.readouterr().out


def test_an_unknown_subcommand_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["no-such-benchmark"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_peers_bench_needs_at_least_one_round(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["peers", "--serving-rounds", "0", "--no-write"])
    assert exited.value.code == 2
    assert "--serving-rounds: must be 1 or more" in capsys.readouterr().err


def test_every_body_carries_the_same_seeded_pixels() -> None:
    assert (pixels(1) == pixels(1)).all() and pixels(3).shape == (3, 32, 32, 3)
    as_json = json.loads(v2_json(1, "UINT8", ["probabilities"]))
    assert as_json["inputs"][0]["data"] == pixels(1).ravel().tolist()
    assert as_json["outputs"] == [{"name": "probabilities"}]
    body, (header_line,) = v2_binary(1)
    length = int(header_line.rsplit(": ", 1)[1])
    assert json.loads(body[:length])["inputs"][0]["parameters"]["binary_data_size"] == 3072
    assert body[length:] == pixels(1).tobytes()


def test_the_timer_measures_the_shipped_model() -> None:
    rate = images_per_second(latest_version("cifar10_cnn"), 4, 0.05, repeats=2, threads=1)
    assert rate > 0
