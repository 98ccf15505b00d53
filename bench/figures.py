"""Single figures quoted in prose, each named and drawn from one results record, written between
``<!-- figure NAME -->`` and ``<!-- /figure -->`` so a page's sentence can't drift from the run.
Standard library only (the docs test imports it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.blocks_shm import FIGURES as SHM
from bench.figures_serving import FIGURES as SERVING
from bench.figures_training import FIGURES as TRAINING

Record = dict[str, Any]


def _serving_row(record: Record, label: str, images: int, clients: int, layout: str) -> Record:
    for row in record["results"]["rows"]:
        key = (row["label"], row["images_per_request"], row["concurrency"], row["layout"])
        if key == (label, images, clients, layout):
            return dict(row)
    raise KeyError(f"no serving row {label}, {images} images, {clients} clients, {layout}")


def _workload(record: Record, label: str, clients: int, mode: str = "pinned") -> Record:
    """A workload of the peers run's ``mode`` (the pinned figures: those the targets hold on)."""
    for w in record["results"]["modes"][mode]["workloads"]:
        if (w["label"], w["clients"]) == (label, clients):
            return dict(w)
    raise KeyError(f"no peers workload {label} at {clients} clients")


def _replica(record: Record, layout: str, scenario: str) -> Record:
    for row in record["results"]["rows"]:
        if (row["layout"], row["scenario"]) == (layout, scenario):
            return dict(row)
    raise KeyError(f"no replicas row {layout}, {scenario}")


def _kilo(value: float) -> str:
    return f"{value / 1000:.1f}k"


def _binary_256(record: Record) -> Record:
    return _serving_row(record, "v2 UINT8 binary", 256, 4, "1 worker, batching")


def _seeds(scores: list[Record]) -> str:
    """Test accuracies of seeds as prose lists them: "a, b and c"."""
    figures = [f"{s['test_accuracy']:.4f}" for s in scores]
    return ", ".join(figures[:-1]) + " and " + figures[-1]


def _ablation(record: Record, name: str) -> str:
    for a in record["results"]["ablations"]:
        if name in a["removed"]:
            return f"{a['delta_points']:+.2f}"
    raise KeyError(f"no ablation {name}")


def _ablation_figure(name: str) -> tuple[str, Callable[[Record], str]]:
    return ("training-94", lambda r: _ablation(r, name))


def _data_run(record: Record, run: str) -> Record:
    for d in record["results"]["data"]:
        if d["run"] == run:
            return dict(d)
    raise KeyError(f"no data run {run}")


def _seed_runs(record: Record) -> list[Record]:
    return [r for r in record["results"]["runs"] if r["run"].isdigit()]


def _lecture(kind: str) -> tuple[str, Callable[[Record], str]]:
    return ("training-lecture", lambda r: _seeds(r["results"][kind]["seeds"]))


def _lecture_mean(kind: str) -> tuple[str, Callable[[Record], str]]:
    def draw(r: Record) -> str:
        figures = r["results"][kind]
        return f"{figures['mean']:.{figures['mean_digits']}f}"

    return ("training-lecture", draw)


def _bn_run(record: Record, run: int) -> Record:
    for r in record["results"]["runs"]:
        if r["run"] == run:
            return dict(r)
    raise KeyError(f"no cifar_bn run {run}")


def _bn_test(run: int) -> tuple[str, Callable[[Record], str]]:
    return ("training-cifar-bn", lambda r: f"{_bn_run(r, run)['test_accuracy']:.4f}")


def _bn_time(run: int) -> tuple[str, Callable[[Record], str]]:
    return ("training-cifar-bn", lambda r: _bn_run(r, run)["training_time"].split()[0])


def _bn_mean(name: str) -> tuple[str, Callable[[Record], str]]:
    return ("training-cifar-bn", lambda r: f"{r['results']['means'][name]:.4f}")


def _bn_figures() -> dict[str, tuple[str, Callable[[Record], str]]]:
    """The cifar_bn runs quoted in docs/training.md's prose: test accuracy and time of the
    ``make train-best`` runs, the three seeds of runs 1-7, and the means the page states."""
    out = {f"cifar-bn.run-{n}.test": _bn_test(n) for n in (8, 9, 10)}
    out.update({f"cifar-bn.run-{n}.time": _bn_time(n) for n in (8, 9, 10)})
    out["cifar-bn.seeds-2-6-7"] = (
        "training-cifar-bn",
        lambda r: _seeds([_bn_run(r, n) for n in (2, 6, 7)]),
    )
    out["cifar-bn.train-best.mean"] = _bn_mean("train_best_runs_8_10")
    out["cifar-bn.seeds.mean"] = _bn_mean("seeds_runs_2_6_7")
    return out


def _fixes_gain(record: Record) -> str:
    before, after = _fixes_94(record)
    return f"{(after['test_accuracy'] - before['test_accuracy']) * 100:+.2f}"


def _fixes_94(record: Record) -> tuple[Record, Record]:
    """cifar_94's seed 0 before the fixes of 38dbdcd and after them (run 1)."""
    runs = record["results"]["runs"]
    return next(r for r in runs if r["run"] == "before the fixes"), runs[0]


def _pass_figure(run: str, against: str) -> tuple[str, Callable[[Record], str]]:
    """A re-encoded copy's test accuracy against run 1 (``run-1``) or the seeds' mean, points."""

    def draw(r: Record) -> str:
        base = r["results"]["runs"][0]["test_accuracy"]
        if against == "mean":
            base = r["results"]["mean_test_accuracy"]
        return f"{(_data_run(r, run)['test_6_views'] - base) * 100:+.2f}"

    return ("training-94", draw)


def _wall_range(record: Record) -> str:
    times = sorted(r["wall_time"] for r in _seed_runs(record))
    return f"{times[0]}-{times[-1]}"


ABLATIONS = ("no-whitening", "no-lookahead", "no-bn-bias-scale", "no-dirac", "random-flip")
LECTURE, BN = "lecture model, FP32 JSON", "cifar10_cnn_bn, UINT8 JSON"
WORKERS_2 = "1 api server, WORKERS=2, direct"

# name -> (the record it is drawn from, how the figure reads in prose)
FIGURES: dict[str, tuple[str, Callable[[Record], str]]] = {
    "serving.when": ("serving", lambda r: f"{r['time'][11:16]} UTC, {r['time'][:10]}"),
    "serving.binary-256.images-per-s": (
        "serving", lambda r: f"{_binary_256(r)['images_per_s']:,.0f}"
    ),
    "serving.binary-256.of-ceiling": ("serving", lambda r: f"{_binary_256(r)['of_ceiling']:.0%}"),
    "serving.ceiling-256": (
        "serving", lambda r: f"{r['results']['ceiling_images_per_s']['256']:,.0f}"
    ),
    "peers.date": ("peers", lambda r: r["time"][:10]),
    "peers.lecture-64.rps-ratio": (
        "peers", lambda r: f"{_workload(r, LECTURE, 64)['rps_ratio']:.2f}x"
    ),
    "peers.lecture-64.p99-ratio": (
        "peers", lambda r: f"{_workload(r, LECTURE, 64)['p99_ratio']:.2f}x"
    ),
    "peers.bn-64.rps-ratio": ("peers", lambda r: f"{_workload(r, BN, 64)['rps_ratio']:.2f}x"),
    "peers.bn-64.p99-ratio": ("peers", lambda r: f"{_workload(r, BN, 64)['p99_ratio']:.2f}x"),
    "replicas.workers-2.binary": (
        "replicas", lambda r: _kilo(_replica(r, WORKERS_2, "v2 UINT8 binary")["requests_per_s"])
    ),
    "replicas.workers-2.json": (
        "replicas", lambda r: _kilo(_replica(r, WORKERS_2, "v2 FP32 JSON")["requests_per_s"])
    ),
    "lecture.float32.seeds": _lecture("float32"),
    "lecture.float32.mean": _lecture_mean("float32"),
    "lecture.bf16.seeds": _lecture("bf16"),
    "lecture.bf16.mean": _lecture_mean("bf16"),
    "train-94.seeds": ("training-94", lambda r: _seeds(_seed_runs(r))),
    "train-94.seeds-list": (
        "training-94", lambda r: ", ".join(f"{x['test_accuracy']:.4f}" for x in _seed_runs(r))
    ),
    "train-94.wall-range": ("training-94", _wall_range),
    "train-94.fixes.before": ("training-94", lambda r: f"{_fixes_94(r)[0]['test_accuracy']:.4f}"),
    "train-94.fixes.after": ("training-94", lambda r: f"{_fixes_94(r)[1]['test_accuracy']:.4f}"),
    "train-94.fixes.gain": ("training-94", _fixes_gain),
    **_bn_figures(),
    "train-94.mean": ("training-94", lambda r: f"{r['results']['mean_test_accuracy']:.4f}"),
    "train-94.minutes": ("training-94", lambda r: r["results"]["minutes_per_run"]),
    **{f"train-94.ablation.{name}": _ablation_figure(f"`{name}`") for name in ABLATIONS},
    "train-94.ablation.tta": _ablation_figure("test-time augmentation"),
    "train-94.reference-bf16": (
        "training-94", lambda r: f"{_data_run(r, 'reference, bf16')['test_6_views']:.4f}"
    ),
    "train-94.reference-float32": (
        "training-94", lambda r: f"{_data_run(r, 'reference, float32')['test_6_views']:.4f}"
    ),
    "train-94.q50.vs-run-1": _pass_figure("one more JPEG pass", "run-1"),
    "train-94.q50.vs-mean": _pass_figure("one more JPEG pass", "mean"),
    "train-94.q30": (
        "training-94", lambda r: f"{_data_run(r, 'a harder pass')['test_6_views']:.4f}"
    ),
    "train-94.q30.vs-run-1": _pass_figure("a harder pass", "run-1"),
    "train-94.run-1": ("training-94", lambda r: f"{r['results']['runs'][0]['test_accuracy']:.4f}"),
    "lecture.bf16.run-time": ("training-lecture", lambda r: r["results"]["bf16"]["run_time"]),
    "lecture.bf16.epoch-s": ("training-lecture", lambda r: r["results"]["bf16"]["epoch_s"]),
    "train-94.q50": (
        "training-94", lambda r: f"{_data_run(r, 'one more JPEG pass')['test_6_views']:.4f}"
    ),
    **SERVING,
    **TRAINING,
    **SHM,
}  # fmt: skip
