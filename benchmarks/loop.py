"""Simulated annotation campaign: uncertainty sampling versus random sampling.

Simulated annotators answer with the corpus's true labels. Both strategies start from the same
seed set drawn from the training split; each round adds `--per-round` labels chosen either by
uncertainty (lowest top-class probability of the current model) or at random from the unlabelled
pool, retrains from the base model (labelloop.training.fine_tune, in-process, the same code the
training pipeline runs) and scores macro-F1 on the frozen test split (`labelloop.data.split`;
`--test-rows` takes a stable hash-ordered subsample of it for CPU time; 0 = the whole split).

It prints a table, writes the curve to docs/loop_curve.png (`--plot`) and the raw numbers to a
JSON (`--json`), and says how many labels uncertainty sampling saves to reach the macro-F1 that
random sampling reaches with its final label budget.

Quick on CPU (a few minutes; pool and test subsampled):
    python benchmarks/loop.py --rounds 3 --per-round 100 --seed-size 100 --pool-rows 1500 \
        --test-rows 500
Full on a GPU:
    python benchmarks/loop.py --rounds 10 --per-round 200 --seed-size 200 --test-rows 0 \
        --pool-rows 0 --device cuda

`--model-dir` / `--dataset` point at a copy of the base model / corpus when the installed
packages are not there (e.g. on a GPU box without the project's venv).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labelloop  # noqa: E402,F401  (offline switches first)
from labelloop import data, modeling, training  # noqa: E402
from labelloop.settings import Settings, load_settings  # noqa: E402
from labelloop.tasks import task_from_settings  # noqa: E402

try:  # the per-round "newly initialized head" report is expected here: keep the output short
    from transformers.utils import logging as _hf_logging

    _hf_logging.set_verbosity_error()
except Exception:  # noqa: BLE001
    pass

REPO = Path(__file__).resolve().parents[1]


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: list[str], max_length: int, device: torch.device,
                  batch_size: int = 512) -> np.ndarray:
    """Class probabilities for texts, in input order (length-sorted batches pad little)."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    use_bf16 = device.type == "cuda"
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(**enc).logits.float()
        out[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    return out


def macro_f1(refs: np.ndarray, preds: np.ndarray, n_labels: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(refs, preds, labels=list(range(n_labels)), average="macro",
                          zero_division=0))


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Labels needed to reach `target` macro-F1: on the curve's running best (a dip after a peak
    does not un-reach it), linearly interpolated between rounds; None if never reached."""
    env, best = [], -1.0
    for n, f in curve:
        best = max(best, f)
        env.append((n, best))
    for i, (n, f) in enumerate(env):
        if f >= target:
            if i == 0:
                return float(n)
            n0, f0 = env[i - 1]
            return n0 + (n - n0) * (target - f0) / (f - f0)
    return None


def settings_from_args(args: argparse.Namespace, training: dict) -> Settings:
    """Settings for a run: the config plus the model, dataset and training flags given."""
    overrides: dict = {"training": {"device": args.device, **training}}
    if args.model_dir:
        overrides["model"] = {"base": str(Path(args.model_dir).resolve())}
    if args.dataset:
        overrides["dataset"] = {"path": str(Path(args.dataset).resolve())}
    return load_settings(args.config, overrides=overrides)


def run(args: argparse.Namespace) -> dict:
    settings = settings_from_args(args, {
        "epochs": args.epochs, "learning_rate": args.learning_rate,
        "batch_size": args.batch_size, "method": args.method})
    task = task_from_settings(settings)
    device = modeling.pick_device(settings.training.device)

    t0 = time.perf_counter()
    df = data.load_labelled(settings.dataset, task)
    train, test = data.split(df, settings.dataset.test_fraction)
    full_test = len(test)
    if args.test_rows:
        test = data.limit_rows(test, args.test_rows)
    pool = data.limit_rows(train, args.pool_rows) if args.pool_rows else train
    pool = pool.reset_index(drop=True)
    refs_test = np.array([task.encode_label(lab) for lab in test["label"]])
    print(f"corpus: {len(df)} rows; training split {len(train)} (pool {len(pool)}), "
          f"test split {full_test} (scored on {len(test)}); device {device}; "
          f"loaded in {time.perf_counter() - t0:.1f}s", flush=True)

    rng = np.random.default_rng(args.seed)
    seed_idx = rng.choice(len(pool), size=min(args.seed_size, len(pool)), replace=False)

    def train_and_score(labelled_idx: np.ndarray, need_pool_scores: bool):
        rows = pool.iloc[labelled_idx][["text", "label"]].reset_index(drop=True)
        steps_per_epoch = math.ceil(len(rows) / settings.training.batch_size)
        steps = max(args.min_steps, math.ceil(steps_per_epoch * settings.training.epochs))
        cfg = settings.training.model_copy(update={"max_steps": steps})
        started = time.perf_counter()
        result = training.fine_tune(rows, task, settings.model, cfg, progress=False)
        train_s = time.perf_counter() - started
        model = result.model
        probs_test = predict_proba(model, result.tokenizer, list(test["text"]),
                                   settings.model.max_length, device)
        f1 = macro_f1(refs_test, probs_test.argmax(-1), len(task.labels))
        pool_top = None
        if need_pool_scores:
            probs_pool = predict_proba(model, result.tokenizer, list(pool["text"]),
                                       settings.model.max_length, device)
            pool_top = probs_pool.max(-1)
        del model, result
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return f1, pool_top, steps, train_s, time.perf_counter() - started

    curves: dict[str, list[tuple[int, float]]] = {}
    timings: list[dict] = []
    # Round 0 (the seed set) is the same for both strategies: train it once.
    f1_0, top_0, steps_0, tr_0, all_0 = train_and_score(seed_idx, need_pool_scores=True)
    print(f"round 0  seed      {len(seed_idx):>6} labels  macro-F1 {f1_0:.4f}  "
          f"({steps_0} steps, train {tr_0:.1f}s, round {all_0:.1f}s)", flush=True)
    timings.append({"strategy": "seed", "labels": len(seed_idx), "train_s": tr_0, "round_s": all_0})

    for strategy in args.strategies:
        labelled = seed_idx.copy()
        curve = [(len(labelled), f1_0)]
        top = top_0
        srng = np.random.default_rng(args.seed + 1)
        for r in range(1, args.rounds + 1):
            mask = np.ones(len(pool), dtype=bool)
            mask[labelled] = False
            candidates = np.flatnonzero(mask)
            if len(candidates) == 0:
                break
            k = min(args.per_round, len(candidates))
            if strategy == "uncertainty":
                chosen = candidates[np.argsort(top[candidates], kind="stable")[:k]]
            else:
                chosen = srng.choice(candidates, size=k, replace=False)
            labelled = np.concatenate([labelled, chosen])
            need = strategy == "uncertainty" and r < args.rounds
            f1, top_new, steps, tr_s, all_s = train_and_score(labelled, need_pool_scores=need)
            if top_new is not None:
                top = top_new
            curve.append((len(labelled), f1))
            timings.append({"strategy": strategy, "labels": len(labelled), "train_s": tr_s,
                            "round_s": all_s})
            if args.json:  # partial results survive a run cut short
                Path(args.json).write_text(json.dumps(
                    {"partial": True, "curves": {**curves, strategy: curve}}, indent=1))
            print(f"round {r:<2} {strategy:<11} {len(labelled):>6} labels  macro-F1 {f1:.4f}  "
                  f"({steps} steps, train {tr_s:.1f}s, round {all_s:.1f}s)", flush=True)
        curves[strategy] = curve

    summary = {"curves": {k: [list(p) for p in v] for k, v in curves.items()}}
    if "uncertainty" in curves and "random" in curves:
        rand, unc = curves["random"], curves["uncertainty"]
        target = max(f for _, f in rand)
        n_rand = labels_to_reach(rand, target)
        n_unc = labels_to_reach(unc, target)
        summary.update({"target_macro_f1": target, "random_labels": n_rand,
                        "uncertainty_labels": n_unc})
        if n_unc is not None and n_rand is not None:
            saved = n_rand - n_unc
            summary["labels_saved"] = saved
            summary["labels_saved_fraction"] = saved / n_rand
            print(f"\nto reach macro-F1 {target:.4f} (random's best): random needs {n_rand:.0f} "
                  f"labels, uncertainty {n_unc:.0f} -> saves {saved:.0f} labels "
                  f"({100 * saved / n_rand:.0f}%)")
        else:
            print(f"\nuncertainty sampling did not reach random's best macro-F1 {target:.4f} "
                  "within its budget")
        final_gap = unc[-1][1] - rand[-1][1]
        summary["final_gap"] = final_gap
        print(f"at {unc[-1][0]} labels: uncertainty {unc[-1][1]:.4f} vs random {rand[-1][1]:.4f} "
              f"({final_gap:+.4f})")
    summary.update({
        "machine": args.machine or f"{platform.node()} ({platform.processor() or platform.machine()}, "
                                   f"{torch.get_num_threads()} threads)",
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "params": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "pool_rows": len(pool), "test_rows": len(test), "test_split_rows": full_test,
        "timings": timings, "total_seconds": time.perf_counter() - t0,
    })
    print(f"total {summary['total_seconds']:.0f}s on {summary['device']}")
    return summary


def time_retrain(args: argparse.Namespace) -> dict:
    """The dominant part of a loop turn: retrain on the whole training split with the configured
    training settings (what the feedback pipeline's retrain runs), then score the frozen test
    split. For machines without the project's servers (the rest of a turn is measured by
    tests/integration/test_loop_e2e.py-style runs on the real stack, see docs/loop.md)."""
    settings = settings_from_args(args, {})
    task = task_from_settings(settings)
    device = modeling.pick_device(settings.training.device)
    t0 = time.perf_counter()
    df = data.load_labelled(settings.dataset, task)
    train, test = data.split(df, settings.dataset.test_fraction)
    train = data.limit_rows(train, settings.dataset.max_train_rows)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = training.fine_tune(train, task, settings.model, settings.training, progress=False)
    train_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    probs = predict_proba(result.model, result.tokenizer, list(test["text"]),
                          settings.model.max_length, device)
    refs = np.array([task.encode_label(lab) for lab in test["label"]])
    f1 = macro_f1(refs, probs.argmax(-1), len(task.labels))
    eval_s = time.perf_counter() - t2
    out = {"device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
           "train_rows": len(train), "test_rows": len(test), "epochs": settings.training.epochs,
           "method": settings.training.method, "steps": result.steps, "load_s": load_s,
           "train_s": train_s, "samples_per_s": result.samples_per_second, "eval_s": eval_s,
           "macro_f1": f1}
    print(f"retrain: {len(train)} rows x {settings.training.epochs} epochs ({result.steps} steps, "
          f"{settings.training.method}) in {train_s:.1f}s ({result.samples_per_second:.0f} samples/s); "
          f"test eval {len(test)} rows {eval_s:.1f}s; macro-F1 {f1:.4f}; data load {load_s:.1f}s "
          f"on {out['device']}")
    return out


def plot(summary: dict, path: Path) -> None:
    plot_many([summary], path)


def plot_many(summaries: list[dict], path: Path) -> None:
    """One panel per summary (e.g. a GPU run and a CPU run side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(6.4 * len(summaries), 4.2), squeeze=False)
    for ax, summary in zip(axes[0], summaries):
        _plot_panel(ax, summary)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def _plot_panel(ax, summary: dict) -> None:
    styles = {"uncertainty": ("tab:red", "o"), "random": ("tab:blue", "s")}
    for name, curve in summary["curves"].items():
        xs, ys = zip(*curve)
        color, marker = styles.get(name, (None, "x"))
        ax.plot(xs, ys, marker=marker, color=color, label=f"{name} sampling")
    if summary.get("labels_saved") is not None:
        ax.axhline(summary["target_macro_f1"], color="grey", lw=0.8, ls="--")
        ax.annotate(f"uncertainty saves {summary['labels_saved']:.0f} labels\n"
                    f"to reach macro-F1 {summary['target_macro_f1']:.3f}",
                    xy=(summary["uncertainty_labels"], summary["target_macro_f1"]),
                    xytext=(0.35, 0.12), textcoords="axes fraction",
                    arrowprops={"arrowstyle": "->", "color": "grey"})
    if summary.get("note"):
        ax.text(0.02, 0.97, summary["note"], transform=ax.transAxes, va="top", fontsize=8,
                color="dimgrey")
    ax.set_xlabel("human labels")
    ax.set_ylabel(f"test macro-F1 (n={summary['test_rows']})")
    ax.set_title(summary.get("title") or f"Simulated annotation campaign ({summary['device']})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="labelloop YAML settings (default: built-in defaults)")
    p.add_argument("--rounds", type=int, default=3, help="annotation rounds after the seed set")
    p.add_argument("--per-round", type=int, default=100, help="labels added per round")
    p.add_argument("--seed-size", type=int, default=100, help="labels in the shared seed set")
    p.add_argument("--pool-rows", type=int, default=1500,
                   help="unlabelled pool: a stable subsample of the training split (0 = all)")
    p.add_argument("--test-rows", type=int, default=500,
                   help="stable subsample of the frozen test split to score on (0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--epochs", type=float, default=4.0, help="epochs over the labelled set")
    p.add_argument("--min-steps", type=int, default=30,
                   help="at least this many optimizer steps per retrain (tiny sets)")
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the seed set and random picks")
    p.add_argument("--strategies", nargs="+", default=["uncertainty", "random"],
                   choices=["uncertainty", "random"])
    p.add_argument("--model-dir", help="base model directory (default: the configured model.base)")
    p.add_argument("--dataset", help="corpus file (default: the configured dataset.path)")
    p.add_argument("--machine", help="machine name to record in the JSON")
    p.add_argument("--plot", default=str(REPO / "docs" / "loop_curve.png"),
                   help="PNG to write ('' for none)")
    p.add_argument("--json", default="", help="write the numbers here too")
    p.add_argument("--retrain-only", action="store_true",
                   help="instead of the campaign, time one retrain on the whole training split "
                        "with the configured training settings (a loop turn's main cost)")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="only plot saved results (one panel each) to --plot")
    args = p.parse_args(argv)
    if args.from_json:
        plot_many([json.loads(Path(f).read_text()) for f in args.from_json], Path(args.plot))
        return 0
    if args.retrain_only:
        out = time_retrain(args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        return 0
    summary = run(args)
    if args.plot:
        plot(summary, Path(args.plot))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
