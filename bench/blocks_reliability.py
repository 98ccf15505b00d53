"""Blocks of docs/reliability.md: what one hostile request costs a real server, and what the fast
path's request ids and body timer cost. Formatting only, standard library only, as in
``bench.blocks_serving``."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]


def request_cost(record: Record) -> str:
    """Each request of the attacker's review and its neighbours: answer, time, worst check."""
    lines = [
        "| Request | Body | Answer | Time | Worst health check | Before |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["results"]["rows"]:
        lines.append(
            f"| {r['request']} | {r['body']} | {r['answer']} | {r['time']} "
            f"| {r['worst_health_check']} | {r['before']} |"
        )
    return "\n".join(lines)


def fast_path_cost(record: Record) -> str:
    """Requests/s of each run before and after, alternating, and the medians."""
    r = record["results"]
    n = len(r["rows"][0]["before"])
    lines = [
        f"| clients | before, requests/s ({n} runs) | after, requests/s ({n} runs) | medians |",
        "|---|---|---|---|",
    ]
    for row in r["rows"]:
        before = ", ".join(map(str, row["before"]))
        after = ", ".join(map(str, row["after"]))
        lines.append(
            f"| {row['clients']} | {before} | {after} "
            f"| {row['before_median']} -> {row['after_median']} |"
        )
    return "\n".join(lines)
