"""The block of ``python -m bench peers`` (``docs/results/peers.json``): each placement's figures,
PyTriton beside this service, the limits measured on the same cores, and the issue's targets on
the pinned and the shared figures. Formats only; the run computed every ratio and verdict."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]

WHERE = {
    "shared": "servers, load generator and any other work on the machine on any core",
    "pinned": "every server on one core, the load generator on another (`taskset`)",
}


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in rates)


def _load(r: Record) -> str:
    errors = f", {r['errors']} errors" if r["errors"] else ""
    return (
        f"{r['requests_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
        + errors
    )


def _affinity(mode: Record) -> str:
    """What the pinned server's processes and threads were allowed to run on, as checked."""
    a = mode["affinity"]
    peer = a["peer"]
    ours = a["ours"]
    peer_cpus = sorted({c for x in peer for c in x["cpus"]})
    return (
        f"checked in /proc after the load: this service {ours['processes']} process(es), "
        f"{ours['threads']} threads, CPUs {', '.join(ours['cpus'])}; PyTriton "
        f"{'/'.join(str(x['processes']) for x in peer)} processes, "
        f"{'/'.join(str(x['threads']) for x in peer)} threads (one Triton per model), "
        f"CPUs {', '.join(peer_cpus)}"
    )


def _client(mode: Record) -> str:
    """The CPUs the load generators said they could use (runs that recorded it)."""
    cpus = mode.get("client_ran_on")
    return "" if cpus is None else f"; the load generators: CPUs {', '.join(map(str, cpus))}"


def _load_average(mode: Record) -> list[str]:
    """How busy the whole machine was (other work included), where the run recorded it."""
    if "load_average" not in mode:
        return []
    before, after = mode["load_average"]
    return [
        "- The machine's 1-minute load average (every process on it, other sessions' work "
        f"included) before and after this placement: {before:.1f}, {after:.1f}"
    ]


FIRST = {"peer": "PyTriton", "ours": "this service"}


def _rounds_line(mode: Record) -> list[str]:
    """How the rounds took turns (runs before the rounds measured each server once)."""
    if "rounds" not in mode:
        return []
    return [
        f"- Rounds: {len(mode['rounds'])}, first in each: "
        f"{', '.join(FIRST[f] for f in mode['rounds'])}; each figure below is the median of the "
        "rounds' and each ratio the median of the rounds' ratios (the rounds: the second table)"
    ]


def _rounds_table(mode: Record) -> list[str]:
    """Each round's own figures, workload by workload."""
    if "rounds" not in mode:
        return []
    lines = [
        "",
        "| workload | clients | round | first | PyTriton | this service | requests/s ratio "
        "| p99 ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in mode["workloads"]:
        lines += [
            f"| {w['label']} | {w['clients']} | {n} | {FIRST[r['first']]} | "
            f"{_brief(r['peer'])} | {_brief(r['ours'])} | x{r['rps_ratio']:.2f} "
            f"| x{r['p99_ratio']:.2f} |"
            for n, r in enumerate(w["rounds"], 1)
        ]
    return lines


def _brief(r: Record) -> str:
    return f"{r['requests_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f}, p99 {r['p99_ms']:.2f} ms"


def _grpc_rounds(p: Record) -> str:
    if "rounds" not in p:
        return ""
    each = ", ".join(f"x{r['grpc_ratio']:.2f}" for r in p["rounds"])
    return f" The rounds' grpc.aio ratios: {each}."


def _cpus(cpus: str) -> str:
    return "any CPU" if cpus == "any" else f"CPU {cpus}"


def _mode(name: str, mode: Record) -> list[str]:
    place = (
        f"server on CPU {mode['server_cpus']}, load generator on CPU {mode['client_cpus']}"
        if mode["server_cpus"] is not None
        else "server and load generator on any core"
    )
    ceilings = ", ".join(
        f"`{c['model']}` batch {c['batch']}, {c['threads']} thread(s) on {_cpus(c['cpus'])}: "
        f"{c['images_per_s']:,.0f} images/s"
        for c in mode["ceilings"]
    )
    p = mode["protocols"]
    lines = [
        f"### {name.capitalize()}: {place}",
        "",
        f"- onnxruntime intra-op threads: this service {mode['threads']}, PyTriton "
        f"{mode.get('peer_threads', '')}, the raw ASGI app 1",
        f"- Where they ran: {_affinity(mode)}{_client(mode)}",
        *_load_average(mode),
        *_rounds_line(mode),
        f"- In-process onnxruntime (same run, no spinning, as the service's sessions): {ceilings}",
        "",
        "| workload | clients | PyTriton | this service | requests/s ratio | p99 ratio "
        "| of in-process (batch 32, same threads) |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in mode["workloads"]:
        lines.append(
            f"| {w['label']} | {w['clients']} | {_load(w['peer'])} | {_load(w['ours'])} "
            f"| x{w['rps_ratio']:.2f} | x{w['p99_ratio']:.2f} | "
            f"{w['of_ceiling']:.0%} (peer {w['peer_of_ceiling']:.0%}) |"
        )
    lines += _rounds_table(mode)
    lines += ["", "| raw ASGI `ceiling_asgi.py`, lecture model's FP32 JSON | clients | figure |"]
    lines.append("|---|---|---|")
    lines += [f"| {a['app']} | {a['clients']} | {_load(a)} |" for a in mode["asgi"]]
    lines += _alternating(mode)
    lines += [
        "",
        "gRPC (`bench/loadgen_grpc.py`) vs REST binary (`bench/loadgen.py`), 1 image UINT8, "
        f"1 client, lecture model, this service: REST binary p50 {p['rest_binary_p50_ms']:.2f} "
        f"ms; gRPC p50 {p['grpc_p50_ms']:.2f} ms with the grpc.aio client "
        f"(x{p['grpc_ratio']:.2f}), {p['blocking_p50_ms']:.2f} ms with grpcio's blocking client "
        f"(x{p['blocking_ratio']:.2f}).{_grpc_rounds(p)}",
        *_grpc_limit(mode),
    ]
    return lines


def _alternating(mode: Record) -> list[str]:
    """The service and the raw app served at once, one client alternating between them
    (``bench.alternating``); none in older records."""
    found = mode.get("alternating")
    if found is None:
        return []
    ours, raw = found["servers"]
    return [
        "",
        "Served at once on the same core, one client alternating requests between them "
        f"(`python -m bench alternate`, {found['requests']:,} turns): this service p50 "
        f"{ours['p50_ms']:.2f} ms, the raw ASGI app {raw['p50_ms']:.2f} ms; the service's latency "
        f"minus the raw app's in the same turn, median {-raw['gap_us']:+.0f} us (quartiles "
        f"{-raw['gap_q3_us']:+.0f} to {-raw['gap_q1_us']:+.0f} us).",
    ]


def _grpc_limit(mode: Record) -> list[str]:
    """The gRPC floor of the run (``bench.peer_limits.grpc_limit``); none in older records."""
    g = mode.get("grpc_limit")
    if g is None:
        return []
    return [
        "",
        "Its limit, grpcio's synchronous server answering ModelInfer with nothing but decode, one "
        "run and encode on its pool thread (`python -m bench grpc-models --serve sync-direct`), "
        f"same cores and clients: gRPC p50 {g['grpc_p50_ms']:.2f} ms with the grpc.aio client "
        f"(x{g['grpc_ratio']:.2f}), {g['blocking_p50_ms']:.2f} ms with the blocking one "
        f"(x{g['blocking_ratio']:.2f}), against REST binary's {g['rest_binary_p50_ms']:.2f} ms "
        "from the same process.",
    ]


def _training(t: Record) -> list[str]:
    keras = t["keras"]
    out = [
        "",
        "| training, lecture CNN, batch 32, Adam | images/s | ratio to Keras |",
        "|---|---|---|",
    ]
    for row in t["torch"]:
        label = f", {row['label']}" if row["label"] else ""
        out.append(
            f"| PyTorch, the project's recipe{label} ({row['how']}) "
            f"| {row['images_per_s']:,.0f} ({row.get('per', 'repeat')}s: {_rates(row['rates'])}) "
            f"| x{row['keras_ratio']:.2f} |"
        )
    rounds = t.get("rounds")
    median = f"median of {len(rounds)} rounds, " if rounds else ""
    out.append(
        f"| Keras `keras_seed.py` (tensorflow {keras['tf_version']}, {median}epoch "
        f"{keras['epoch']} of {keras['epochs']}, training part) | {keras['images_per_s']:,.0f} "
        "| x1.00 |"
    )
    if rounds:  # since the pairs taking turns (bench.peer_training)
        out += ["", "| round | first | PyTorch bf16 images/s | Keras images/s | ratio |"]
        out.append("|---|---|---|---|---|")
        out += [
            f"| {n} | {r['first']} | {r['bf16']:,.0f} | {r['keras']:,.0f} | x{r['ratio']:.2f} |"
            for n, r in enumerate(rounds, 1)
        ]
        out += ["", f"The bf16 recipe against Keras, median of the rounds' ratios: "
                f"**x{t['ratio']:.2f}**."]  # fmt: skip
    return out


def peers(record: Record) -> str:
    r = record["results"]
    places = "; ".join(f"{name}: {WHERE[name]}" for name in r["modes"])
    out = [
        "## Side by side with the peers",
        "",
        f"- When: {record['time']}; machine: {r['machine']}",
        f"- Command: `{record['command']}` (`make bench-peers`)",
        f"- Placements, one after the other: {places}",
        "- Servers, one after the other in each: PyTriton (`../shared/peers/pytriton_server.py`: "
        "Triton's dynamic batcher, 64 images / 3 ms, onnxruntime in its Python callable), "
        f"`python -m service` (WORKERS={r['workers']}, defaults otherwise) and the raw ASGI app "
        "`../shared/peers/ceiling_asgi.py`",
        "- Client: `bench/loadgen.py`, closed loop, keep-alive, 1 s warm-up, "
        f"{r['seconds']:g} s per figure; the same 1-image v2 JSON bodies (outputs: probabilities)",
    ]
    for name, mode in r["modes"].items():
        out += ["", *_mode(name, mode)]
    if r.get("training"):
        out += _training(r["training"])
    return "\n".join(out)


def peer_training(record: Record) -> str:
    """``python -m bench peers --train-only``: the training rows alone."""
    r = record["results"]
    return "\n".join(
        [
            "### Training beside Keras",
            "",
            f"- When: {record['time']}; machine: {r['machine']}",
            f"- Command: `{record['command']}`: {_order(r['training'])}",
            *_training(r["training"]),
        ]
    )


def _order(t: Record) -> str:
    if t.get("rounds"):
        return "float32 once, then pairs of the bf16 recipe and Keras, taking turns at going first"
    return "the rates one after the other, PyTorch's first"


def peer_targets(record: Record) -> str:
    """The targets table: the pinned verdict, the shared figure beside it, the measured limit."""
    judged = record["results"]["targets"]
    decide = "pinned" if "pinned" in judged else next(iter(judged))
    others = [name for name in judged if name != decide]
    head = f"| target | {decide} | met ({decide}) |" + "".join(f" {n} |" for n in others)
    lines = [
        f"{head} limit measured on the same core ({decide}) |",
        "|---" * (4 + len(others)) + "|",
    ]
    for i, row in enumerate(judged[decide]):
        verdict = "met" if row["met"] else "**not met**"
        context = "".join(
            f" {judged[n][i]['measured']} ({'met' if judged[n][i]['met'] else 'not met'}) |"
            for n in others
        )
        lines.append(
            f"| {row['target']} | {row['measured']} | {verdict} |{context} {row['limit']} |"
        )
    return "\n".join(lines)
