"""Blocks of the serving, model and training benchmarks: each formats the figures a results record
holds (``docs/results/<name>.json``) and computes none, so a page shows what the run measured.
Standard library only, like every renderer: the docs test runs without a benchmark's packages."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]


def _n(value: float | None, fmt: str = ",.0f") -> str:
    """A figure, or an empty cell where the run did not record it."""
    return "" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _ms(value: float) -> str:
    """Milliseconds as prose quotes them: two decimals under 1 ms, one above."""
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def _rates(rates: list[float], sep: str = ", ") -> str:
    return sep.join(f"{r:,.0f}" for r in rates)


def serving(record: Record) -> str:
    r = record["results"]
    rows = [
        "| scenario | images/request | clients | server | requests/s | images/s "
        "| p50 ms | p90 ms | p99 ms | errors | of in-process |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        rows.append(
            f"| {row['label']} | {row['images_per_request']} | {row['concurrency']} | "
            f"{row['layout']} | {_n(row['requests_per_s'])} | {_n(row['images_per_s'])} | "
            f"{row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['errors']} | {_pct(row['of_ceiling'])} |"
        )
    ceiling = ", ".join(
        f"batch {n}: {v:,.0f} images/s" for n, v in r["ceiling_images_per_s"].items()
    )
    grpc = "; gRPC: `bench/loadgen_grpc.py`, one channel" if r["grpc"] else ""
    return "\n".join(
        [
            "## Serving",
            "",
            f"- When: {record['time']}; machine: {r['machine']} "
            "(server and load generator share them)",
            f"- Command: `{record['command']}`",
            f"- In-process onnxruntime ceiling: {ceiling}",
            f"- Load: `bench/loadgen.py`, closed loop, keep-alive connections, 1 s warm-up{grpc}",
            "",
            *rows,
            "",
            "![serving throughput](images/bench-serving.png)",
        ]
    )


def serving_summary(record: Record) -> str:
    """The 1-image FP32 JSON rows of the serving run that docs/serving.md discusses."""
    rows = {(x["label"], x["concurrency"], x["layout"]): x for x in record["results"]["rows"]}
    picks = [
        ("1 client (default server)", 1, "1 worker, batching"),
        ("64 clients, default server (1 process, batching on)", 64, "1 worker, batching"),
        ("64 clients, batching off", 64, "1 worker, no batching"),
        ("64 clients, `WORKERS=2`", 64, "2 workers, batching"),
    ]
    lines = ["| 1-image v2 FP32 JSON requests | requests/s | p50 | p99 |", "|---|---|---|---|"]
    for text, clients, layout in picks:
        row = rows[("v2 FP32 JSON", clients, layout)]
        lines.append(
            f"| {text} | {_n(row['requests_per_s'])} | {_ms(row['p50_ms'])} ms "
            f"| {_ms(row['p99_ms'])} ms |"
        )
    return "\n".join(lines)


def model_table(record: Record) -> str:
    lines = [
        "| model | architecture | test accuracy | parameters | multiply-adds | training "
        "(this CPU) | onnxruntime images/s, batch 32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]["rows"]:
        macs = r["macs"] and r["macs"] / 1e6
        lines.append(
            f"| `{r['model']}` | `{r['architecture']}` | {_n(r['accuracy'], '.4f')} | "
            f"{_n(r['params'], ',')} | {_n(macs, '.1f')} M | "
            f"{r['training']} | {_n(r['throughput'])} |"
        )
    return "\n".join(lines)


def models(record: Record) -> str:
    r = record["results"]
    return (
        "## Models\n\n"
        f"`{record['command']}`, {record['time'][:10]}, onnxruntime {r['onnxruntime']}, in "
        f"process, batch {r['batch']}, median of {r['repeats']} windows of {r['seconds']:g} s. "
        "Accuracy is the card's (test split of the JPEG copy, no test-time augmentation); "
        "training time is the card's wall time of the epochs.\n\n" + model_table(record)
    )


def training(record: Record) -> str:
    r = record["results"]
    how = r["device"] + (f", autocast {r['autocast']}" if r.get("autocast") else "")
    named = r.get("recipe")  # None: TrainConfig's defaults, the lecture's recipe
    what = f"recipe `{named}`" if named else "batch 32, Adam"
    model = "the lecture's CNN (122,570 parameters)" if named in (None, "lecture") else named
    lines = [
        f"| training, {what} ({how}) | {r['images_per_s']:,.0f} images/s "
        f"(repeats: {_rates(r['rates'])}) | {r['epoch_s']:.1f} s per 50,000-image epoch |"
    ]
    for batch, ips in r["onnx_images_per_s"].items():
        lines.append(
            f"| onnxruntime inference, batch {batch} (CPU, in process) | {ips:,.0f} images/s | |"
        )
    return "\n".join(
        [
            "## Training",
            "",
            f"- When: {record['time']}",
            f"- Machine: {r['machine']}",
            f"- Command: `{record['command']}`",
            f"- Data: CIFAR-10 JPEG copy ({r['data']})",
            f"- Model: {model}",
            "",
            "| what | throughput | epoch |",
            "|---|---|---|",
            *lines,
        ]
    )
