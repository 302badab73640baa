"""What a fresh process's first fine-tune costs, against its second: a clock on every step.

`labelloop train` pays the warm-up of a new process (the first use of every kernel and batch
width) inside its training time; benchmarks/training.py's later runs do not. This script trains
the same recipe `--runs` times in one process, with `log_every_steps: 1`, and prints per run the
training seconds, the first step's, the spans between steps 1, 10, 50, 200 and the last, and the
test macro-F1. Run it several times for fresh processes.

`--round-widths 8` is an experiment, not a setting: it rounds each batch's width (batches are
trimmed to their longest text) up to a multiple of 8, so the first pass meets fewer widths.

    python benchmarks/first_fine_tune.py --config configs/train-fast-gpu.yaml --runs 2
    python benchmarks/first_fine_tune.py --config configs/train-fast-gpu.yaml --round-widths 8

Figures: docs/benchmarks.md, "Sixteenth session: configs/train-fast-gpu.yaml re-measured".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
START = time.perf_counter()

import labelloop  # noqa: E402,F401

from labelloop import data, evaluation, modeling, training  # noqa: E402
from labelloop.settings import load_settings  # noqa: E402
from labelloop.tasks import task_from_settings  # noqa: E402


def round_widths(multiple: int) -> None:
    """Make training.encode_rows report each text's length rounded up to `multiple` (at most
    the padded width), which is what a batch is trimmed to."""
    encode_rows = training.encode_rows

    def rounded(*args, **kwargs):
        ids, attention, lengths = encode_rows(*args, **kwargs)
        return ids, attention, ((lengths + multiple - 1) // multiple * multiple).clamp(max=ids.shape[1])

    training.encode_rows = rounded


def spans(stamps: dict[int, float]) -> dict[str, float]:
    """Seconds between the marks 1, 10, 50, 200 and the last step (those that were reached)."""
    last = max(stamps)
    marks = sorted({m for m in (1, 10, 50, 200, last) if m in stamps})
    return {f"{a}-{b}": stamps[b] - stamps[a] for a, b in zip(marks, marks[1:])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="labelloop settings YAML (default: built-in defaults)")
    ap.add_argument("--runs", type=int, default=2, help="fine-tunes in this process")
    ap.add_argument("--round-widths", type=int, default=0, metavar="N",
                    help="experiment: batch widths rounded up to a multiple of N")
    args = ap.parse_args()
    if args.round_widths > 1:
        round_widths(args.round_widths)
    settings = load_settings(args.config)
    cfg = settings.training.model_copy(update={"log_every_steps": 1})
    task = task_from_settings(settings)
    train, test = data.split(data.load_labelled(settings.dataset, task),
                             settings.dataset.test_fraction)
    print(f"imports and data {time.perf_counter() - START:.1f}s; widths rounded to "
          f"{args.round_widths or 1}", flush=True)
    for run in range(args.runs):
        stamps: dict[int, float] = {}
        result = training.fine_tune(train, task, settings.model, cfg, progress=False,
                                    on_log=lambda step, _: stamps.setdefault(step, time.perf_counter()))
        between = spans(stamps)
        first_step = result.train_seconds - (stamps[max(stamps)] - stamps[1])
        with tempfile.TemporaryDirectory() as tmp:
            modeling.save_bundle(result.model, result.tokenizer, Path(tmp), {
                "task": task.to_dict(), "max_length": settings.model.max_length,
                "base_model": settings.model.base})
            clf = modeling.Classifier(tmp, device=cfg.device)
            f1 = evaluation.evaluate_classifier(clf, test, settings.evaluation.batch_size).metrics["macro_f1"]
        print(f"run {run}: training {result.train_seconds:.2f}s, first step {first_step:.2f}s, "
              + ", ".join(f"steps {k} {v:.2f}s" for k, v in between.items())
              + f"; macro-F1 {f1:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
