"""Figures quoted in the training pages' prose beyond the runs' tables (``bench.figures`` merges
these): the cifar_94 graph's test-time augmentation, speed and scores on harder-compressed images,
the gaps the prose names, the INT8 copies' checks, the lecture's and cifar_bn's side figures.
Each is drawn from one results record; standard library only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = dict[str, Any]
Figure = tuple[str, Callable[[Record], str]]
VIEWS = {"one-view": "one_view", "flip": "flip", "six-views": "six_views"}


def _tta(key: str) -> Figure:
    return ("training-94-tta", lambda r: f"{r['results'][key]:.4f}")


def _tta_gain(key: str, against: str) -> Figure:
    """Points gained over ``against`` (one view; or float, for the INT8 graph)."""

    def draw(r: Record) -> str:
        return f"{(r['results'][key] - r['results'][against]) * 100:+.2f}"

    return ("training-94-tta", draw)


def _speed(key: str) -> Figure:
    return ("training-94-speed", lambda r: f"{r['results']['images_per_s'][key]:,}")


def _clients(key: str) -> Figure:
    return ("training-94-clients", lambda r: f"{r['results']['test_accuracy'][key]:.4f}")


def _clients_loss(record: Record) -> str:
    """Points lost on the harder-compressed test images against the graph's own, as a range."""
    scores = dict(record["results"]["test_accuracy"])
    own = scores.pop("q75 (its own)")
    lost = sorted((own - v) * 100 for v in scores.values())
    return f"{lost[0]:.1f}-{lost[-1]:.1f}"


def _data(record: Record, run: str) -> Record:
    return next(dict(d) for d in record["results"]["data"] if d["run"] == run)


def _data_figure(run: str, key: str, fmt: str) -> Figure:
    return ("training-94", lambda r: format(_data(r, run)[key], fmt))


def _retrain_cost(record: Record) -> str:
    """Points the q50 and q30 copies cost a retrain against run 1, as a range."""
    base = record["results"]["runs"][0]["test_accuracy"]
    costs = [
        (base - _data(record, run)["test_6_views"]) * 100
        for run in ("one more JPEG pass", "a harder pass")
    ]
    return f"{min(costs):.1f}-{max(costs):.1f}"


def _q50_cost(record: Record) -> str:
    """Points one more JPEG pass cost run 1's recipe, one decimal ("2.5 points")."""
    base = record["results"]["runs"][0]["test_accuracy"]
    return f"{(base - _data(record, 'one more JPEG pass')['test_6_views']) * 100:.1f}"


def _pass_cost_range(record: Record) -> str:
    """What one more JPEG pass cost against the seeds' mean and against run 1, in points to one
    decimal without a trailing zero ("2-2.5")."""
    r = record["results"]
    q50 = _data(record, "one more JPEG pass")["test_6_views"]
    costs = sorted(
        (base - q50) * 100 for base in (r["mean_test_accuracy"], r["runs"][0]["test_accuracy"])
    )
    return "-".join(f"{round(c, 1):g}" for c in costs)


def _seed_range(record: Record) -> str:
    scores = sorted(r["test_accuracy"] for r in record["results"]["runs"] if r["run"].isdigit())
    return f"{scores[0]:.4f}-{scores[-1]:.4f}"


def _points(a: str, b: str) -> Callable[[Record], str]:
    """``results[a] - results[b]`` in points, one decimal (the page's "3.4 points")."""
    return lambda r: f"{(r['results'][a] - r['results'][b]) * 100:.1f}"


def _gate_gap(record: Record) -> str:
    reference = _data(record, "reference, bf16")["test_6_views"]
    return f"{(record['results']['gate'] - reference) * 100:.1f}"


def _quantize(model: str, key: str) -> Figure:
    def draw(r: Record) -> str:
        run = next(x for x in r["results"]["runs"] if x["model"] == model)
        return f"{run[key]:.4f}"

    return ("quantize-cifar-bn", draw)


def _bn(key: str, draw: Callable[[Any], str]) -> Figure:
    """A figure the cifar_bn page quotes beside its runs (``training-cifar-bn``)."""
    return ("training-cifar-bn", lambda r: draw(r["results"][key]))


def _probe(widths: str) -> Figure:
    def draw(probes: list[Record]) -> str:
        return f"{next(p for p in probes if p['widths'] == widths)['test_accuracy']:.4f}"

    return _bn("width_probes_10_epochs", draw)


def _variants_ratio(record: Record) -> str:
    """bf16 with fused Adam against float32 Adam, one process: medians of the repeats."""
    by = {v["name"]: sorted(v["one_process"]) for v in record["results"]["variants"]}
    fast, slow = by["bf16 autocast, fused Adam"], by["float32, Adam"]
    return f"{fast[len(fast) // 2] / slow[len(slow) // 2]:.1f}"


def _below_quiet(record: Record) -> str:
    speeds = record["results"]
    quiet = speeds["model_table_images_per_s"]["cifar10_cnn_bn/2"]
    return f"{quiet / speeds['images_per_s']['cifar10_cnn_bn/2']:.1f}"


FIGURES: dict[str, Figure] = {
    **{f"train-94.tta.{name}": _tta(key) for name, key in VIEWS.items()},
    "train-94.tta.flip.gain": _tta_gain("flip", "one_view"),
    "train-94.tta.six-views.gain": _tta_gain("six_views", "one_view"),
    "train-94.tta.int8": _tta("int8_six_views"),
    "train-94.tta.int8.drop": _tta_gain("int8_six_views", "six_views"),
    "train-94.speed.six-views": _speed("six_views"),
    "train-94.speed.six-views-int8": _speed("six_views_int8"),
    "train-94.speed.flip": _speed("flip"),
    "train-94.speed.one-view": _speed("one_view"),
    "train-94.speed.cifar-bn-2": _speed("cifar10_cnn_bn/2"),
    "train-94.clients.q50": _clients("q50"),
    "train-94.clients.q30": _clients("q30"),
    "train-94.clients.own": _clients("q75 (its own)"),
    "train-94.clients.loss": ("training-94-clients", _clients_loss),
    "train-94.retrain-cost": ("training-94", _retrain_cost),
    "train-94.seed-range": ("training-94", _seed_range),
    "train-94.std-points": (
        "training-94",
        lambda r: f"{r['results']['std_test_accuracy'] * 100:.1f}",
    ),
    "train-94.gap-to-paper": ("training-94", _points("paper_accuracy", "mean_test_accuracy")),
    "train-94.gate-gap": ("training-94", _gate_gap),
    "train-94.q50.cost": ("training-94", _q50_cost),
    "train-94.q50.cost-range": ("training-94", _pass_cost_range),
    "train-94.reference-bf16.seconds": _data_figure("reference, bf16", "train_and_eval_s", ","),
    "train-94.reference-float32.seconds": _data_figure(
        "reference, float32", "train_and_eval_s", ","
    ),
    "train-94.q50.levels": _data_figure("one more JPEG pass", "mean_pixel_change_levels", ".2f"),
    "train-94.q30.levels": _data_figure("a harder pass", "mean_pixel_change_levels", ".2f"),
    "train-94.speed.cifar-bn-2.quiet": (
        "training-94-speed",
        lambda r: f"{r['results']['model_table_images_per_s']['cifar10_cnn_bn/2']:,}",
    ),
    "train-94.speed.below-quiet": ("training-94-speed", _below_quiet),
    "lecture.float32.epoch-s": ("training-lecture", lambda r: r["results"]["float32"]["epoch_s"]),
    "lecture.keras": ("training-lecture", lambda r: f"{r['results']['keras']['test_accuracy']:g}"),
    "train-variants.bf16-fused-ratio": ("train-variants", _variants_ratio),
    "cifar-bn.whiten.first-epoch": _bn(
        "first_epoch_val_accuracy", lambda v: f"{v['cifar_whiten']:g}"
    ),
    "cifar-bn.bn.first-epoch": _bn("first_epoch_val_accuracy", lambda v: f"{v['cifar_bn']:g}"),
    "cifar-bn.run-9.epoch-s": _bn("epoch_s", lambda v: v["run 9"]),
    "cifar-bn.runs-8-10.epoch-s": _bn("epoch_s", lambda v: v["runs 8 and 10"]),
    "cifar-bn.probe.64-160-320": _probe("whitening plus 64-160-320"),
    "cifar-bn.probe.48-192-320": _probe("whitening plus 48-192-320"),
    "cifar-bn.probe.cifar-bn": _probe("cifar_bn"),
    "cifar-bn.run-8.keep-best.epoch": _bn("run_8_keep_best", lambda v: str(v["epoch"])),
    "cifar-bn.run-8.keep-best.test": _bn("run_8_keep_best", lambda v: f"{v['test_accuracy']:.4f}"),
    "cifar-bn.wider.images-per-s": _bn("wider_net", lambda v: f"{v['images_per_s']:,}"),
    "quantize.v2.int8": _quantize("cifar10_cnn_bn_int8/2", "int8_accuracy"),
    "quantize.v2.float": _quantize("cifar10_cnn_bn_int8/2", "float_accuracy"),
    "quantize.v2.agreement": _quantize("cifar10_cnn_bn_int8/2", "top1_agreement"),
    "quantize.v1.int8": _quantize("cifar10_cnn_bn_int8/1", "int8_accuracy"),
    "quantize.v1.float": _quantize("cifar10_cnn_bn_int8/1", "float_accuracy"),
}
