"""Blocks of the diagnostic benchmarks (decode cost, gRPC against REST under h2load, training
variants and loop cost, replicas behind nginx, where a request's time goes): formatting only,
standard library only, as in ``bench.blocks_serving``."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]
DECODE_STEPS = (
    "decode_infer_request", "simdjson_parse", "loads_infer_request", "array_from_json",
    "orjson_loads",
)  # fmt: skip
PHASES = {
    "decode_ms": "reading and decoding the body",
    "wait_for_run_ms": "waiting for the batcher",
    "run_and_handback_ms": "run and hand-back",
    "encode_send_ms": "encoding and sending",
    "total_ms": "in all",
}


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def decode(record: Record) -> str:
    r = record["results"]
    images = r["images"]
    lines = [
        "| body | bytes | whole decode (`decode_infer_request`) | simdjson parse "
        "| `loads_infer_request` | `array_from_json` | orjson, for comparison |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in r["bodies"].items():
        cells = " | ".join(_cell(row.get(step), ".1f") for step in DECODE_STEPS)
        plural = "s" if images > 1 else ""
        lines.append(f"| {images} image{plural}, {name} | {row['bytes']:,} | {cells} |")
    return "\n".join(
        [
            "## What decoding a request costs",
            "",
            f"`{record['command']}`, {record['time']}; microseconds per request, median of 5 "
            f"loops of {r['repeats']:,}, one process, one thread.",
            "",
            *lines,
        ]
    )


def grpc_h2load(record: Record) -> str:
    r = record["results"]
    lines = ["| protocol | repeat | requests | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for run in r["runs"]:
        lines.append(
            f"| {run['protocol']} | {run['repeat']} | {_cell(run['requests'], ',')} | "
            f"{run['p50_ms']:.3f} | {_cell(run['p99_ms'], '.3f')} |"
        )
    return "\n".join(
        [
            "## gRPC against REST binary, one C client for both",
            "",
            f"`{record['command']}`, {record['time']}: h2load (Debian's nghttp2-client), 1 "
            f"connection, one request at a time, {r['seconds']} s per repeat, 1 image UINT8, "
            f"`{r['model']}`.",
            "",
            *lines,
        ]
    )


def train_variants(record: Record) -> str:
    r = record["results"]
    lines = [
        "| variant | one process, 2 threads | DDP, 2 processes x 1 thread |",
        "|---|---|---|",
    ]
    for v in r["variants"]:
        one = " / ".join(f"{x:,.0f}" for x in v["one_process"])
        ddp = " / ".join(f"{x:,.0f}" for x in v["ddp"])
        lines.append(f"| {v['name']} | {one} | {ddp} |")
    return "\n".join(
        [
            "## Training variants: threads against processes",
            "",
            f"`{record['command']}`, {record['time']}: the lecture CNN, batch 32, "
            f"{r['steps']} steps x {r['repeats']} repeats after {r['warmup_steps']} warm-up "
            "steps, images/s of each repeat; DDP over gloo, the same global batch of 32.",
            "",
            *lines,
        ]
    )


def train_loop(record: Record) -> str:
    r = record["results"]
    rows = [
        f"| {name} | {r['medians'][name]:,.0f} | {' / '.join(f'{x:,.0f}' for x in rates)} "
        f"| {r['cpu_us_per_step'][name]:,.0f} |"
        for name, rates in r["rates"].items()
    ]
    return "\n".join(
        [
            "### The package's epoch loop against the bare step",
            "",
            f"`{record['command']}`, {record['time']}: the {r['recipe']} recipe (autocast "
            f"{r['autocast']}), batch {r['batch_size']}, torch threads: {r['threads']}, "
            f"{r['steps']} steps a round, {r['rounds']} rounds taking turns after a warm-up; "
            "images/s, and the "
            "main thread's CPU time per step in its best round.",
            "",
            "| loop | median images/s | each round | main thread, us CPU per step |",
            "|---|---|---|---|",
            *rows,
            "",
            f"`train_epoch` / bare step: x{r['ratio']:.3f} on the medians, x{r['best_ratio']:.3f} "
            "on the best rounds.",
        ]
    )


def replicas(record: Record) -> str:
    r = record["results"]
    scenarios = list(dict.fromkeys(row["scenario"] for row in r["rows"]))
    by = {(row["layout"], row["scenario"]): row for row in r["rows"]}
    head = "| layout | " + " | ".join(f"{s} req/s | p50 ms" for s in scenarios) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(scenarios)]
    for layout in dict.fromkeys(row["layout"] for row in r["rows"]):
        cells = " | ".join(
            f"{by[(layout, s)]['requests_per_s']:,.0f} | {by[(layout, s)]['p50_ms']:.1f}"
            for s in scenarios
        )
        lines.append(f"| {layout} | {cells} |")
    errors = sum(row["errors"] for row in r["rows"])
    failed = "No request failed in any layout." if not errors else f"{errors} requests failed."
    return "\n".join(
        [
            f"`{record['command']}` ({r['concurrency']} keep-alive clients from "
            f"`bench/loadgen.py`, {r['seconds']:g} s after 1 s of warm-up, one image per "
            f"request), every process on the same {r['cores']} cores, {record['time']}:",
            "",
            *lines,
            "",
            failed,
        ]
    )


def profile(record: Record) -> str:
    r = record["results"]
    slow = r.get("slowest_1pct_mean_phases") or {}
    lines = ["| phase | median ms | slowest 1%, mean ms |", "|---|---|---|"]
    for key, text in PHASES.items():
        lines.append(f"| {text} | {r['median_phases'][key]:.2f} | {_cell(slow.get(key), '.2f')} |")
    return "\n".join(
        [
            "## Where a request's time goes",
            "",
            f"`{record['command']}`, {record['time']}: the real server with probes attached "
            f"(server-side timelines of {r['requests']:,} requests, 1-image FP32 JSON to "
            "`cifar10_cnn`; a diagnostic: the probes cost time themselves).",
            "",
            *lines,
        ]
    )
