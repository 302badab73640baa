"""Simulated annotation campaigns: every ordering of labelloop.selection against random sampling.

Simulated annotators answer with the corpus's true labels. For each seed, a seed set is drawn at
random from the pool (the training split, or a stable subsample of it) and a first model is
trained on it; every strategy then runs the same rounds from that same start: the current model
scores the whole unlabelled pool in one batched pass (probabilities + mean-pooled embeddings,
`labelloop.selection.forward_scores`), `labelloop.selection.select` picks `--per-round` texts,
their true labels join the labelled set, the model is retrained and macro-F1 is measured on the
frozen test split (`labelloop.data.split`; `--test-rows` takes a stable subsample of it).

Two training rules, the two the feedback loop offers (`feedback.train_rule`):
- full: `labelloop.training.fine_tune` from the base model on every label so far
  (LoRA, `--epochs`/`--learning-rate`/`--batch-size`, at least `--min-steps` steps);
- warm: `fine_tune(..., init_bundle=<last round's bundle>)` on the new labels repeated
  `--warm-repeats` times plus a replay sample of `--warm-replay` earlier labels, with the
  `--warm-*` settings (defaults = `feedback.warm_start`'s), the path a warm loop turn runs.

Reported per (rule, strategy), over seeds: mean, min and max macro-F1 at every budget; the area
under the learning curve (mean F1 over the label range, trapezoids); the labels needed to reach
95% and 100% of random's final mean macro-F1 under the same rule (on each seed's running best,
interpolated between rounds), and the share of labels that saves against random's mean curve.
The JSON (`--json`) holds every curve; the plot (`--plot`) shows mean lines with min-max bands.

Small, on a 2-core CPU (about 5 minutes; numbers are a smoke test, not a result):
    python benchmarks/loop.py --pool-rows 300 --test-rows 150 --seed-size 16 --per-round 16 \
        --rounds 2 --epochs 1 --min-steps 3 --batch-size 16 --warm-epochs 1 --warm-replay 16 \
        --warm-repeats 1 --json docs/loop_cpu.json
Full, on one GPU (several campaigns share it: `--workers` processes):
    python benchmarks/loop.py --device cuda --workers 14 --pool-rows 20000 --test-rows 5000 \
        --seed-size 200 --per-round 200 --rounds 9 --batch-size 32 --json docs/loop_h200.json

`--model-dir` / `--dataset` point at a copy of the base model / corpus when the installed
packages are not there (a GPU box without the project's venv). `--from-json` redraws the plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labelloop  # noqa: E402,F401  (offline switches first)
from labelloop import data, modeling, selection, training  # noqa: E402
from labelloop.settings import Settings, load_settings  # noqa: E402
from labelloop.tasks import task_from_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RULES = ("full", "warm")


def _quiet_transformers() -> None:
    try:  # the per-round "newly initialized head" report is expected here
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # 'Loading weights' bars every round
    except Exception:  # noqa: BLE001
        pass


# -- curve arithmetic (pure functions, unit-tested) --------------------------------------------
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


def area_under_curve(curve: list[tuple[int, float]]) -> float:
    """Mean macro-F1 over the label range (trapezoids): one number for the whole campaign."""
    xs = np.array([n for n, _ in curve], dtype=float)
    ys = np.array([f for _, f in curve], dtype=float)
    if len(xs) < 2 or xs[-1] == xs[0]:
        return float(ys.mean())
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)) / (xs[-1] - xs[0]))


def _spread(values: list[float]) -> dict:
    v = np.array(values, dtype=float)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def summarise(runs: list[dict]) -> dict:
    """Per rule and strategy: F1 per budget, AUC, labels to 95%/100% of random's final F1."""
    out: dict = {}
    for rule in sorted({r["rule"] for r in runs}):
        by_strategy: dict[str, list[dict]] = {}
        for r in runs:
            if r["rule"] == rule:
                by_strategy.setdefault(r["strategy"], []).append(r)
        rule_out: dict = {}
        random_runs = by_strategy.get("random", [])
        random_final = (float(np.mean([r["curve"][-1][1] for r in random_runs]))
                        if random_runs else None)
        random_mean_curve = _mean_curve(random_runs) if random_runs else None
        for strategy, rs in sorted(by_strategy.items()):
            budgets = sorted({n for r in rs for n, _ in r["curve"]})
            per_budget = {}
            for b in budgets:
                vals = [f for r in rs for n, f in r["curve"] if n == b]
                per_budget[str(b)] = _spread(vals)
            entry = {"seeds": sorted(r["seed"] for r in rs), "per_budget": per_budget,
                     "auc": _spread([area_under_curve(r["curve"]) for r in rs]),
                     "final": _spread([r["curve"][-1][1] for r in rs])}
            if random_final is not None:
                for share in (0.95, 1.0):
                    target = share * random_final
                    per_seed = [labels_to_reach(r["curve"], target) for r in rs]
                    reached = [x for x in per_seed if x is not None]
                    n_mean = labels_to_reach(_mean_curve(rs), target)
                    n_random = labels_to_reach(random_mean_curve, target)
                    key = f"to_{int(share * 100)}pct_of_random_final"
                    entry[key] = {
                        "target_macro_f1": target,
                        "per_seed": per_seed,
                        "seeds_reached": len(reached),
                        "range": [min(reached), max(reached)] if reached else None,
                        "mean_curve": n_mean,
                        "random_mean_curve": n_random,
                        "labels_saved_fraction": (None if n_mean is None or not n_random
                                                  else (n_random - n_mean) / n_random),
                    }
            rule_out[strategy] = entry
        out[rule] = {"random_final_macro_f1": random_final, "strategies": rule_out}
    return out


def _mean_curve(runs: list[dict]) -> list[tuple[int, float]]:
    budgets = sorted({n for r in runs for n, _ in r["curve"]})
    return [(b, float(np.mean([f for r in runs for n, f in r["curve"] if n == b])))
            for b in budgets]


# -- the campaign ----------------------------------------------------------------------------
@dataclass
class Inputs:
    settings: Settings
    task: object
    device: torch.device
    pool: pd.DataFrame
    pool_ids: list
    test_ids: list
    refs_test: np.ndarray
    pad_id: int
    full_test_rows: int


_IN: Inputs | None = None  # one per process (the worker initializer fills it)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict = {"training": {"device": args.device, "epochs": args.epochs,
                                    "learning_rate": args.learning_rate,
                                    "batch_size": args.batch_size, "method": args.method}}
    if args.model_dir:
        overrides["model"] = {"base": str(Path(args.model_dir).resolve())}
    if args.dataset:
        overrides["dataset"] = {"path": str(Path(args.dataset).resolve())}
    return load_settings(args.config, overrides=overrides)


def load_inputs(args: argparse.Namespace) -> Inputs:
    settings = settings_from_args(args)
    task = task_from_settings(settings)
    device = modeling.pick_device(settings.training.device)
    df = data.load_labelled(settings.dataset, task)
    train, test = data.split(df, settings.dataset.test_fraction)
    full_test = len(test)
    test = data.limit_rows(test, args.test_rows) if args.test_rows else test
    pool = (data.limit_rows(train, args.pool_rows) if args.pool_rows else train).reset_index(drop=True)
    tok = modeling.load_tokenizer(modeling.resolve_base_model(settings.model.base))
    enc = lambda texts: tok(list(texts), truncation=True,  # noqa: E731
                            max_length=settings.model.max_length)["input_ids"]
    return Inputs(settings=settings, task=task, device=device, pool=pool,
                  pool_ids=enc(pool["text"]), test_ids=enc(test["text"]),
                  refs_test=np.array([task.encode_label(x) for x in test["label"]]),
                  pad_id=int(tok.pad_token_id or 0), full_test_rows=full_test)


def _init_worker(args: argparse.Namespace) -> None:
    global _IN
    from threadpoolctl import threadpool_limits

    _quiet_transformers()
    if args.workers > 1:  # many processes share the cores: one thread each
        torch.set_num_threads(1)
        threadpool_limits(1)
    _IN = load_inputs(args)


def macro_f1(refs: np.ndarray, preds: np.ndarray, n_labels: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(refs, preds, labels=list(range(n_labels)), average="macro",
                          zero_division=0))


def _train(rows: pd.DataFrame, rule: str, args, seed: int, init_bundle: Path | None):
    s = _IN.settings
    if rule == "warm" and init_bundle is not None:
        cfg = s.training.model_copy(update={
            "method": args.warm_method, "epochs": args.warm_epochs,
            "learning_rate": args.warm_learning_rate, "batch_size": args.warm_batch_size})
    else:
        cfg = s.training
    steps = max(args.min_steps, math.ceil(math.ceil(len(rows) / cfg.batch_size) * cfg.epochs))
    cfg = cfg.model_copy(update={"max_steps": steps, "seed": s.training.seed + seed})
    return training.fine_tune(rows, _IN.task, s.model, cfg, progress=False,
                              init_bundle=init_bundle)


def _score(model, need_pool: bool):
    """Test macro-F1 and (when asked) the pool's probabilities and embeddings, one pass each."""
    bs = 512 if _IN.device.type == "cuda" else 32  # GPUs want big batches; CPUs little padding
    test = selection.forward_scores(model, _IN.test_ids, _IN.pad_id, _IN.device, bs)
    f1 = macro_f1(_IN.refs_test, test.probabilities.argmax(1), len(_IN.task.labels))
    pool = selection.forward_scores(model, _IN.pool_ids, _IN.pad_id, _IN.device, bs) \
        if need_pool else None
    return f1, pool


def _save(result, out: Path) -> Path:
    meta = {"task": _IN.task.to_dict(), "base_model": result.base_model,
            "max_length": _IN.settings.model.max_length}
    return modeling.save_bundle(result.model, result.tokenizer, out, meta)


def _rows(idx: np.ndarray) -> pd.DataFrame:
    return _IN.pool.iloc[idx][["text", "label"]].reset_index(drop=True)


def seed_round(args: argparse.Namespace, seed: int, workdir: str) -> dict:
    """Round 0 of every campaign of this seed: the random seed set and the model trained on it."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(_IN.pool), size=args.seed_size, replace=False)
    result = _train(_rows(idx), "full", args, seed, None)
    f1, pool = _score(result.model, need_pool=True)
    out = Path(workdir) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "scores.npz", idx=idx, probs=pool.probabilities, emb=pool.embeddings)
    _save(result, out / "bundle")
    return {"seed": seed, "f1": f1, "labels": len(idx), "seconds": time.perf_counter() - t0}


def campaign(args: argparse.Namespace, rule: str, strategy: str, seed: int, f1_0: float,
             workdir: str) -> dict:
    """The rounds after the seed set for one (rule, strategy, seed)."""
    started = time.perf_counter()
    base = Path(workdir) / f"seed{seed}"
    saved = np.load(base / "scores.npz")
    labelled = saved["idx"].copy()
    probs, emb = saved["probs"], saved["emb"]
    bundle = base / "bundle"
    own = Path(workdir) / f"{rule}-{strategy}-{seed}"
    curve = [(len(labelled), f1_0)]
    timing = {"select_s": 0.0, "train_s": 0.0, "score_s": 0.0, "save_s": 0.0}
    rng = np.random.default_rng(10_000 + seed)
    for r in range(1, args.rounds + 1):
        t = time.perf_counter()
        mask = np.ones(len(_IN.pool), dtype=bool)
        mask[labelled] = False
        cand = np.flatnonzero(mask)
        picked = selection.select(
            strategy, probs[cand], args.per_round, embeddings=emb[cand], seed=1000 * seed + r,
            random_share=args.mix_random_share, mix_with=args.mix_with,
            diverse_candidates=args.diverse_candidates)
        new = cand[picked]
        timing["select_s"] += time.perf_counter() - t
        t = time.perf_counter()
        if rule == "full":
            rows = _rows(np.concatenate([labelled, new]))
            result = _train(rows, "full", args, seed, None)
        else:
            replay = rng.choice(labelled, size=min(args.warm_replay, len(labelled)), replace=False)
            rows = pd.concat([_rows(new)] * args.warm_repeats + [_rows(replay)], ignore_index=True)
            result = _train(rows, "warm", args, seed, bundle)
        timing["train_s"] += time.perf_counter() - t
        labelled = np.concatenate([labelled, new])
        last = r == args.rounds
        t = time.perf_counter()
        f1, pool = _score(result.model, need_pool=not last and strategy != "random")
        timing["score_s"] += time.perf_counter() - t
        if pool is not None:
            probs, emb = pool.probabilities, pool.embeddings
        if rule == "warm" and not last:
            t = time.perf_counter()
            nxt = own / f"r{r}"
            _save(result, nxt)
            if bundle.parent == own:
                shutil.rmtree(bundle, ignore_errors=True)
            bundle = nxt
            timing["save_s"] += time.perf_counter() - t
        curve.append((len(labelled), f1))
        del result
    shutil.rmtree(own, ignore_errors=True)
    if _IN.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"rule": rule, "strategy": strategy, "seed": seed, "curve": curve,
            "seconds": time.perf_counter() - started, **timing}


def _call(fn, *a):  # a module-level trampoline: the process pool pickles functions by name
    return fn(*a)


def _execute(pool, calls: list[tuple]):
    """Results of `calls` ((fn, *args) each) as they finish: in worker processes, or here."""
    if pool is None:
        for fn, *a in calls:
            yield fn(*a)
        return
    for f in as_completed([pool.submit(_call, fn, *a) for fn, *a in calls]):
        yield f.result()


def run(args: argparse.Namespace) -> dict:
    global _IN
    t0 = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="loopbench-", dir=args.workdir or None)
    results: list[dict] = []
    seeds_out: dict[int, dict] = {}

    def dump(partial: bool) -> dict:
        summary = {"partial": partial, "runs": results,
                   "seed_rounds": [seeds_out[s] for s in sorted(seeds_out)],
                   "summary": summarise(results) if results else {}}
        summary.update(_meta(args, t0))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(summary, indent=1))
        return summary

    pool = None
    if args.workers > 1:
        import multiprocessing

        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(args,))
        _IN = load_inputs(args)  # here only for the report below
    else:
        _init_worker(args)
    print(f"pool {len(_IN.pool)} texts, test {len(_IN.test_ids)} of {_IN.full_test_rows} rows, "
          f"device {_IN.device}, {args.workers} worker(s); seeds {args.seeds}, rules "
          f"{args.rules}, strategies {args.strategies}", flush=True)
    try:
        for out in _execute(pool, [(seed_round, args, s, workdir) for s in args.seeds]):
            seeds_out[out["seed"]] = out
            print(f"seed {out['seed']}: {out['labels']} labels, macro-F1 {out['f1']:.4f} "
                  f"({out['seconds']:.1f}s)", flush=True)
        # seed-major: a run cut short has every strategy at the same seeds
        calls = [(campaign, args, rule, strategy, s, seeds_out[s]["f1"], workdir)
                 for s in args.seeds for rule in args.rules for strategy in args.strategies]
        for out in _execute(pool, calls):
            results.append(out)
            curve = " ".join(f"{n}:{v:.3f}" for n, v in out["curve"])
            print(f"{out['rule']:<4} {out['strategy']:<16} seed {out['seed']}  {curve}  "
                  f"({out['seconds']:.0f}s: train {out['train_s']:.0f}, score "
                  f"{out['score_s']:.0f}, select {out['select_s']:.1f})", flush=True)
            dump(partial=True)  # what is done survives a run cut short
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(workdir, ignore_errors=True)
    summary = dump(partial=False)
    print_report(summary)
    return summary


def _meta(args: argparse.Namespace, t0: float) -> dict:
    device = _IN.device if _IN is not None else modeling.pick_device(args.device)
    return {
        "machine": args.machine or f"{platform.node()} ({os.cpu_count()} cores)",
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "params": {k: v for k, v in vars(args).items() if k not in ("func", "from_json")},
        "command": "python benchmarks/loop.py " + " ".join(sys.argv[1:]),
        "total_seconds": time.perf_counter() - t0,
    }


def print_report(summary: dict) -> None:
    for rule, block in summary["summary"].items():
        rf = block["random_final_macro_f1"]
        print(f"\n== {rule} retrain; random's final mean macro-F1 "
              f"{rf:.4f}" if rf is not None else f"\n== {rule}")
        print(f"{'strategy':<17}{'AUC mean [min-max]':<26}{'final mean [min-max]':<26}"
              f"{'to 95%':>8}{'to 100%':>9}  saved@100%")
        for name, e in sorted(block["strategies"].items(), key=lambda kv: -kv[1]["auc"]["mean"]):
            a, fi = e["auc"], e["final"]
            reach = [e.get(f"to_{p}pct_of_random_final", {}).get("mean_curve") for p in (95, 100)]
            saved = e.get("to_100pct_of_random_final", {}).get("labels_saved_fraction")
            fmt = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
            print(f"{name:<17}{a['mean']:.4f} [{a['min']:.4f}-{a['max']:.4f}]   "
                  f"{fi['mean']:.4f} [{fi['min']:.4f}-{fi['max']:.4f}]   {fmt(reach[0]):>8}"
                  f"{fmt(reach[1]):>9}  {'-' if saved is None else f'{100 * saved:+.0f}%'}")
    print(f"\ntotal {summary['total_seconds']:.0f}s on {summary['device']}")


# -- plot ------------------------------------------------------------------------------------
STYLE = {"random": ("black", "s"), "least_confidence": ("tab:red", "o"),
         "margin": ("tab:orange", "^"), "entropy": ("tab:pink", "v"),
         "diverse": ("tab:green", "D"), "balanced": ("tab:purple", "P"), "mix": ("tab:blue", "X")}


def plot_many(summaries: list[dict], path: Path) -> None:
    """One panel per (run, rule): mean macro-F1 per budget, band = min..max over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, rule) for s in summaries for rule in s["summary"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    for ax, (s, rule) in zip(axes[0], panels):
        block = s["summary"][rule]
        for name, e in block["strategies"].items():
            xs = [int(b) for b in e["per_budget"]]
            mean = [e["per_budget"][str(b)]["mean"] for b in xs]
            lo = [e["per_budget"][str(b)]["min"] for b in xs]
            hi = [e["per_budget"][str(b)]["max"] for b in xs]
            color, marker = STYLE.get(name, (None, "x"))
            ax.plot(xs, mean, marker=marker, ms=4, color=color, lw=1.6 if name == "random" else 1.2,
                    label=f"{name} (AUC {e['auc']['mean']:.3f})")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.12)
        if block["random_final_macro_f1"] is not None:
            ax.axhline(block["random_final_macro_f1"], color="grey", lw=0.8, ls="--")
        n_seeds = max(len(e["seeds"]) for e in block["strategies"].values())
        ax.set_title(f"{rule} retrain each round, {n_seeds} seeds ({s['device']})", fontsize=9)
        ax.set_xlabel("human labels")
        ax.set_ylabel("test macro-F1 (mean; band: min-max over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="labelloop YAML settings (default: built-in defaults)")
    p.add_argument("--strategies", nargs="+", default=list(selection.STRATEGIES),
                   choices=list(selection.STRATEGIES) + list(selection.ALIASES))
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=3, help="annotation rounds after the seed set")
    p.add_argument("--per-round", type=int, default=100, help="labels added per round")
    p.add_argument("--seed-size", type=int, default=100, help="labels in each seed's seed set")
    p.add_argument("--pool-rows", type=int, default=1500,
                   help="unlabelled pool: a stable subsample of the training split (0 = all)")
    p.add_argument("--test-rows", type=int, default=500,
                   help="stable subsample of the frozen test split to score on (0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=1,
                   help="processes running campaigns at once (a GPU has room for many)")
    p.add_argument("--workdir", default="", help="where round bundles go (default: a temp dir)")
    # full rule
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--epochs", type=float, default=4.0, help="epochs over the labelled set")
    p.add_argument("--min-steps", type=int, default=30, help="at least this many steps a round")
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=16)
    # warm rule: defaults are feedback.warm_start's
    ws = load_settings(None, environ={}).feedback
    ws = getattr(ws, "warm_start", None)
    p.add_argument("--warm-method", default=getattr(ws, "method", "full"), choices=["lora", "full"])
    p.add_argument("--warm-epochs", type=float, default=getattr(ws, "epochs", 3.0))
    p.add_argument("--warm-learning-rate", type=float, default=getattr(ws, "learning_rate", 1e-4))
    p.add_argument("--warm-batch-size", type=int, default=getattr(ws, "batch_size", 32))
    p.add_argument("--warm-repeats", type=int, default=getattr(ws, "new_label_repeats", 4),
                   help="each new label appears this often in a warm round")
    p.add_argument("--warm-replay", type=int, default=getattr(ws, "replay_rows", 256),
                   help="earlier labels replayed in a warm round")
    # selection knobs (studio.* in the settings)
    st = load_settings(None, environ={}).studio
    p.add_argument("--mix-random-share", type=float, default=st.mix_random_share)
    p.add_argument("--mix-with", default=st.mix_with,
                   choices=list(selection.MIX_PARTNERS) + list(selection.ALIASES))
    p.add_argument("--diverse-candidates", type=int, default=st.diverse_candidates)
    p.add_argument("--model-dir", help="base model directory (default: the configured model.base)")
    p.add_argument("--dataset", help="corpus file (default: the configured dataset.path)")
    p.add_argument("--machine", help="machine name to record in the JSON")
    p.add_argument("--plot", default=str(REPO / "docs" / "loop_curve.png"),
                   help="PNG to write ('' for none)")
    p.add_argument("--json", default="", help="write the numbers here (after every campaign)")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="only plot saved results (one panel per run and rule) to --plot")
    args = p.parse_args(argv)
    if args.from_json:
        plot_many([json.loads(Path(f).read_text()) for f in args.from_json], Path(args.plot))
        return 0
    if args.seed_size < 1 or args.per_round < 1 or args.rounds < 1:
        p.error("--seed-size, --per-round and --rounds must be at least 1")
    need = args.seed_size + args.rounds * args.per_round
    if args.pool_rows and need > args.pool_rows:
        p.error(f"the campaign needs {need} pool texts, --pool-rows is {args.pool_rows}")
    args.strategies = [selection.canonical(s) for s in args.strategies]
    summary = run(args)
    if args.plot:
        plot_many([summary], Path(args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
