"""Training benchmark: fine-tune, and compare with the TF-IDF + LR baseline on the same split.

Two cases, each with the baseline (labelloop.baseline, the one every training run logs) fitted
on the same rows in the same process:

- `full`: the whole default corpus, split by text hash as the pipeline splits it;
- `small`: a 500-row, imbalanced, stable subsample of the default corpus (per label, the rows
  first in a salted hash order, at the shares of `--small-shares`: all three labels, the
  minority under 20%), split by text hash like any dataset (about 400 training and 100 test
  rows). `--draws K` repeats it on K disjoint-by-salt subsamples. Because ~100 test rows are
  noisy, each small model is also scored on `wide`: 2,000 rows of the corpus's frozen test split
  at the same shares (never trained on: the split is by hash, so they are not in any draw's
  training rows), against the baseline of the same draw.

Prints per run: macro-F1 and accuracy, the ratio to the baseline, training wall time and
samples/s; ranges over draws and seeds. Uses the same code as the pipeline (labelloop.data /
training / evaluation / baseline), minus ZenML and MLflow, so it also runs on a bare GPU box.

    python benchmarks/training.py                       # the configured default, full corpus
    python benchmarks/training.py --run fast:method=full,epochs=1,learning_rate=1e-4
    python benchmarks/training.py --case small --draws 3 --seeds 1 2   # the small case (CPU: minutes)
    python benchmarks/training.py --case full small --json docs/training.json

Runs go in the order given; `--run CASE/NAME:...` runs on that case only. Each run overrides
`training.*` or `model.*` keys (`class_weights=auto`, `max_steps=400`, `decision_bias=macro_f1`,
`pooling=cls`, ...), or the dataset keys `validation_fraction=0.1` (validation rows carved
from the training rows, for `keep_best` and `decision_bias`), `weight_column=confidence`
(per-row loss weights from that corpus column: the annotators' agreement; its 5,460 empty
cells need `missing_weight=1.0` or so) and `min_weight=0.5` (drop lighter training rows;
the test split stays whole); `--run default:` is the configured default. Every run's
overrides are checked against the settings before the first run starts. With
`decision_bias`, the test figures are with the fitted offsets, and `raw` holds the same
model's plain-argmax figures.

    python benchmarks/training.py --run default: \
        --run w:weight_column=confidence,missing_weight=1.0 \
        --run bias:validation_fraction=0.1,decision_bias=macro_f1

Two more kinds of keys, tried for the 0.82 target (docs/benchmarks.md, fifteenth session):
`adapt_epochs=E` (with `adapt_lr`, `adapt_batch`) first adapts the base by masked-LM passes over
the corpus's training-split texts (labelloop/adaptation.py); `teacher=NAME` (with
`distill_alpha=A`) fine-tunes on the mean probabilities of run NAME's seeds (an earlier run),
and `soft_from_weight=1` on the weight column's agreement, as soft targets.

    python benchmarks/training.py --seeds 0 1 2 --run full2:method=full,epochs=2 \
        --run kd:teacher=full2,method=full,epochs=2 --run t3:adapt_epochs=3,adapt_lr=5e-5

`crossfit=K` makes a run a cross-fitted teacher: per seed, K fine-tunes, each without one fold
of the training rows, whose probabilities on the fold they did not see are what `teacher=NAME`
distils (out-of-fold, so not the near one-hot a model has on its own training rows);
`nseeds=N` gives a run only the first N of `--seeds`.

    python benchmarks/training.py --seeds 0 1 2 --run mpcf:base=DIR,crossfit=5,nseeds=1 \
        --run kd:teacher=mpcf,method=full,epochs=2

`augment=N` on a crossfit run also has each fit label N altered copies (words dropped or swapped,
some cropped: augment()) of the rows it did not see; `augmented=1` on a student adds those
copies to its rows, their target the teacher's probabilities alone. `--teachers FILE` keeps the
crossfit teachers' probabilities (and copies) in FILE, so a later call reuses them.

    python benchmarks/training.py --seeds 0 1 --teachers /tmp/teachers.pkl \
        --run cf:crossfit=5,nseeds=1,augment=3 --run kda:teacher=cf,distill_alpha=0.5,augmented=1

`--ensemble` with several `--seeds` also scores each run's seeds together, on the same test rows:
their ensemble (mean probabilities) and their uniform soup (mean weights), for 2..N of them.

    python benchmarks/training.py --seeds 0 1 2 --ensemble --run default:

`--blend-baseline` also scores every model and ensemble mixed with the TF-IDF baseline's
probabilities, (1 - w) x model + w x baseline: two kinds of model whose errors differ. It reports
each w of BLEND_WEIGHTS on the test rows and, as the figure to quote, w cross-fitted on halves of
the test rows (chosen on one, scored on the other).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labelloop  # noqa: E402,F401
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from labelloop import (adaptation, baseline, data, decision, distributed, evaluation, modeling,  # noqa: E402
                       training)
from labelloop.cleaning import Cleaning  # noqa: E402
from labelloop.settings import Settings, _format_validation_error, load_settings  # noqa: E402
from labelloop.tasks import task_from_settings  # noqa: E402

MODEL_KEYS = {"base", "max_length", "pooling"}
# validation_fraction=F: that share of the case's training rows becomes validation rows, as
# dataset.validation_fraction carves it (for training.keep_best, early stopping, decision_bias);
# weight_column=C / missing_weight=M / min_weight=W: those dataset.* keys on the training rows
DATA_KEYS = {"validation_fraction", "weight_column", "missing_weight", "min_weight"}
# urls=token|remove, mentions=token: those dataset.cleaning keys for this run, applied to its
# training rows and recorded in its bundle (so scoring cleans the test texts the same way);
# the split stays the case's (made before this cleaning), so runs stay paired
CLEAN_KEYS = {"urls", "mentions"}
# adapt_epochs=E (adapt_lr, adapt_batch): task-adaptive pretraining of the base first
# (labelloop/adaptation.py): masked-LM passes over the full corpus's training-split texts,
# unlabelled, never a test text; once per call and setting, shared by the runs that ask for it
ADAPT_KEYS = {"adapt_epochs": 10.0, "adapt_lr": 1e-4, "adapt_batch": 128}
ADAPTED: dict[tuple, Path] = {}
# teacher=NAME: knowledge distillation, the loss fits soft targets (data.SOFT_TARGETS):
# distill_alpha x the mean probabilities of run NAME's seeds (an earlier run on the same case)
# on the training rows + (1 - distill_alpha) x the one-hot label. soft_from_weight=1: the soft
# target is the weight column's agreement instead (that share on the label, the rest spread
# over the others; rows without a value one-hot)
# augmented=1 (with teacher=NAME, a crossfit teacher with augment=N): also train on the
# teacher's augmented copies of the training rows, their soft target the teacher's alone
SOFT_KEYS = {"teacher", "distill_alpha", "soft_from_weight", "augmented"}
TEACHERS: dict[tuple, "numpy.ndarray"] = {}  # (case, draw, run name) -> train rows x labels
# (case, draw, run name) -> (augmented texts, their teacher probabilities: texts x labels)
AUGMENTED: dict[tuple, tuple[list, "numpy.ndarray"]] = {}
TEACHER_RECIPES: dict[tuple, str] = {}  # (case, draw, run name) -> its --run and --config
# crossfit=K: the run is fitted K times per seed, each time without one of K folds of the
# training rows (by a salted text hash), and predicts the fold it did not see. As a teacher it
# then gives out-of-fold probabilities: a model's view of rows it was not trained on, not the
# near one-hot it has for its own training rows. nseeds=N: the run uses the first N of --seeds.
# augment=N (with crossfit): the teacher also labels N augmented copies of each training row
# (augment()), each by the fit that did not see the row it came from: more texts for a student
# to learn the teacher from (Tang et al., 2019, "Distilling task-specific knowledge from BERT").
RUN_KEYS = {"crossfit", "nseeds", "augment"}


def parse_run(spec: str) -> tuple[str, dict, dict]:
    name, _, rest = spec.partition(":")
    train_over, model_over = {}, {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        target = model_over if key in MODEL_KEYS | DATA_KEYS | CLEAN_KEYS | set(ADAPT_KEYS) \
            | SOFT_KEYS | RUN_KEYS else train_over
        try:
            target[key] = json.loads(value)
        except ValueError:
            target[key] = value
    return name or "default", train_over, model_over


def shares_of(spec: str) -> dict[str, float]:
    return {k: float(v) for k, v in (item.split("=") for item in spec.split(","))}


def stable_sample(df: pd.DataFrame, salt: str, shares: dict[str, float], rows: int) -> pd.DataFrame:
    """Per label, its first rows in a salted hash order: the same rows on every machine."""
    parts = []
    for label, share in shares.items():
        of_label = df[df["label"] == label]
        order = of_label["text"].map(lambda t: data.text_bucket(salt + t)).sort_values().index
        parts.append(of_label.loc[order[:round(rows * share)]])
    return pd.concat(parts).sort_index().reset_index(drop=True)


def check_runs(specs: list[str], settings) -> tuple[Optional[str], Optional[float]]:
    """Every run's overrides as settings would take them (a typo or a bad value fails here,
    before any run); returns the one weight column the runs use and its missing_weight
    (None: none)."""
    columns = set()
    for spec in specs:
        name, train_over, model_over = parse_run(spec.partition(":")[0].rpartition("/")[2]
                                                 + ":" + spec.partition(":")[2])
        dataset = {k: v for k, v in model_over.items() if k in DATA_KEYS}
        model = {k: v for k, v in model_over.items() if k in MODEL_KEYS}
        raw = settings.model_dump()
        raw["training"].update(train_over)
        raw["model"].update(model)
        raw["dataset"].update(dataset)
        raw["dataset"]["cleaning"].update({k: v for k, v in model_over.items() if k in CLEAN_KEYS})
        try:
            Settings.model_validate(raw)
        except ValidationError as exc:
            raise SystemExit(_format_validation_error(exc, f"--run {spec}")) from None
        for key in set(ADAPT_KEYS) & set(model_over):
            if not isinstance(model_over[key], (int, float)) or model_over[key] <= 0:
                raise SystemExit(f"--run {spec}: {key} must be a number above 0")
        for key, least in (("crossfit", 2), ("nseeds", 1), ("augment", 1)):
            if key in model_over and (not isinstance(model_over[key], int)
                                      or model_over[key] < least):
                raise SystemExit(f"--run {spec}: {key} must be a whole number, at least {least}")
        if model_over.get("crossfit") and (model_over.get("teacher") or set(DATA_KEYS) & set(model_over)):
            raise SystemExit(f"--run {spec}: crossfit fits the case's training rows as they are "
                             "(no teacher, validation or weight keys)")
        if model_over.get("augment") and not model_over.get("crossfit"):
            raise SystemExit(f"--run {spec}: augment labels copies with a crossfit teacher's "
                             "fits: it needs crossfit=K")
        if model_over.get("augmented") and not model_over.get("teacher"):
            raise SystemExit(f"--run {spec}: augmented=1 trains on a teacher's augmented copies: "
                             "it needs teacher=NAME")
        if dataset.get("weight_column"):
            columns.add((dataset["weight_column"], dataset.get("missing_weight")))
    if len(columns) > 1:
        raise SystemExit(f"the runs read weights in several ways {sorted(columns, key=str)}: "
                         "one weight_column and missing_weight per call")
    return columns.pop() if columns else (None, None)


def build_cases(args, settings, task, weights: tuple = (None, None)) -> list[dict]:
    """The cases' rows; with a weight column (`weights`: column, missing_weight), training rows
    carry its values (`weight`) for the runs that ask for them (the others and the baselines
    drop it)."""
    if weights[0]:
        settings = settings.model_copy(update={"dataset": settings.dataset.model_copy(
            update={"weight_column": weights[0], "missing_weight": weights[1]})})
    df = data.load_labelled(settings.dataset, task)
    train, test = data.split(df, settings.dataset.test_fraction)
    test = test.drop(columns=[data.WEIGHT], errors="ignore")
    cases = []
    # the unlabelled texts a run's adapt_* keys pretrain on: every training-split text
    pool = list(train["text"])
    agreement = None
    if getattr(args, "by_agreement", None):  # 0.0 marks an empty cell (no value is below 0.25)
        rows = data.load_labelled(settings.dataset.model_copy(update={
            "weight_column": args.by_agreement, "missing_weight": 0.0}), task)
        agreement = dict(zip(rows["text"], rows[data.WEIGHT]))
    if "full" in args.case:
        full_test = data.limit_rows(test, args.test_rows)
        cases.append({"case": "full", "draw": 0,
                      "train": data.limit_rows(train, args.max_train_rows
                                               or settings.dataset.max_train_rows),
                      "test": full_test, "extra": {}, "pool": pool,
                      "agreement": None if agreement is None
                      else full_test["text"].map(agreement).to_numpy()})
    if "small" in args.case:
        shares = shares_of(args.small_shares)
        wide = stable_sample(test, "wide:", shares, args.wide_rows)
        for k in range(args.draws):
            sample = stable_sample(df, f"small{k}:", shares, args.small_rows)
            s_train, s_test = data.split(sample, settings.dataset.test_fraction)
            s_test = s_test.drop(columns=[data.WEIGHT], errors="ignore")
            counts = sample["label"].value_counts()
            assert set(counts.index) == set(task.labels), counts
            assert counts.min() / len(sample) < 0.2, counts
            cases.append({"case": "small", "draw": k, "train": s_train, "test": s_test,
                          "extra": {"wide": wide}, "pool": pool})
    return cases


# Test rows by the annotators' agreement (--by-agreement): the share who chose the gold label
AGREEMENT_BUCKETS = [("no value", 0.0, 0.0), ("below 0.6", 1e-9, 0.6), ("0.6-0.8", 0.6, 0.8),
                     ("0.8-0.9", 0.8, 0.9), ("0.9 and up", 0.9, 1.01)]


def by_agreement(refs: list, preds: list, agreement, task) -> dict:
    """Macro-F1 and accuracy of `preds` on the rows of each agreement bucket."""
    import numpy as np

    out = {}
    for name, lo, hi in AGREEMENT_BUCKETS:
        rows = np.flatnonzero(agreement == 0.0) if hi == 0.0 else \
            np.flatnonzero((agreement >= lo) & (agreement < hi))
        if len(rows):
            m = evaluation.compute_metrics([refs[i] for i in rows], [preds[i] for i in rows], task)
            out[name] = {"rows": int(len(rows)), "macro_f1": float(m["macro_f1"]),
                         "accuracy": float(m["accuracy"])}
    return out


def score(clf, test, task, batch_size, agreement=None) -> dict:
    ev = evaluation.evaluate_classifier(clf, test, batch_size)
    out = {"accuracy": ev.metrics["accuracy"], "macro_f1": ev.metrics["macro_f1"],
           "predicted_share": ev.predictions["predicted"].value_counts(normalize=True)
           .round(3).to_dict()}
    if agreement is not None:
        out["by_agreement"] = by_agreement(
            [task.encode_label(x) for x in test["label"]],
            [task.encode_label(x) for x in ev.predictions["predicted"]], agreement, task)
    return out


def fit_baselines(case, task, weightings) -> dict:
    """The baseline per split (test, wide) under the first weighting; the others beside it."""
    out = {}
    for i, weighting in enumerate(weightings):
        weights = training.class_weights(weighting, list(case["train"]["label"]), task)
        rows = case["train"].drop(columns=[data.WEIGHT], errors="ignore")  # unweighted rows
        for split_name, test in [("test", case["test"]), *case["extra"].items()]:
            b = baseline.fit_and_score(rows, test, task, weights)
            key = split_name if i == 0 else f"{split_name}_class_weights_{weighting}"
            if i == 0:  # for --blend-baseline
                case.setdefault("baseline_probs", {})[split_name] = b.probabilities
            out[key] = {**b.metrics, "seconds": b.fit_seconds, "class_weights": weighting}
    return out


BLEND_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5)


def blend(model_probs, baseline_probs, refs: list, task) -> dict:
    """The model's probabilities mixed with the baseline's, (1 - w) x model + w x baseline:
    macro-F1 on the test rows for each w of BLEND_WEIGHTS (choosing the best of them on the
    very rows it is scored on flatters it), and `cross_fitted`, the honest figure: w chosen on
    every other test row and applied to the rows between them, both ways, macro-F1 of the
    predictions put together (w = 0, the model alone, is a choice too)."""
    import numpy as np

    refs = np.asarray(refs)

    def predicted(w):
        return ((1 - w) * model_probs + w * baseline_probs).argmax(axis=1)

    def f1(pred, rows=slice(None)):
        return float(evaluation.compute_metrics(list(refs[rows]), list(pred[rows]), task)["macro_f1"])

    preds = {w: predicted(w) for w in (0.0, *BLEND_WEIGHTS)}
    out = {"by_weight": {str(w): f1(p) for w, p in preds.items() if w}}
    half = np.arange(len(refs)) % 2 == 0  # every other row: both halves span the whole corpus
    chosen, cross = [], np.empty(len(refs), dtype=np.int64)
    for fit_rows in (half, ~half):
        w = max(preds, key=lambda w: f1(preds[w], fit_rows))
        chosen.append(w)
        cross[~fit_rows] = preds[w][~fit_rows]
    out["cross_fitted"] = {"macro_f1": f1(cross), "weights": chosen,
                           "model_alone": f1(preds[0.0])}
    return out


def describe_blend(got: dict) -> str:
    cross = got["cross_fitted"]
    return ("blend with the baseline: " + " ".join(f"w{w} {v:.4f}" for w, v in got["by_weight"].items())
            + f"; cross-fitted {cross['macro_f1']:.4f} (w {cross['weights']}, model alone "
            f"{cross['model_alone']:.4f})")


def adapted_base(model_cfg, adapt: dict, pool: list[str], device: str) -> Path:
    """The base after task-adaptive pretraining on `pool` with `adapt`'s settings: made on
    first use, then shared (by every seed and case that asks for the same settings)."""
    key = (model_cfg.base, tuple(sorted(adapt.items())))
    if key not in ADAPTED:
        out = Path(tempfile.mkdtemp(prefix="adapted-"))
        r = adaptation.adapt_base(model_cfg.base, pool, out, epochs=adapt["adapt_epochs"],
                                  batch_size=int(adapt["adapt_batch"]),
                                  learning_rate=adapt["adapt_lr"],
                                  max_length=model_cfg.max_length, device=device)
        print(f"    adapted the base: {r.steps} masked-LM steps over {r.texts} texts in "
              f"{r.seconds:.1f}s, loss {r.first_loss:.3f} -> {r.final_loss:.3f}", flush=True)
        ADAPTED[key] = r.path
        ADAPT_LOG.append({**adapt, "texts": r.texts, "steps": r.steps, "seconds": r.seconds,
                          "first_loss": r.first_loss, "final_loss": r.final_loss})
    return ADAPTED[key]


ADAPT_LOG: list[dict] = []


def with_soft_targets(train: pd.DataFrame, model_over: dict, case: dict, task) -> pd.DataFrame:
    """`train` with its data.SOFT_TARGETS column (see SOFT_KEYS), the weight column dropped."""
    import numpy as np

    k = len(task.labels)
    onehot = np.eye(k, dtype=np.float32)[[task.encode_label(x) for x in train["label"]]]
    if model_over.get("teacher"):
        key = (case["case"], case["draw"], model_over["teacher"])
        if key not in TEACHERS:
            raise SystemExit(f"teacher {model_over['teacher']!r}: no earlier run of that name "
                             f"on case {case['case']}#{case['draw']} (it must run first)")
        if len(train) != len(case["train"]):
            raise SystemExit("teacher: the run must train on the case's training rows as they "
                             "are (no validation_fraction or min_weight)")
        alpha = float(model_over.get("distill_alpha", 1.0))
        soft = alpha * TEACHERS[key] + (1 - alpha) * onehot
    else:
        agreement = train[data.WEIGHT].to_numpy(dtype=np.float32)[:, None]
        known = ~np.isnan(agreement)
        agreement = np.where(known, agreement, 1.0)
        soft = agreement * onehot + (1 - agreement) * (1 - onehot) / (k - 1)
    soft = soft / soft.sum(axis=1, keepdims=True)
    train = train.drop(columns=[data.WEIGHT], errors="ignore").assign(
        **{data.SOFT_TARGETS: list(soft.astype(np.float32))})
    if model_over.get("augmented"):
        key = (case["case"], case["draw"], model_over["teacher"])
        if key not in AUGMENTED:
            raise SystemExit(f"augmented=1: teacher {model_over['teacher']!r} made no augmented "
                             "copies (give it augment=N)")
        texts, probs = AUGMENTED[key]
        train = pd.concat([train, pd.DataFrame({
            "text": texts, "label": [task.labels[i] for i in probs.argmax(axis=1)],
            data.SOFT_TARGETS: list(probs.astype(np.float32))})], ignore_index=True)
    return train


def probabilities(clf, texts, batch_size: int) -> "numpy.ndarray":
    """The classifier's probabilities on `texts` (rows x labels)."""
    return torch.softmax(torch.from_numpy(clf.logits(list(texts), batch_size)), dim=-1).numpy()


def teacher_probabilities(bundle_dirs, texts, settings) -> "numpy.ndarray":
    """The mean of the bundles' probabilities on `texts` (rows x labels)."""
    return sum(probabilities(modeling.Classifier(d, device=settings.training.device), texts,
                             settings.evaluation.batch_size) for d in bundle_dirs) / len(bundle_dirs)


def fold_of(texts, folds: int) -> "numpy.ndarray":
    """Each text's fold in 0..folds-1, by a salted hash: stable, and independent of the test
    split's hash (the training rows all have a low unsalted bucket)."""
    import numpy as np

    return np.array([int(data.text_bucket("crossfit:" + t) * folds) for t in texts])


def augment(texts, copies: int, rate: float = 0.1, crop: float = 0.25) -> tuple[list, list]:
    """`copies` altered copies of each text (Tang et al., 2019): each word dropped with
    probability `rate` or swapped for a word of another text with probability `rate`, and with
    probability `crop` only a random run of at least half the words kept. Returns (the source
    text's index, the copy) lists. Stable: the same copies on every machine and every seed."""
    import random

    words = [t.split() for t in texts]
    vocabulary = [w for ws in words for w in ws]
    sources, out = [], []
    for i, ws in enumerate(words):
        for c in range(copies):
            rng = random.Random(f"augment:{c}:{texts[i]}")
            kept = []
            for w in ws:
                roll = rng.random()
                if roll < rate:
                    continue
                kept.append(rng.choice(vocabulary) if roll < 2 * rate else w)
            kept = kept or ws[:1]
            if len(kept) > 1 and rng.random() < crop:
                span = rng.randint((len(kept) + 1) // 2, len(kept))
                start = rng.randint(0, len(kept) - span)
                kept = kept[start:start + span]
            sources.append(i)
            out.append(" ".join(kept))
    return sources, out


def crossfit(run: tuple, settings, case, task, seed, root: Path, results: list) -> tuple:
    """Out-of-fold probabilities of `run` (parse_run's name, training and other overrides, with
    crossfit=K) on the case's training rows (rows x labels), for one seed: K fine-tunes, each
    without one fold, each predicting that fold. Each fold model is also scored on the test
    rows (a row in `results`, named NAME/foldK). With augment=N, also each fit's probabilities
    on the augmented copies of its fold's rows: returns (out-of-fold, copies, their
    probabilities or None)."""
    import numpy as np

    name, train_over, model_over = run
    folds = model_over["crossfit"]
    copies = model_over.get("augment", 0)
    model_over = {k: v for k, v in model_over.items() if k not in RUN_KEYS}
    train = case["train"]
    fold = fold_of(train["text"], folds)
    oof = np.zeros((len(train), len(task.labels)), dtype=np.float32)
    sources, extra = augment(list(train["text"]), copies)  # ([], []) without augment
    extra, extra_fold = np.array(extra, dtype=object), fold[np.array(sources, dtype=int)]
    extra_probs = np.zeros((len(extra), len(task.labels)), dtype=np.float32)
    for k in range(folds):
        held = fold == k
        bundle = root / f"seed{seed}-fold{k}"
        results.append(run_once(f"{name}/fold{k}", train_over, model_over, settings,
                                {**case, "train": train[~held].reset_index(drop=True)}, task,
                                seed, keep_dir=bundle))
        clf = modeling.Classifier(bundle, device=settings.training.device)
        oof[held] = probabilities(clf, train["text"][held], settings.evaluation.batch_size)
        if copies:
            extra_probs[extra_fold == k] = probabilities(
                clf, extra[extra_fold == k].tolist(), settings.evaluation.batch_size)
        del clf
    refs = [task.encode_label(x) for x in train["label"]]
    m = evaluation.compute_metrics(refs, list(oof.argmax(axis=1)), task)
    print(f"    {name} seed {seed or settings.training.seed}: out-of-fold macro-F1 on the {len(train)} training rows "
          f"{m['macro_f1']:.4f}  acc {m['accuracy']:.4f}"
          + (f"; {len(extra)} augmented copies labelled" if copies else ""), flush=True)
    return oof, extra.tolist(), extra_probs if copies else None


def save_teachers(path: Path, cases: list) -> None:
    """TEACHERS and AUGMENTED as a pickle, each with the digest of its case's training rows;
    xz-compressed when the name ends in .xz (a teacher kept in the repository: 3 MB, not 10)."""
    import lzma
    import pickle

    digests = {(c["case"], c["draw"]): data.digest(c["train"]) for c in cases}
    blob = pickle.dumps({"teachers": {k: (digests[k[:2]], v) for k, v in TEACHERS.items()},
                         "augmented": AUGMENTED, "recipes": TEACHER_RECIPES})
    path.write_bytes(lzma.compress(blob) if path.suffix == ".xz" else blob)


def load_teachers(path: Path, cases: list) -> None:
    """What save_teachers wrote, for the cases whose training rows are the same (main refits a
    teacher whose recipe differs)."""
    import lzma
    import pickle

    blob = path.read_bytes()
    saved = pickle.loads(lzma.decompress(blob) if path.suffix == ".xz" else blob)
    digests = {(c["case"], c["draw"]): data.digest(c["train"]) for c in cases}
    for key, (digest, probs) in saved["teachers"].items():
        if digests.get(key[:2]) == digest:
            TEACHERS[key] = probs
            TEACHER_RECIPES[key] = saved.get("recipes", {}).get(key, "")
            if key in saved["augmented"]:
                AUGMENTED[key] = saved["augmented"][key]
            print(f"teacher {key[2]} on {key[0]}#{key[1]}: read from {path}")


def run_once(name, train_over, model_over, settings, case, task, seed,
             keep_dir: Optional[Path] = None) -> dict:
    """One fine-tune and its scores. `keep_dir`: write the bundle there and keep it (for
    --ensemble); else it lives in a temporary directory for the scoring only."""
    cfg = settings.training.model_copy(update={**train_over, **({"seed": seed} if seed else {})})
    fraction = model_over.get("validation_fraction", 0)
    model_cfg = settings.model.model_copy(update={k: v for k, v in model_over.items()
                                                  if k in MODEL_KEYS})
    adapt = {k: model_over.get(k, v) for k, v in ADAPT_KEYS.items()} \
        if set(ADAPT_KEYS) & set(model_over) else None
    if adapt:
        model_cfg = model_cfg.model_copy(update={"base": str(adapted_base(
            model_cfg, adapt, case["pool"], settings.training.device))})
    train, validation, dropped = case["train"], None, 0
    if fraction:
        train, validation = data.split_validation(train, fraction)
        validation = validation.drop(columns=[data.WEIGHT], errors="ignore")
    if model_over.get("weight_column"):  # as data.load_splits: training rows only, after splits
        train, dropped = data.drop_light_rows(train, model_over.get("min_weight"))
    else:
        train = train.drop(columns=[data.WEIGHT], errors="ignore")
    if model_over.get("teacher") or model_over.get("soft_from_weight"):
        train = with_soft_targets(train, model_over, case, task)
    cleaning = Cleaning.from_settings(settings.dataset.cleaning.model_copy(
        update={k: v for k, v in model_over.items() if k in CLEAN_KEYS}))
    if set(CLEAN_KEYS) & set(model_over):
        train = train.assign(text=cleaning.series(train["text"]))
        if validation is not None:
            validation = validation.assign(text=cleaning.series(validation["text"]))
    cfg = training.resolve(cfg, len(train))
    sched = training.plan(cfg, len(train))
    print(f"\n--- {case['case']}#{case['draw']} {name} seed {cfg.seed}: {cfg.method} "
          f"lr={cfg.learning_rate} batch={sched.batch_size} steps={sched.steps} "
          f"({sched.epochs(len(train)):.1f} epochs of {len(train)} rows) "
          f"class_weights={cfg.class_weights} max_length={model_cfg.max_length} "
          f"pooling={model_cfg.pooling}"
          + (f" weights={model_over['weight_column']} (mean {train[data.WEIGHT].mean():.3f}"
             + (f", {dropped} rows below min_weight {model_over['min_weight']} dropped"
                if model_over.get("min_weight") is not None else "") + ")"
             if data.WEIGHT in train else "")
          + (f" decision_bias={cfg.decision_bias}" if cfg.decision_bias != "off" else "")
          + "".join(f" {k}={model_over[k]}" for k in sorted(set(ADAPT_KEYS) | SOFT_KEYS | CLEAN_KEYS)
                    if k in model_over),
          flush=True)
    # num_processes=N: N data-parallel processes (labelloop/distributed.py); 1: this process
    result = distributed.fine_tune(train, task, model_cfg, cfg, progress=False,
                                   validation=validation)
    out = {"case": case["case"], "draw": case["draw"], "name": name, "seed": cfg.seed,
           "method": cfg.method, "lr": cfg.learning_rate, "batch_size": sched.batch_size,
           "steps": sched.steps, "epochs": sched.epochs(len(train)),
           "class_weights": cfg.class_weights, "max_length": model_cfg.max_length,
           "pooling": getattr(result.model.config, modeling.POOLING_KEY, "cls"),
           "num_processes": cfg.num_processes,
           "overrides": {**train_over, **model_over}, "train_rows": len(train),
           "test_rows": len(case["test"]), "train_seconds": result.train_seconds,
           "samples_per_second": result.samples_per_second,
           "validation_rows": 0 if validation is None else len(validation),
           "validation_curve": result.validation_curve, "kept_step": result.kept_step,
           "weight_column": model_over.get("weight_column"),
           "min_weight": model_over.get("min_weight"), "min_weight_dropped": dropped,
           "decision_bias": cfg.decision_bias}
    with (contextlib.nullcontext(str(keep_dir)) if keep_dir else tempfile.TemporaryDirectory()) as tmp:
        modeling.save_bundle(result.model, result.tokenizer, Path(tmp), {
            "task": task.to_dict(), "max_length": model_cfg.max_length,
            "base_model": model_cfg.base, **modeling.text_meta(cleaning, model_cfg.truncation)})
        if cfg.decision_bias != "off":  # as the pipeline's fine-tune step: into the bundle
            start = time.perf_counter()
            out["decision_bias_fit"] = decision.fit_for_bundle(
                Path(tmp), validation, cfg.decision_bias, device=cfg.device,
                batch_size=settings.evaluation.batch_size)
            out["decision_bias_seconds"] = time.perf_counter() - start
        clf = modeling.Classifier(tmp, device=cfg.device)
        start = time.perf_counter()
        out.update(score(clf, case["test"], task, settings.evaluation.batch_size,
                         case.get("agreement")))
        out["eval_seconds"] = time.perf_counter() - start
        for split_name, test in case["extra"].items():
            out[split_name] = score(clf, test, task, settings.evaluation.batch_size)
        if case.get("blend"):
            out["blend"] = blend(probabilities(clf, case["test"]["text"],
                                               settings.evaluation.batch_size),
                                 case["baseline_probs"]["test"],
                                 [task.encode_label(x) for x in case["test"]["label"]], task)
        if clf.decision_bias is not None:  # the same model deciding by plain argmax
            clf.decision_bias = None
            out["raw"] = score(clf, case["test"], task, settings.evaluation.batch_size)
    wide = f"  wide {out['wide']['macro_f1']:.4f}" if "wide" in out else ""
    if "decision_bias_fit" in out:
        fit = out["decision_bias_fit"]
        wide += (f"  (argmax: {out['raw']['macro_f1']:.4f}" if "raw" in out else "  (")
        wide += (f"; bias {decision.describe(fit)})")
    if result.validation_curve:
        scores = " ".join(format(e["macro_f1"], ".3f") for e in result.validation_curve)
        wide += f"  validation {scores} (kept step {result.kept_step})"
    if "by_agreement" in out:
        wide += "  by agreement: " + ", ".join(
            f"{k} {v['macro_f1']:.3f} (n={v['rows']})" for k, v in out["by_agreement"].items())
    print(f"    macro-F1 {out['macro_f1']:.4f}  acc {out['accuracy']:.4f}{wide}  "
          f"train {out['train_seconds']:.1f}s ({out['samples_per_second']:.0f} samples/s)  "
          f"predicted {out['predicted_share']}", flush=True)
    if "blend" in out:
        print(f"    {describe_blend(out['blend'])}", flush=True)
    del result, clf
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def combine(name, bundle_dirs, settings, case, task) -> list[dict]:
    """One run's seeds together, scored on the same test rows as each alone: an ensemble (the
    mean of the first k members' probabilities) and a uniform soup (the mean of the first k
    members' weights: one model, served at one model's cost), for k = 2..N. A soup works only
    where the fine-tunes stay in one basin of the shared base (Wortsman et al., 2022)."""
    batch_size = settings.evaluation.batch_size
    splits = [("test", case["test"]), *case["extra"].items()]
    refs = {split: [task.encode_label(x) for x in rows["label"]] for split, rows in splits}

    def scores(probs_by_split) -> dict:
        out = {}
        for split, probs in probs_by_split.items():
            m = evaluation.compute_metrics(refs[split], list(probs.argmax(axis=1)), task)
            out[split] = {"macro_f1": float(m["macro_f1"]), "accuracy": float(m["accuracy"])}
            if split == "test" and case.get("agreement") is not None:
                out[split]["by_agreement"] = by_agreement(
                    refs[split], list(probs.argmax(axis=1)), case["agreement"], task)
            if split == "test" and case.get("blend"):
                out[split]["blend"] = blend(probs, case["baseline_probs"]["test"], refs[split], task)
        return out

    def probs_of(clf) -> dict:
        return {split: probabilities(clf, rows["text"], batch_size) for split, rows in splits}

    members, states = [], []
    for d in bundle_dirs:
        members.append(probs_of(modeling.Classifier(d, device=settings.training.device)))
        states.append(modeling.load_bundle_model(Path(d), torch.float32).state_dict())
    results = []
    for k in range(2, len(bundle_dirs) + 1):
        ensemble = {split: sum(m[split] for m in members[:k]) / k for split, _ in splits}
        soup = {key: (sum(st[key] for st in states[:k]) / k if value.is_floating_point()
                      else value) for key, value in states[0].items()}
        clf = modeling.Classifier(bundle_dirs[0], device=settings.training.device)
        clf.model.load_state_dict(soup)  # copied into the served dtype (bf16 on a GPU)
        for kind, got in (("ensemble", scores(ensemble)), ("soup", scores(probs_of(clf)))):
            results.append({"case": case["case"], "draw": case["draw"], "name": name,
                            "kind": kind, "members": k, "macro_f1": got["test"]["macro_f1"],
                            "accuracy": got["test"]["accuracy"],
                            **{key: got["test"][key] for key in ("by_agreement", "blend")
                               if key in got["test"]},
                            **{s: v for s, v in got.items() if s != "test"}})
            print(f"    {name} {kind} of {k}: macro-F1 {got['test']['macro_f1']:.4f}  "
                  f"acc {got['test']['accuracy']:.4f}", flush=True)
            if "blend" in got["test"]:
                print(f"      {describe_blend(got['test']['blend'])}", flush=True)
        del clf
    return results


def span(values, fmt: str = ".4f") -> str:
    lo, hi = format(min(values := list(values)), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def report(results: list[dict], baselines: dict) -> None:
    for case in sorted({r["case"] for r in results}):
        rows = [r for r in results if r["case"] == case]
        print(f"\n{case}: {'run':<18}{'macro-F1':>15}{'vs baseline':>15}{'wide F1':>15}"
              f"{'train s':>13}{'samples/s':>12}  (n={len(rows)})")
        base_rows = [b for (c, _), b in baselines.items() if c == case]
        line = f"{'':<{len(case) + 2}}{baseline.NAME:<18}{span(b['test']['macro_f1'] for b in base_rows):>15}"
        line += f"{'1.000x':>15}"
        if all("wide" in b for b in base_rows):
            line += f"{span(b['wide']['macro_f1'] for b in base_rows):>15}"
        print(line)
        for name in dict.fromkeys(r["name"] for r in rows):
            runs = [r for r in rows if r["name"] == name]
            ratios = [r["macro_f1"] / baselines[(case, r["draw"])]["test"]["macro_f1"] for r in runs]
            wide = span(r["wide"]["macro_f1"] for r in runs) if "wide" in runs[0] else "-"
            print(f"{'':<{len(case) + 2}}{name:<18}{span(r['macro_f1'] for r in runs):>15}"
                  f"{span(ratios, '.3f') + 'x':>15}{wide:>15}"
                  f"{span((r['train_seconds'] for r in runs), '.1f'):>13}"
                  f"{min(r['samples_per_second'] for r in runs):>12.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="labelloop settings YAML (default: built-in defaults)")
    ap.add_argument("--case", nargs="+", choices=["full", "small"], default=["full"])
    ap.add_argument("--run", action="append", default=[], metavar="NAME:key=val,...",
                    help="a fine-tuning run with overrides (repeatable; default: one 'default' run)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="training seeds per run (0: the configured seed)")
    ap.add_argument("--baseline-weights", nargs="+", metavar="off|auto",
                    help="class weighting(s) of the baseline; the first is compared with "
                         "(default: training.class_weights)")
    ap.add_argument("--draws", type=int, default=3, help="small: how many stable subsamples")
    ap.add_argument("--small-rows", type=int, default=500)
    ap.add_argument("--small-shares", default="negative=0.45,neutral=0.40,positive=0.15")
    ap.add_argument("--wide-rows", type=int, default=2000)
    ap.add_argument("--max-train-rows", type=int, default=None, help="full: cap training rows")
    ap.add_argument("--test-rows", type=int, default=None, help="full: cap test rows")
    ap.add_argument("--ensemble", action="store_true",
                    help="with several --seeds: also score each run's seeds together, as an "
                         "ensemble (mean probabilities) and as a soup (mean weights)")
    ap.add_argument("--by-agreement", metavar="COLUMN",
                    help="full case: also score each run on the test rows grouped by this "
                         "corpus column (the annotators' agreement: confidence)")
    ap.add_argument("--blend-baseline", action="store_true",
                    help="also score each model (and ensemble) mixed with the TF-IDF baseline's "
                         "probabilities: (1 - w) x model + w x baseline, w = "
                         + ", ".join(map(str, BLEND_WEIGHTS)) + ", and w cross-fitted on "
                         "halves of the test rows")
    ap.add_argument("--teachers", metavar="FILE",
                    help="keep crossfit teachers' probabilities in this file: written after each "
                         "one, read at the start, so a later call reuses them instead of refitting")
    ap.add_argument("--json", "--out", dest="json", help="write results as JSON here (after every run)")
    args = ap.parse_args()

    settings = load_settings(args.config)
    task = task_from_settings(settings)
    device = modeling.pick_device(settings.training.device)
    machine = (torch.cuda.get_device_name(0) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"machine: {machine}; torch {torch.__version__}")
    cases = build_cases(args, settings, task, check_runs(args.run or ["default:"], settings))
    for case in cases:
        case["blend"] = args.blend_baseline
    results, baselines, combined = [], {}, []
    if args.teachers and Path(args.teachers).exists():
        load_teachers(Path(args.teachers), cases)

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({
                "machine": machine, "command": " ".join(sys.argv),
                "baselines": [{"case": c, "draw": d, **b} for (c, d), b in baselines.items()],
                "results": results, "combined": combined, "adapted": ADAPT_LOG}, indent=2, default=str))

    for case in cases:
        print(f"\ncase {case['case']}#{case['draw']}: {len(case['train'])} train / "
              f"{len(case['test'])} test rows, labels {case['train']['label'].value_counts().to_dict()}"
              f" (test digest {data.digest(case['test'])})")
        baselines[(case["case"], case["draw"])] = b = fit_baselines(
            case, task, args.baseline_weights or [settings.training.class_weights])
        print(f"baseline {baseline.NAME}: " + ", ".join(
            f"{k} macro-F1 {v['macro_f1']:.4f} ({v['seconds']:.1f}s)" for k, v in b.items()))
    save()
    # Runs in the order given, each on every case it names (`small/NAME:...`) or on all.
    for spec in args.run or ["default:"]:
        head, colon, rest = spec.partition(":")
        only, _, name = head.rpartition("/")
        spec = name + colon + rest
        for case in cases:
            if only and case["case"] != only:
                continue
            is_teacher = any(parse_run(other)[2].get("teacher") == name for other in args.run)
            run = parse_run(spec)
            seeds = args.seeds[:run[2].get("nseeds", len(args.seeds))]
            if run[2].get("crossfit"):
                key = (case["case"], case["draw"], name)
                recipe = f"--run {spec} --config {args.config}"
                if key in TEACHERS and TEACHER_RECIPES.get(key) == recipe:
                    print(f"\n--- {name}: its teacher probabilities come from {args.teachers}")
                    continue
                if key in TEACHERS:  # another recipe under that name: fit it again
                    print(f"\n--- {name}: its recipe differs from the one in {args.teachers}; "
                          "fitting it again")
                    TEACHERS.pop(key), AUGMENTED.pop(key, None)
                with tempfile.TemporaryDirectory() as root:
                    fits = []
                    for seed in seeds:
                        fits.append(crossfit(run, settings, case, task, seed, Path(root), results))
                        save()
                TEACHERS[key] = sum(f[0] for f in fits) / len(fits)
                TEACHER_RECIPES[key] = recipe
                if run[2].get("augment"):
                    AUGMENTED[key] = fits[0][1], sum(f[2] for f in fits) / len(fits)
                if args.teachers:
                    save_teachers(Path(args.teachers), cases)
                continue
            keep = (tempfile.TemporaryDirectory() if args.ensemble and len(seeds) > 1
                    or is_teacher else contextlib.nullcontext(None))
            with keep as root:
                dirs = [Path(root) / f"seed{seed}" for seed in seeds] if root else []
                for i, seed in enumerate(seeds):
                    results.append(run_once(*run, settings=settings, case=case,
                                            task=task, seed=seed,
                                            keep_dir=dirs[i] if dirs else None))
                    save()
                if is_teacher:
                    TEACHERS[(case["case"], case["draw"], name)] = teacher_probabilities(
                        dirs, case["train"]["text"], settings)
                if dirs and args.ensemble and len(seeds) > 1:
                    combined.extend(combine(run[0], dirs, settings, case, task))
                    save()
    report(results, baselines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
