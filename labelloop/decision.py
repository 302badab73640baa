"""A decision rule tuned for macro-F1: per-class offsets added to a classifier's logits.

The argmax of a model's logits is the rule that maximises accuracy when the model is
calibrated; macro-F1 weighs every class's F1 alike, so a rarer class can be worth a few more
predictions than the argmax gives it. `training.decision_bias: macro_f1` fits one additive
offset per class on the validation rows (`fit_offsets`: a deterministic coordinate search over
a fixed grid), after training. The offsets are written into the bundle (`labelloop.json`,
`decision_bias`) and `labelloop.modeling.Classifier` adds them to every logit it returns, so
everything that predicts through a bundle (evaluation of the test split, the promotion
comparison, the service's batched and CUDA-graph paths, the annotation pool) decides with them.
Probabilities are the softmax of those offset logits: the label shown is always the most
probable one, and its score is that probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from labelloop import promotion

RULES = ("off", "macro_f1")
META_KEY = "decision_bias"
# Candidate offsets per class: -3 to +3 in steps of 0.05 (logit units). The search moves one
# class's offset at a time to the best grid value, the others fixed, until a round changes
# nothing (at most MAX_ROUNDS rounds).
GRID = np.round(np.arange(-3.0, 3.0 + 1e-9, 0.05), 4)
MAX_ROUNDS = 10
# Offsets fitted on a handful of rows fit their noise: on the 500-row subsamples (33-45
# validation rows, 5-7 of the rarest label) they moved test macro-F1 by -0.14 and +0.02
# (docs/benchmarks.md). Below this many validation rows of some label none are fitted.
MIN_ROWS_PER_LABEL = 30


def macro_f1_of(logits: np.ndarray, refs: np.ndarray,
                offsets: Optional[np.ndarray] = None) -> float:
    """Macro-F1 of argmax(logits + offsets) against `refs` (label ids)."""
    logits = np.asarray(logits, dtype=np.float64)
    if offsets is not None:
        logits = logits + offsets
    return promotion.score(refs, logits.argmax(axis=1), logits.shape[1], "macro_f1")


def _best_value(scores: np.ndarray, current: float) -> float:
    """The grid value to move to: the current one unless another scores strictly more; among
    equal best scores, the middle of the run of best values nearest to the current value (the
    offset then sits inside its plateau, not on its edge)."""
    best = scores.max()
    at_current = np.isclose(GRID, current)
    if at_current.any() and scores[at_current][0] >= best - 1e-12:
        return float(current)
    winners = np.flatnonzero(scores >= best - 1e-12)
    runs = np.split(winners, np.flatnonzero(np.diff(winners) > 1) + 1)
    nearest = min(runs, key=lambda r: (np.abs(GRID[r] - current).min(), r[0]))
    return float(GRID[nearest[len(nearest) // 2]])


def fit_offsets(logits: np.ndarray, refs: Sequence[int]) -> tuple[np.ndarray, dict[str, float]]:
    """Per-class additive offsets maximising macro-F1 of argmax(logits + offsets) on these rows,
    and {"before": macro-F1 without them, "after": with them}.

    Deterministic: coordinate ascent over classes in order, each offset on GRID, a move only
    for a strictly better score. Offsets are centred (mean 0; adding a constant to every class
    changes no decision). Zeros when no offset on the grid improves on the plain argmax."""
    logits = np.asarray(logits, dtype=np.float64)
    refs = np.asarray(refs, dtype=np.int64)
    n, k = logits.shape
    offsets = np.zeros(k)
    before = macro_f1_of(logits, refs)
    if n == 0 or k < 2:
        return offsets, {"before": before, "after": before}
    refs_grid = np.broadcast_to(refs, (len(GRID), n))
    for _ in range(MAX_ROUNDS):
        moved = False
        for c in range(k):
            trial = np.repeat((logits + offsets)[None, :, :], len(GRID), axis=0)
            trial[:, :, c] = logits[None, :, c] + GRID[:, None]
            scores = promotion._scores(refs_grid, trial.argmax(axis=2), k, "macro_f1")
            value = _best_value(scores, offsets[c])
            if value != offsets[c]:
                offsets[c], moved = value, True
        if not moved:
            break
    if offsets.any():
        offsets = np.round(offsets - offsets.mean(), 6)
    return offsets, {"before": before, "after": macro_f1_of(logits, refs, offsets)}


# -- the bundle's record -------------------------------------------------------------------
def offsets_from_meta(meta: dict[str, Any], labels: Sequence[str]) -> Optional[np.ndarray]:
    """The offsets a bundle records, in label order (float32); None when it records none."""
    record = meta.get(META_KEY) or {}
    given = record.get("offsets")
    if not given:
        return None
    offsets = np.array([float(given.get(lab, 0.0)) for lab in labels], dtype=np.float32)
    return offsets if offsets.any() else None


def fit_for_bundle(bundle_dir: Path, validation, rule: str = "macro_f1", device: str = "auto",
                   batch_size: int = 256,
                   min_rows_per_label: int = MIN_ROWS_PER_LABEL) -> dict[str, Any]:
    """Fit the rule on `validation` rows (text, label) with the bundle's own raw logits (as it
    will predict: its device, dtype, cleaning, truncation) and record it in the bundle's
    `labelloop.json`. Returns the record. With fewer than `min_rows_per_label` validation rows
    of some label the offsets stay zero (plain argmax) and the record says why."""
    import json

    from labelloop.modeling import BUNDLE_META, Classifier, read_bundle_meta

    if rule not in RULES or rule == "off":
        raise ValueError(f"decision bias rule {rule!r}: nothing to fit (known: {list(RULES)})")
    if validation is None or len(validation) == 0:
        raise ValueError("training.decision_bias needs validation rows to fit its offsets "
                         "(dataset.validation_fraction or dataset.validation)")
    clf = Classifier(bundle_dir, device=device)
    raw = clf.raw_logits(list(validation["text"]), batch_size)
    refs = [clf.task.encode_label(lab) for lab in validation["label"]]
    counts = np.bincount(np.asarray(refs, dtype=np.int64), minlength=len(clf.task.labels))
    skipped = None
    if counts.min() < min_rows_per_label:
        rare = clf.task.labels[int(counts.argmin())]
        skipped = (f"not fitted: {int(counts.min())} validation rows of {rare!r} (at least "
                   f"{min_rows_per_label} of every label; offsets fitted on fewer fit noise)")
        before = macro_f1_of(raw, np.asarray(refs))
        offsets, scores = np.zeros(len(clf.task.labels)), {"before": before, "after": before}
    else:
        offsets, scores = fit_offsets(raw, refs)
    record = {"rule": rule, "offsets": dict(zip(clf.task.labels, map(float, offsets))),
              "validation_rows": int(len(validation)),
              "validation_macro_f1_before": scores["before"],
              "validation_macro_f1": scores["after"]}
    if skipped:
        record["skipped"] = skipped
    meta = read_bundle_meta(bundle_dir)
    meta[META_KEY] = record
    (Path(bundle_dir) / BUNDLE_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    del clf
    return record


def describe(record: Optional[dict[str, Any]]) -> str:
    """One line for summaries: what the bundle's decision rule is."""
    if not record:
        return "off (argmax of the logits)"
    if record.get("skipped"):
        return f"{record['rule']}: {record['skipped']}: argmax of the logits"
    offsets = ", ".join(f"{lab} {v:+.2f}" for lab, v in record["offsets"].items())
    return (f"{record['rule']}: per-class logit offsets {offsets}, fitted on "
            f"{record['validation_rows']} validation rows (their macro-F1 "
            f"{record['validation_macro_f1_before']:.4f} -> {record['validation_macro_f1']:.4f})")
