"""Nothing outside the repository is read (symlinks), the admin token is compared in constant
time, and errors show no paths or tracebacks."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from service.api import admin
from service.api.client_address import Caller
from service.api.rest.app import create_app
from service.core.card import CARD_FILE, MODEL_FILE
from service.core.errors import Forbidden
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import ModelState
from tests.support.apps import ADMIN, make_settings
from tests.support.models import make_model_repo, write_model

OPTIONS = RuntimeOptions(providers=("CPUExecutionProvider",), warm_up=False)


def states(repo: Path) -> dict[str, tuple[ModelState, str]]:
    repository = ModelRepository(repo, OPTIONS)
    repository.load()
    try:
        return {f"{r['name']}/{r['version']}": (ModelState(r["state"]), r["reason"])
                for r in repository.index()}  # fmt: skip
    finally:
        repository.close()


def test_symlinks_out_of_the_repository_are_refused(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, models={"tiny": [1]}, lecture=False)
    outside = tmp_path / "outside"
    # A whole version folder published outside and linked in.
    elsewhere = write_model(outside, "tiny", 2)
    (repo / "tiny" / "2").symlink_to(elsewhere, target_is_directory=True)
    # A real version folder whose model file links out.
    write_model(outside, "tiny", 3)
    folder = write_model(repo, "tiny", 3)
    (folder / MODEL_FILE).unlink()
    (folder / MODEL_FILE).symlink_to(outside / "tiny" / "3" / MODEL_FILE)
    # ...and one whose card links out.
    write_model(outside, "tiny", 4)
    folder = write_model(repo, "tiny", 4)
    (folder / CARD_FILE).unlink()
    (folder / CARD_FILE).symlink_to(outside / "tiny" / "4" / CARD_FILE)
    # A model folder that is itself a link out.
    write_model(outside, "linked", 1)
    (repo / "linked").symlink_to(outside / "linked", target_is_directory=True)

    found = states(repo)
    for key, what in (
        ("tiny/2", "the version folder"),
        ("tiny/3", MODEL_FILE),
        ("tiny/4", CARD_FILE),
        ("linked/1", "the version folder"),
    ):
        state, reason = found[key]
        assert state is ModelState.UNAVAILABLE, key
        assert reason == f"{what} links outside the model repository; refused"
        assert str(tmp_path) not in reason
    assert found["tiny/1"][0] is ModelState.READY  # the policy falls back to what loads


def test_symlinks_inside_the_repository_are_fine(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, models={"tiny": [1]}, lecture=False)
    folder = write_model(repo, "tiny", 2)
    (folder / MODEL_FILE).unlink()
    (folder / MODEL_FILE).symlink_to(Path("..") / "1" / MODEL_FILE)  # the same graph, relative
    assert states(repo)["tiny/2"] == (ModelState.READY, "")


def test_the_admin_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    constant_time = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", spy)
    settings = make_settings(Path("models"), admin_token=SecretStr("s3cret-token"))
    remote = Caller(peer="10.0.0.1", forwarded=False, client="10.0.0.1")
    admin.check_admin(settings, remote, "Bearer s3cret-token", "test")
    with pytest.raises(Forbidden):
        admin.check_admin(settings, remote, "Bearer s3cret-tokeN", "test")
    assert compared == [(b"s3cret-token", b"s3cret-token"), (b"s3cret-tokeN", b"s3cret-token")]


@pytest.mark.anyio
async def test_errors_show_no_paths_tracebacks_or_environment(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path)
    write_model(repo, "broken", 1, card_changes={"sha256": "0" * 64})
    (write_model(repo, "truncated", 1) / "card.json").write_text('{"name": "truncated",')
    write_model(repo, "policy", 1)
    (repo / "policy" / "config.json").write_text("{not json")
    os.environ["RELIABILITY_SECRET_PROBE"] = "probe-value-71"
    try:
        app = create_app(make_settings(repo, poll_interval_s=0))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://localhost", headers=ADMIN
            ) as http:
                texts = []
                for method, url, body in (
                    ("POST", "/v2/repository/index", None),
                    ("POST", "/v2/models/broken/infer", b"{}"),
                    ("POST", "/v2/repository/models/broken/load", None),
                    ("POST", "/v2/repository/models/..%2f..%2fetc/load", None),
                    ("GET", "/v1/models", None),
                    ("GET", "/v1/models/broken", None),
                    ("GET", "/v2/models/broken", None),
                    ("GET", "/v2/models/truncated/config", None),
                    ("GET", "/v1/models/truncated", None),
                    ("POST", "/v2/models/truncated/infer", b"{}"),
                    ("GET", "/v1/models/policy", None),
                    ("POST", "/v1/models/tiny:predict", b"\xff" * 10),
                    ("POST", "/v2/models/tiny/infer", b'{"inputs": [' * 10),
                ):
                    response = await http.request(method, url, content=body)
                    texts.append(response.text)
    finally:
        del os.environ["RELIABILITY_SECRET_PROBE"]
    everything = "\n".join(texts)
    assert "sha256" in everything  # the broken versions' reasons are there...
    assert "card.json: unreadable card: Expecting" in everything
    assert "config.json: unreadable: Expecting" in everything
    for leak in (str(tmp_path), "Traceback", 'File "', "probe-value-71", "/work", "site-packages"):
        assert leak not in everything  # ...but no path, traceback or environment


def test_the_admin_token_can_come_from_a_file_and_a_bad_file_stops_the_start(
    tmp_path: Path,
) -> None:
    """ADMIN_TOKEN_FILE (container secrets, make serve's .admin-token): its contents, stripped;
    a missing or empty file, or both settings, is an error at start-up, never a tokenless API.
    The errors do not show the token."""
    secret = tmp_path / "admin-token"
    secret.write_text("  file-token-42\n")
    settings = make_settings(tmp_path, admin_token=None, admin_token_file=secret)
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "file-token-42"
    (tmp_path / "empty").write_text("\n")
    for changes, message in (
        ({"admin_token_file": tmp_path / "absent"}, "unreadable"),
        ({"admin_token_file": tmp_path / "empty"}, "is empty"),
        ({"admin_token": "env-token-77", "admin_token_file": secret}, "not both"),
    ):
        with pytest.raises(ValidationError) as failure:
            make_settings(tmp_path, **{"admin_token": None, **changes})
        assert message in str(failure.value)
        assert "env-token-77" not in str(failure.value) and "file-token-42" not in str(
            failure.value
        )
