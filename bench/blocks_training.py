"""Blocks of the training runs (docs/training.md, docs/training-94.md): formatting only, standard
library only, as in ``bench.blocks_serving``. Training runs record their own commands per run."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]


def _acc(value: float | None, bold: bool = False) -> str:
    if value is None:
        return ""
    return f"**{value:.4f}**" if bold else f"{value:.4f}"


def cifar_bn_runs(record: Record) -> str:
    lines = [
        "| run | architecture | recipe | epochs | seed | val accuracy | test accuracy "
        "| training time | curves |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]["runs"]:
        lines.append(
            f"| {r['run']} | `{r['architecture']}` | {r['recipe']} | {r['epochs']} | {r['seed']} "
            f"| {_acc(r['val_accuracy'])} | {_acc(r['test_accuracy'], r['highlight'])} "
            f"| {r['training_time']} | [png]({r['curves']}) |"
        )
    return "\n".join(lines)


def runs_94(record: Record) -> str:
    r = record["results"]
    lines = [
        "| run | command (code at 38dbdcd) | seed | val accuracy | test accuracy | wall time "
        "| per epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    seeds = [run for run in r["runs"] if run["run"].isdigit()]
    others = [run for run in r["runs"] if not run["run"].isdigit()]
    row = "| {run} | {command} | {seed} | {val} | {test} | {wall_time} | {per_epoch} |"
    for run in seeds:
        lines.append(_run_row(row, run))
    lines.append(
        f"| | mean of {len(seeds)} seeds | | | **{r['mean_test_accuracy']:.4f}** "
        f"(std {r['std_test_accuracy']:.4f}) | {r['mean_wall_time']} | |"
    )
    for run in others:
        lines.append(_run_row(row, run))
    return "\n".join(lines)


def _run_row(row: str, run: Record) -> str:
    return row.format(
        **run,
        val=_acc(run["val_accuracy"]),
        test=_acc(run["test_accuracy"], run["highlight"]),
    )


def ablations_94(record: Record) -> str:
    r = record["results"]
    first = r["runs"][0]
    lines = [
        f"| removed (`ABLATE=`) | val accuracy | test accuracy | against run 1 "
        f"({first['test_accuracy']:.4f}) | wall time |",
        "|---|---|---|---|---|",
        f"| nothing (run 1) | {_acc(first['val_accuracy'])} | {_acc(first['test_accuracy'])} "
        f"| | {first['wall_time']} |",
    ]
    for a in r["ablations"]:
        delta = "" if a["delta_points"] is None else f"{a['delta_points']:+.2f}"
        lines.append(
            f"| {a['removed']} | {_acc(a['val_accuracy'])} | {_acc(a['test_accuracy'])} "
            f"| {delta} | {a['wall_time']} |"
        )
    return "\n".join(lines)


def data_94(record: Record) -> str:
    r = record["results"]
    lines = [
        "| run | what | test, one view | test, 6 views | training time |",
        "|---|---|---|---|---|",
    ]
    for d in r["data"]:
        if d.get("from_runs"):
            six = f"**{r['mean_test_accuracy']:.4f}** mean"
            lines.append(f"| {d['run']} | {d['what']} | | {six} | {r['minutes_per_run']} min |")
            continue
        lines.append(
            f"| {d['run']} | {d['what']} | {_acc(d['test_one_view'])} "
            f"| {_acc(d['test_6_views'], True)} | {d['training_time']} |"
        )
    return "\n".join(lines)


def _ddp_epochs(rows: list[dict[str, Any]], accuracy: bool) -> str:
    head = "| layout | epoch 1 | epoch 2 |" + (" val_accuracy after 2 |" if accuracy else "")
    lines = [head, "|---|---:|---:|" + ("---:|" if accuracy else "")]
    for x in rows:
        first, second = x["epoch_s"]
        tail = f" {x['val_accuracy']:.3f} |" if accuracy else ""
        lines.append(f"| {x['layout']} | {first:.1f} s | {second:.1f} s |{tail}")
    return "\n".join(lines)


def ddp_epochs_32(record: Record) -> str:
    """Seconds per epoch of one process against two at the lecture's batch (docs/scaling.md)."""
    return _ddp_epochs(record["results"]["batch_32"], accuracy=True)


def ddp_epochs_256(record: Record) -> str:
    """The same at a global batch of 256."""
    return _ddp_epochs(record["results"]["batch_256"], accuracy=False)
