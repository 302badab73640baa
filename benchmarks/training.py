"""Training benchmark: fine-tune on the full default corpus and compare with TF-IDF + LR.

Prints, per run: training samples/s, training wall time, test accuracy and macro-F1, next to a
TF-IDF (1-2 grams) + logistic-regression baseline fitted on the same split in the same process.
Uses the same code as the pipeline (labelloop.data / training / evaluation), minus ZenML and
MLflow, so it also runs on a bare GPU box.

    python benchmarks/training.py                       # the configured default (LoRA)
    python benchmarks/training.py --run fast:method=full,epochs=1,learning_rate=1e-4
    python benchmarks/training.py --max-train-rows 2000 --test-rows 500   # a quick CPU check

Each `--run NAME:key=value,...` overrides `training.*` or `model.*` keys for one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labelloop  # noqa: E402,F401
import torch  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from labelloop import data, distributed, evaluation, modeling  # noqa: E402
from labelloop.settings import load_settings  # noqa: E402
from labelloop.tasks import task_from_settings  # noqa: E402

MODEL_KEYS = {"base", "max_length"}


def parse_run(spec: str) -> tuple[str, dict, dict]:
    name, _, rest = spec.partition(":")
    train_over, model_over = {}, {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        target = model_over if key in MODEL_KEYS else train_over
        target[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    return name, train_over, model_over


def tfidf_baseline(train, test, task) -> dict:
    start = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vec.fit_transform(train["text"])
    clf = LogisticRegression(max_iter=2000, C=4.0).fit(x_train, train["label"])
    fit_s = time.perf_counter() - start
    pred = clf.predict(vec.transform(test["text"]))
    m = evaluation.compute_metrics([task.encode_label(x) for x in test["label"]],
                                   [task.encode_label(x) for x in pred], task)
    return {"name": "tfidf+logreg", "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "train_seconds": fit_s, "samples_per_second": len(train) / fit_s}


def run_once(name, train_over, model_over, settings, train, test, task) -> dict:
    cfg = settings.training.model_copy(update=train_over)
    model_cfg = settings.model.model_copy(update=model_over)
    print(f"\n--- {name}: {cfg.method} epochs={cfg.epochs} lr={cfg.learning_rate} "
          f"batch={cfg.batch_size} max_length={model_cfg.max_length}", flush=True)
    # num_processes=N: N data-parallel processes (labelloop/distributed.py); 1: this process
    result = distributed.fine_tune(train, task, model_cfg, cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        modeling.save_bundle(result.model, result.tokenizer, Path(tmp), {
            "task": task.to_dict(), "max_length": model_cfg.max_length,
            "base_model": model_cfg.base})
        clf = modeling.Classifier(tmp, device=cfg.device)
        start = time.perf_counter()
        ev = evaluation.evaluate_classifier(clf, test, settings.evaluation.batch_size)
        eval_s = time.perf_counter() - start
    out = {"name": name, "method": cfg.method, "epochs": cfg.epochs, "lr": cfg.learning_rate,
           "batch_size": cfg.batch_size, "max_length": model_cfg.max_length,
           "num_processes": cfg.num_processes,
           "accuracy": ev.metrics["accuracy"], "macro_f1": ev.metrics["macro_f1"],
           "train_seconds": result.train_seconds, "samples_per_second": result.samples_per_second,
           "eval_seconds": eval_s, "eval_texts_per_second": len(test) / eval_s}
    print(f"    macro-F1 {out['macro_f1']:.4f}  acc {out['accuracy']:.4f}  "
          f"train {out['train_seconds']:.1f}s ({out['samples_per_second']:.0f} samples/s)", flush=True)
    del result, clf
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="labelloop settings YAML (default: built-in defaults)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME:key=val,...",
                    help="a fine-tuning run with overrides (repeatable; default: one 'default' run)")
    ap.add_argument("--max-train-rows", type=int, default=None, help="cap training rows (quick runs)")
    ap.add_argument("--test-rows", type=int, default=None, help="cap test rows (quick runs)")
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args()

    settings = load_settings(args.config)
    task = task_from_settings(settings)
    df = data.load_labelled(settings.dataset, task)
    train, test = data.split(df, settings.dataset.test_fraction)
    train = data.limit_rows(train, args.max_train_rows or settings.dataset.max_train_rows)
    test = data.limit_rows(test, args.test_rows)
    device = modeling.pick_device(settings.training.device)
    machine = (torch.cuda.get_device_name(0) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"machine: {machine}; torch {torch.__version__}")
    print(f"data: {len(train)} train / {len(test)} test rows (split by text hash, "
          f"test digest {data.digest(test)})")

    results = [tfidf_baseline(train, test, task)]
    print(f"baseline tfidf+logreg: macro-F1 {results[0]['macro_f1']:.4f} "
          f"acc {results[0]['accuracy']:.4f} fit {results[0]['train_seconds']:.1f}s")
    for spec in args.run or ["default:"]:
        results.append(run_once(*parse_run(spec), settings=settings, train=train, test=test, task=task))

    base = results[0]["macro_f1"]
    print(f"\n{'run':<16}{'method':<7}{'macro-F1':>9}{'vs tfidf':>10}{'acc':>8}"
          f"{'train s':>9}{'samples/s':>11}")
    for r in results:
        print(f"{r['name']:<16}{r.get('method', '-'):<7}{r['macro_f1']:>9.4f}"
              f"{r['macro_f1'] / base:>9.3f}x{r['accuracy']:>8.4f}{r['train_seconds']:>9.1f}"
              f"{r['samples_per_second']:>11.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "train_rows": len(train),
                                              "test_rows": len(test), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
