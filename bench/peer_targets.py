"""Issue 28's serving targets judged on one run of ``python -m bench peers``, on each placement's
figures (the pinned ones decide: server on one core, load generator on the other; the medians of
its rounds, ``bench.peer_rounds``), each met or not, with the rounds' own figures, and beside each
the measured limit that bounds it on the same cores (``bench.peer_limits``)."""

from __future__ import annotations

from typing import Any

from bench.peer_workloads import BN, LECTURE, WORKLOADS

Mode = dict[str, Any]


def _workload(mode: Mode, label: str, clients: int) -> Mode:
    for w in mode["workloads"]:
        if (w["label"], w["clients"]) == (label, clients):
            return dict(w)
    raise KeyError(f"no workload {label} at {clients} clients")


def _asgi(mode: Mode, no_model: bool, clients: int) -> Mode:
    for row in mode["asgi"]:
        if (row["no_model"], row["clients"]) == (no_model, clients):
            return dict(row)
    raise KeyError(f"no ASGI row (no_model={no_model}) at {clients} clients")


def _ceiling(mode: Mode, model: str, threads: int) -> Mode:
    for c in mode["ceilings"]:
        if (c["model"], c["batch"], c["threads"]) == (model, 32, threads):
            return dict(c)
    raise KeyError(f"no in-process figure of {model} with {threads} threads")


def batched_bound(floor_rps: float, in_process: Mode) -> float:
    """Requests/s of a server that adds nothing to the HTTP + JSON floor but the model's time per
    image at its best batch (1-image requests): no batching server on this stack and core can
    answer more, since each request pays the floor and its share of a batched run. That holds
    while the floor is the server's limit; a server above it shows the floor was (in part) the
    load generator's."""
    return 1 / (1 / floor_rps + 1 / float(in_process["images_per_s"]))


def _per_round(values: list[float], form: str, lead: str = "; ") -> str:
    """The rounds' own figures behind a median, after ``lead`` (runs before the rounds: none)."""
    if len(values) < 2:
        return ""
    return f"{lead}median of {len(values)} rounds: " + ", ".join(form.format(v) for v in values)


def _rounds(w: Mode, key: str, form: str) -> str:
    return _per_round([r[key] for r in w.get("rounds", [])], form)


def _row(target: str, measured: str, met: bool, limit: str) -> dict[str, Any]:
    return {"target": target, "measured": measured, "met": met, "limit": limit}


def _lecture_64(mode: Mode) -> list[dict[str, Any]]:
    w = _workload(mode, WORKLOADS[1].label, 64)
    peer, ours = w["peer"], w["ours"]
    floor, top = _asgi(mode, True, 64), _asgi(mode, False, 64)
    batched = batched_bound(floor["requests_per_s"], _ceiling(mode, LECTURE, mode["threads"]))
    share = ours["requests_per_s"] / batched
    # above the bound: the floor was (in part) the load generator's limit, not the server's
    above = ": above it, so that floor is partly the load generator's limit, not a bound"
    limit = (
        f"raw ASGI on the same core: {floor['requests_per_s']:,.0f} req/s without the model "
        f"(x{floor['requests_per_s'] / peer['requests_per_s']:.2f} PyTriton), "
        f"{top['requests_per_s']:,.0f} with it, one run per request "
        f"(x{top['requests_per_s'] / peer['requests_per_s']:.2f}); that floor plus the model's "
        f"in-process batch-32 time per image: {batched:,.0f} req/s "
        f"(x{batched / peer['requests_per_s']:.2f}; ours is {share:.0%} of it"
        f"{above if share > 1 else ''})"
    )
    p99 = (
        f"raw ASGI with the model: p99 {top['p99_ms']:.2f} ms "
        f"(x{top['p99_ms'] / peer['p99_ms']:.2f} PyTriton's)"
    )
    return [
        _row(
            "lecture model, 1-image FP32 JSON, 64 clients: >= 2x PyTriton's requests/s",
            f"x{w['rps_ratio']:.2f} ({ours['requests_per_s']:,.0f} against "
            f"{peer['requests_per_s']:,.0f} req/s{_rounds(w, 'rps_ratio', 'x{:.2f}')})",
            w["rps_ratio"] >= 2,
            limit,
        ),
        _row(
            "the same, p99 <= half of PyTriton's",
            f"x{w['p99_ratio']:.2f} ({ours['p99_ms']:.2f} against {peer['p99_ms']:.2f} ms"
            f"{_rounds(w, 'p99_ratio', 'x{:.2f}')})",
            w["p99_ratio"] <= 0.5,
            p99,
        ),
    ]


def _one_client(mode: Mode) -> dict[str, Any]:
    w = _workload(mode, WORKLOADS[0].label, 1)
    ours = w["ours"]
    floor, top = _asgi(mode, True, 1), _asgi(mode, False, 1)
    each = _per_round([r["ours"]["p50_ms"] for r in w.get("rounds", [])], "{:.2f}", " (")
    return _row(
        "one client (lecture model, 1-image FP32 JSON): p50 <= 0.5 ms",
        f"p50 {ours['p50_ms']:.2f} ms{each + ')' if each else ''}",
        ours["p50_ms"] <= 0.5,
        f"raw ASGI on the same core: p50 {top['p50_ms']:.2f} ms with the model, "
        f"{floor['p50_ms']:.2f} ms without it{_alternating(mode.get('alternating'))}",
    )


def _alternating(found: dict[str, Any] | None) -> str:
    """The service's paired gap to the raw app, one client alternating between them
    (``bench.alternating``); none in records from before it was measured."""
    if found is None:
        return ""
    ours, raw = found["servers"]
    return (
        f"; served at once, one client alternating between them ({found['requests']:,} turns): "
        f"p50 {ours['p50_ms']:.2f} against {raw['p50_ms']:.2f} ms; the service's latency minus "
        f"the raw app's {-raw['gap_us']:+.0f} us (median of the pairs)"
    )


def _bn(mode: Mode) -> list[dict[str, Any]]:
    w = _workload(mode, WORKLOADS[2].label, 64)
    ours, peer = w["ours"], w["peer"]
    two = _ceiling(mode, BN, 2)
    one = _ceiling(mode, BN, 1) if mode["threads"] == 1 else None
    share = ours["images_per_s"] / two["images_per_s"]
    limit = ""
    if one is not None:
        # the model alone on the server's one core, with no HTTP at all, is the most it can do
        short = one["images_per_s"] / two["images_per_s"] < 0.8
        alone = ": under 80% with no server around it, so out of reach on one core" if short else ""
        limit = (
            f"onnxruntime alone on the server's core (1 thread, batch 32): "
            f"{one['images_per_s']:,.0f} images/s, {one['images_per_s'] / two['images_per_s']:.0%} "
            f"of 2 threads{alone}; the service reaches "
            f"{ours['images_per_s'] / one['images_per_s']:.0%} of that"
        )
    return [
        _row(
            "`cifar10_cnn_bn`, UINT8 JSON, 64 clients: >= 80% of in-process onnxruntime "
            "(2 threads, batch 32)",
            f"{share:.0%} ({ours['images_per_s']:,.0f} of {two['images_per_s']:,.0f} images/s)",
            share >= 0.8,
            limit,
        ),
        _row(
            "the same, p99 <= PyTriton's",
            f"x{w['p99_ratio']:.2f} ({ours['p99_ms']:.2f} against {peer['p99_ms']:.2f} ms"
            f"{_rounds(w, 'p99_ratio', 'x{:.2f}')})",
            w["p99_ratio"] <= 1,
            "",
        ),
    ]


def _grpc(mode: Mode) -> dict[str, Any]:
    p = mode["protocols"]
    best = min(p["grpc_ratio"], p["blocking_ratio"])
    each = _per_round([r["grpc_ratio"] for r in p.get("rounds", [])], "x{:.2f}")
    return _row(
        "gRPC p50, one client, 1 image: <= REST binary's",
        f"x{p['grpc_ratio']:.2f} with the grpc.aio client, x{p['blocking_ratio']:.2f} with the "
        f"blocking one ({p['grpc_p50_ms']:.2f} and {p['blocking_p50_ms']:.2f} against "
        f"{p['rest_binary_p50_ms']:.2f} ms{each})",
        best <= 1,
        _grpc_floor(mode.get("grpc_limit")),
    )


def _grpc_floor(g: dict[str, Any] | None) -> str:
    """grpcio's synchronous server with nothing but the call's own work, against REST binary of
    the same process (none in records from before it was measured)."""
    if g is None:
        return ""
    best = min(g["grpc_ratio"], g["blocking_ratio"])
    fastest = min(g["grpc_p50_ms"], g["blocking_p50_ms"])
    beyond = "; over x1 with nothing else in it: out of reach through grpcio's Python server"
    return (
        "grpcio's synchronous server with nothing but decode, one run and encode "
        f"(`sync-direct`): p50 x{best:.2f} REST binary's ({fastest:.2f} against "
        f"{g['rest_binary_p50_ms']:.2f} ms){beyond if best > 1 else ''}"
    )


def targets(mode: Mode) -> list[dict[str, Any]]:
    """Every serving target of the issue judged on one placement's figures."""
    return [*_lecture_64(mode), _one_client(mode), *_bn(mode), _grpc(mode)]


def judge(modes: dict[str, Mode]) -> dict[str, list[dict[str, Any]]]:
    """The targets on each placement's figures: the issue's verdict is the pinned one, the shared
    one is context."""
    return {name: targets(mode) for name, mode in modes.items()}
