"""Metrics per city and the cross-city gap: how much worse a held-out city scores than the training cities.

:func:`city_metrics` picks the headline numbers of one city from its metric files
(``features.json`` of score, ``detect.json`` of evaluate_detect): per segmentation class the
polygon F1 (on the score split: the test split of a training city, the whole of a held-out one,
whose tiles are all ``test``) and the new-feature precision and recall; per detector its mAP@0.5 and AP@0.5 per name.
:func:`cross_city_gap` sets the held-out cities' numbers next to the training cities' (the mean
over each role) and gives ``held_out - in_city`` per metric, the worst of them, and whether it is
within ``tolerance`` (the goal: 0.05). The counts behind the new-feature scores travel with them
(lots found, unmapped lots; summed per role): with 6 unmapped lots, one lot moves recall by 0.17,
more than the tolerance, and a reader of the gap should see that. A detector's gap is taken over the names that both
roles score (:data:`SHARED`): test splits differ in which arrows they hold. Both are pure;
:func:`write_gap` writes the JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from navml.io import write_json

#: Headline metrics of a segmentation class and of the detector, as named in the gap file.
SEGMENTATION_METRICS = ("polygon_f1", "new_precision", "new_recall")
DETECTION_METRICS = ("map50",)
#: Counts of a segmentation class (new features matched, unmapped truth lots): summed per role, no gap.
COUNTS = ("new_found", "new_unmapped")
#: A detector's AP@0.5 per detection name (classes with test truths), from which :data:`SHARED` is taken.
PER_CLASS = "ap50"
#: The detector's mAP@0.5 over the names scored in both roles: its gap replaces the gap of ``map50``, whose class sets
#: differ from city to city (a test split without any ``left_right`` arrow scores one hard class fewer).
SHARED = "map50_shared"
#: The goal of issue 10: a held-out city within this of the training cities.
TOLERANCE = 0.05


def city_metrics(features: Mapping[str, Any] | None, detect: Mapping[str, Any] | None = None, detector: str = "detector") -> dict:
    """``{class: {polygon_f1, new_precision, new_recall, new_found, new_unmapped}, detector: {map50}}`` of one city's
    metric files (either may be None)."""
    out: dict[str, dict[str, float | None]] = {}
    if features:
        split = features.get("split", "test")
        for name, m in features.items():
            if isinstance(m, Mapping) and "new_features" in m:
                poly, new = m.get(split) or {}, m["new_features"]
                out[name] = {"polygon_f1": poly.get("f1"), "new_precision": new.get("precision"), "new_recall": new.get("recall"),
                             "new_found": new.get("tp"), "new_unmapped": new.get("truth")}
    if detect:
        per = {name: float(m["ap50"]) for name, m in (detect.get("classes") or {}).items()
               if isinstance(m, Mapping) and m.get("ap50") is not None and not math.isnan(float(m["ap50"]))}
        out[detector] = {"map50": detect.get("map50"), **({PER_CLASS: per} if per else {})}
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(vals) / len(vals), 4) if vals else None


def _sum(values: list[int | None]) -> int | None:
    vals = [int(v) for v in values if v is not None]
    return sum(vals) if vals else None


def _per_class(values: list[Mapping[str, float] | None]) -> dict[str, float]:
    """The mean AP per name over the cities that score it."""
    names = sorted({n for v in values if v for n in v})
    return {n: _mean([v.get(n) for v in values if v]) for n in names}


def cross_city_gap(cities: Mapping[str, Mapping[str, Any]], roles: Mapping[str, str], tolerance: float = TOLERANCE) -> dict:
    """The gap file: ``cities`` (per city: role and :func:`city_metrics`), ``in_city`` and ``held_out`` (means over the
    ``train`` and ``predict`` cities per class and metric, sums of the :data:`COUNTS`, a detector's AP per name averaged
    over the cities that score it and :data:`SHARED`), ``gap`` (``held_out - in_city``, negative = worse; for a detector
    with per-name APs the gap of :data:`SHARED` instead of ``map50``),
    ``worst_gap`` (the most negative), ``tolerance`` and ``within`` (worst gap >= -tolerance; None without both roles)."""
    unknown = sorted(set(cities) - set(roles))
    if unknown:
        raise ValueError(f"no role for city '{unknown[0]}'")
    by_role: dict[str, dict[str, dict[str, list]]] = {"train": {}, "predict": {}}
    for city, metrics in cities.items():
        role = roles[city]
        for cls, values in metrics.items():
            for key, v in values.items():
                by_role[role].setdefault(cls, {}).setdefault(key, []).append(v)
    means = {role: {cls: {k: _per_class(v) if k == PER_CLASS else _sum(v) if k in COUNTS else _mean(v) for k, v in ms.items()}
                    for cls, ms in group.items()} for role, group in by_role.items()}
    for cls, held in means["predict"].items():  # mAP over the names both roles score
        own = means["train"].get(cls, {})
        shared = sorted(set(held.get(PER_CLASS) or {}) & set(own.get(PER_CLASS) or {}))
        if shared:
            held[SHARED] = _mean([held[PER_CLASS][n] for n in shared])
            own[SHARED] = _mean([own[PER_CLASS][n] for n in shared])
    gap: dict[str, dict[str, float]] = {}
    for cls, ms in means["predict"].items():
        for key, held in ms.items():
            if key in COUNTS or key == PER_CLASS or key == "map50" and SHARED in ms:
                continue
            own = means["train"].get(cls, {}).get(key)
            if held is not None and own is not None:
                gap.setdefault(cls, {})[key] = round(held - own, 4)
    worst = min((v for ms in gap.values() for v in ms.values()), default=None)
    return {
        "cities": {c: {"role": roles[c], **cities[c]} for c in cities},
        "in_city": means["train"],
        "held_out": means["predict"],
        "gap": gap,
        "worst_gap": worst,
        "tolerance": tolerance,
        "within": None if worst is None else worst >= -tolerance,
    }


def write_gap(path: str | os.PathLike, cities: Mapping[str, Mapping[str, Any]], roles: Mapping[str, str], tolerance: float = TOLERANCE) -> dict:
    """:func:`cross_city_gap` written to ``path`` (atomically); returns it."""
    gap = cross_city_gap(cities, roles, tolerance)
    write_json(path, gap)
    return gap
