"""The serving figures of ``python -m bench peers`` combined over rounds that take turns.

On this shared machine one 5 s figure of a server moves by several percent between neighbouring
minutes, as much as the margins the issue's targets leave (docs/benchmarks.md, "Pinned against
shared"). So, as the training rows do (``bench.peer_training``), each placement measures PyTriton
and this service ``--serving-rounds`` times, the first of each pair alternating; each verdict is
the median of the rounds' own ratios (a ratio of two figures taken minutes apart is no ratio), and
each figure shown is the median of the rounds' figures. Pure functions over the rounds' rows.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.peer_workloads import WORKLOADS

Load = dict[str, Any]
FIGURES = ("requests_per_s", "images_per_s", "p50_ms", "p99_ms")


def median_load(loads: list[Load]) -> Load:
    """Each figure the median of the rounds' (so the shown figures of one side may come from
    different rounds); errors summed."""
    out: Load = {f: statistics.median(x[f] for x in loads) for f in FIGURES}
    out["errors"] = sum(x.get("errors", 0) for x in loads)
    return out


def _figures(load: Load) -> Load:
    return {f: load[f] for f in ("requests_per_s", "p50_ms", "p99_ms")}


def workload_rows(rounds: list[dict[str, Any]], ceilings: dict[str, float]) -> list[Load]:
    """Per workload: both servers' median figures, the medians of the rounds' requests/s and p99
    ratios, the share of in-process onnxruntime (``ceilings``: images/s by model, batch 32), and
    each round's own figures."""
    out = []
    for w in WORKLOADS:
        key = (w.label, w.clients)
        per = [
            {
                "first": r["first"],
                "peer": _figures(r["peer"][key]),
                "ours": _figures(r["ours"][key]),
                "rps_ratio": r["ours"][key]["requests_per_s"] / r["peer"][key]["requests_per_s"],
                "p99_ratio": r["ours"][key]["p99_ms"] / r["peer"][key]["p99_ms"],
            }
            for r in rounds
        ]
        peer = median_load([r["peer"][key] for r in rounds])
        ours = median_load([r["ours"][key] for r in rounds])
        out.append({
            "label": w.label, "clients": w.clients, "peer": peer, "ours": ours,
            "rps_ratio": statistics.median(p["rps_ratio"] for p in per),
            "p99_ratio": statistics.median(p["p99_ratio"] for p in per),
            "of_ceiling": ours["images_per_s"] / ceilings[w.model],
            "peer_of_ceiling": peer["images_per_s"] / ceilings[w.model],
            "rounds": per,
        })  # fmt: skip
    return out


def protocol_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """gRPC against REST binary: each p50 and each ratio the median of the rounds' own, with the
    rounds' figures kept."""
    per = [r["protocols"] for r in rounds]
    medians = {k: statistics.median(p[k] for p in per) for k in per[0]}
    return {**medians, "rounds": per}


def client_cpus(rounds: list[dict[str, Any]], others: list[Load]) -> list[int]:
    """Every CPU a load generator of these rounds (and of ``others``) said it could run on."""
    loads = [load for r in rounds for side in ("peer", "ours") for load in r[side].values()]
    return sorted({c for load in [*loads, *others] for c in load["cpus"]})
