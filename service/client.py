"""Command-line client: classify image files and folders, list models, show layer tables.

    python -m service.client predict cat.png photos/ --top-k 3 [--json] [--protocol grpc]
    python -m service.client models | health | layers cifar10_cnn | shapes spec.json
    python -m service.client feedback REQUEST_ID cat   (labels an answer; admin token or loopback)

(installed as the console script ``cifar-client``). Exit codes, for scripts:
0 done; 1 usage or input error (bad arguments, a missing, unreadable or undecodable file, or a
request the server refused as the caller's fault: 4xx, INVALID_ARGUMENT, NOT_FOUND...); 2 the
server failed (5xx, UNAVAILABLE, INTERNAL...), cannot be reached, or (``health``) is not ready.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
import numpy as np
from tqdm import tqdm

from service.api.images import decode_image
from service.api.predictions import UNCERTAIN, Classified, top_k
from service.core.errors import UnprocessableInput
from service.settings import Settings

EXIT_OK, EXIT_INPUT, EXIT_SERVER = 0, 1, 2
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
MAX_IMAGE_PIXELS: int = Settings.model_fields["max_image_pixels"].default  # the server's default
# gRPC codes that mean the server (not the request) failed.
SERVER_CODES = {"UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"}


class ClientError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


def image_files(paths: Sequence[str]) -> tuple[list[Path], bool]:
    """Files as given, then the image files in each folder (recursively, sorted); whether any
    argument was a folder."""
    files: list[Path] = []
    folder = False
    for name in paths:
        path = Path(name)
        if path.is_dir():
            folder = True
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            raise ClientError(f"{name}: no such file or folder", EXIT_INPUT)
    if not files:
        raise ClientError("no image files to classify", EXIT_INPUT)
    return files, folder


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"{path}: {exc.strerror}", EXIT_INPUT) from None


class RestClient:
    """The REST endpoints over httpx."""

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}", EXIT_SERVER) from None
        if response.status_code >= 400:
            try:
                message = str(response.json()["error"])
            except (ValueError, KeyError, TypeError):
                message = response.text.strip()[:500]
            code = EXIT_SERVER if response.status_code >= 500 else EXIT_INPUT
            raise ClientError(f"{response.status_code}: {message}", code)
        return response

    def classify(self, model: str, files: Sequence[Path], k: int) -> Classified:
        form = [
            # The path as the file name, so the server's error for a bad image names it.
            ("file", (str(p), read_file(p), mimetypes.guess_type(p.name)[0] or "image/*"))
            for p in files
        ]
        body = self.request("POST", f"/v1/models/{model}:classify", params={"top_k": k}, files=form)
        data = body.json()  # answers: "uncertain" under the server's ABSTAIN_BELOW
        return str(data["model_version"]), data["predictions"], data.get("answers")

    def models(self) -> list[dict[str, str]]:
        rows = []
        for model in self.request("GET", "/v1/models").json()["models"]:
            for version in model["versions"]:
                served = version["version"] == model["served_version"]
                rows.append(
                    {
                        "name": model["name"],
                        "version": version["version"],
                        "state": version["state"] + (" (served)" if served else ""),
                        "reason": version.get("reason", ""),
                    }
                )
        return rows

    def health(self) -> tuple[bool, bool]:
        live = self.request("GET", "/v2/health/live").status_code == 200
        ready = self.http.get("/v2/health/ready").status_code == 200
        return live, ready

    def close(self) -> None:
        self.http.close()


class GrpcClient:
    """The Open Inference Protocol over gRPC with ``tritonclient.grpc``; images are decoded here,
    by the server's own function (``service.api.images.decode_image``)."""

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        import tritonclient.grpc as triton  # only gRPC users pay for importing grpc

        self.triton = triton
        self.url = url
        self.client = triton.InferenceServerClient(url)
        self.headers = {"authorization": f"Bearer {token}"} if token else None
        self.timeout_s = timeout_s
        self._models: dict[str, tuple[str, tuple[int, int], list[str]]] = {}

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, headers=self.headers, client_timeout=self.timeout_s, **kwargs)
        except self.triton.InferenceServerException as exc:
            status = str(exc.status() or "").removeprefix("StatusCode.")
            code = EXIT_SERVER if status in SERVER_CODES or not status else EXIT_INPUT
            where = f"{self.url}: " if status == "UNAVAILABLE" else ""
            raise ClientError(f"{where}{status or 'error'}: {exc.message()}", code) from None

    def _model(self, model: str) -> tuple[str, tuple[int, int], list[str]]:
        """The input's name, its H x W, and the class names (from ModelConfig's parameters)."""
        if model not in self._models:
            metadata = self.call(self.client.get_model_metadata, model)
            config = self.call(self.client.get_model_config, model).config
            tensor = metadata.inputs[0]
            names = json.loads(config.parameters["class_names"].string_value)
            self._models[model] = (tensor.name, (tensor.shape[1], tensor.shape[2]), names)
        return self._models[model]

    def classify(self, model: str, files: Sequence[Path], k: int) -> Classified:
        input_name, size, class_names = self._model(model)
        try:
            batch = np.stack(
                [decode_image(read_file(p), size, MAX_IMAGE_PIXELS, str(p)) for p in files]
            )
        except UnprocessableInput as exc:
            raise ClientError(exc.message, EXIT_INPUT) from None
        tensor = self.triton.InferInput(input_name, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)  # raw_input_contents
        outputs = [self.triton.InferRequestedOutput("probabilities")]
        result = self.call(self.client.infer, model, [tensor], outputs=outputs)
        version = result.get_response().model_version
        return version, top_k(result.as_numpy("probabilities"), class_names, k), None

    def models(self) -> list[dict[str, str]]:
        index = self.call(self.client.get_model_repository_index)
        return [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in index.models
        ]

    def health(self) -> tuple[bool, bool]:
        live, ready = self.call(self.client.is_server_live), self.call(self.client.is_server_ready)
        return bool(live), bool(ready)

    def close(self) -> None:
        self.client.close()


Client = RestClient | GrpcClient


def predict(args: argparse.Namespace, client: Client) -> int:
    files, folder = image_files(args.paths)
    width = min(max(len(str(p)) for p in files), 60)
    with tqdm(
        total=len(files),
        unit="image",
        file=sys.stderr,
        disable=True if args.no_progress or not folder else None,  # None: off unless a terminal
    ) as bar:
        for start in range(0, len(files), args.batch_size):
            chunk = files[start : start + args.batch_size]
            version, predictions, answers = client.classify(args.model, chunk, args.top_k)
            shown: list[str | None] = [*answers] if answers else [None] * len(chunk)  # gRPC: none
            for path, classes, answer in zip(chunk, predictions, shown, strict=True):
                row = {"file": str(path), "model_name": args.model, "model_version": version}
                if args.json:
                    line = json.dumps({**row, "predictions": classes, "answer": answer})
                else:
                    ranked = "  ".join(f"{c['name']} {c['probability']:.3f}" for c in classes)
                    line = f"{path!s:<{width}}  {'uncertain: ' * (answer == UNCERTAIN)}{ranked}"
                bar.write(line, file=sys.stdout)
            bar.update(len(chunk))
    return EXIT_OK


def models(args: argparse.Namespace, client: Client) -> int:
    rows = client.models()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    header = {"name": "MODEL", "version": "VERSION", "state": "STATE", "reason": "REASON"}
    widths = {k: max(len(r[k]) for r in [header, *rows]) for k in ("name", "version", "state")}
    for row in [header, *rows]:
        cells = [f"{row[k]:<{w}}" for k, w in widths.items()]
        print("  ".join([*cells, row["reason"]]).rstrip())
    return EXIT_OK


def health(args: argparse.Namespace, client: Client) -> int:
    live, ready = client.health()
    if args.json:
        print(json.dumps({"live": live, "ready": ready}))
    else:
        print(f"live: {'yes' if live else 'no'}, ready: {'yes' if ready else 'no'}")
    return EXIT_OK if live and ready else EXIT_SERVER


def layers(args: argparse.Namespace, rest: RestClient) -> int:
    params = {"format": "json" if args.json else "text"}
    response = rest.request("GET", f"/v1/models/{args.name}/layers", params=params)
    print(response.text.rstrip("\n"))
    return EXIT_OK


def feedback(args: argparse.Namespace, rest: RestClient) -> int:
    """The true class of an answered image, by the X-Request-ID (or v2/gRPC ``id``) it carried."""
    label = int(args.label) if args.label.isdigit() else args.label
    body = {"id": args.id, "label": label, "item": args.item}
    response = rest.request("POST", "/v1/feedback", json=body)
    print(json.dumps(response.json()) if args.json else f"{args.id}: labelled {args.label}")
    return EXIT_OK


def shapes(args: argparse.Namespace, rest: RestClient) -> int:
    try:
        spec = json.loads(read_file(Path(args.spec)))
    except json.JSONDecodeError as exc:
        raise ClientError(f"{args.spec}: not JSON ({exc})", EXIT_INPUT) from None
    params = {"format": "json" if args.json else "text", "strict": str(args.strict).lower()}
    response = rest.request("POST", "/v1/shapes", params=params, json=spec)
    print(response.text.rstrip("\n"))
    return EXIT_OK


class Parser(argparse.ArgumentParser):
    """argparse that exits 1 on bad usage (its own default, 2, is our "server failed")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _common(suppress: bool) -> Parser:
    """Options accepted before or after the command (after it, they override)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    env = os.environ
    common = Parser(add_help=False)
    common.add_argument(
        "--url",
        default=default(env.get("CIFAR_URL", "http://127.0.0.1:8000")),
        help="REST base URL (CIFAR_URL; default http://127.0.0.1:8000)",
    )
    common.add_argument(
        "--grpc-url",
        default=default(env.get("CIFAR_GRPC_URL", "127.0.0.1:8001")),
        help="gRPC host:port (CIFAR_GRPC_URL; default 127.0.0.1:8001)",
    )
    common.add_argument(
        "--protocol",
        choices=["rest", "grpc"],
        default=default("rest"),
        help="for predict, models and health (the other commands are REST only)",
    )
    common.add_argument("--model", default=default("cifar10_cnn"), help="model name")
    common.add_argument(
        "--token",
        default=default(env.get("ADMIN_TOKEN")),
        help="bearer token for the repository API (ADMIN_TOKEN), which gRPC models reads",
    )
    common.add_argument(
        "--token-file",
        type=Path,
        default=default(env.get("ADMIN_TOKEN_FILE")),
        help="a file holding that token (ADMIN_TOKEN_FILE), e.g. .admin-token from make serve",
    )
    common.add_argument("--timeout", type=float, default=default(60.0), help="seconds per request")
    common.add_argument("--json", action="store_true", default=default(False), help="JSON lines")
    return common


def parser() -> argparse.ArgumentParser:
    main = Parser(
        prog="cifar-client",
        description=__doc__.splitlines()[0],
        parents=[_common(suppress=False)],
        epilog="Exit codes: 0 done; 1 usage or input error (4xx); 2 server error or unreachable.",
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common(suppress=True)
    p = commands.add_parser("predict", parents=[common], help="classify image files and folders")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--top-k", type=_positive, default=3, help="classes per image (default 3)")
    p.add_argument("--batch-size", type=_positive, default=32, help="images per request")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    commands.add_parser("models", parents=[common], help="every model version and its state")
    commands.add_parser("health", parents=[common], help="live and ready (exit 2 if not ready)")
    p = commands.add_parser("layers", parents=[common], help="a model's layer table (REST)")
    p.add_argument("name", metavar="MODEL")
    p = commands.add_parser("shapes", parents=[common], help="layer shapes of a spec (REST)")
    p.add_argument("spec", metavar="SPEC.json", help='{"input_shape": [...], "layers": [...]}')
    p.add_argument("--strict", action="store_true", help="refuse sizes that are not whole")
    p = commands.add_parser("feedback", parents=[common], help="label an answer by its id (REST)")
    p.add_argument("id", metavar="ID", help="the answer's X-Request-ID (or the id you gave)")
    p.add_argument("label", metavar="LABEL", help="class name or index")
    p.add_argument("--item", type=int, default=0, help="which image of the request (default 0)")
    return main


def admin_token(token: str | None, token_file: Path | None) -> str | None:
    """``--token``, else the contents of ``--token-file`` (stripped, as the server reads it)."""
    if token or token_file is None:
        return token or None
    try:
        return token_file.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"--token-file {token_file}: unreadable ({exc})", EXIT_INPUT) from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad usage (1), as a return value for callers
        return exc.code if isinstance(exc.code, int) else EXIT_INPUT
    try:
        token = admin_token(args.token, args.token_file)
    except ClientError as exc:
        print(f"cifar-client: {exc.message}", file=sys.stderr)
        return exc.exit_code
    rest = RestClient(args.url, token, args.timeout)
    client: Client = rest
    try:
        if args.protocol == "grpc" and args.command in ("predict", "models", "health"):
            client = GrpcClient(args.grpc_url, token, args.timeout)
        either = {"predict": predict, "models": models, "health": health}  # REST or gRPC
        if args.command in either:
            return either[args.command](args, client)
        return {"layers": layers, "shapes": shapes, "feedback": feedback}[args.command](args, rest)
    except ClientError as exc:
        print(f"cifar-client: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        rest.close()
        if client is not rest:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
