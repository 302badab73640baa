"""One feedback turn timed end to end, warm start against full retrain, on the same corrections.

What a user feels after "Start training": N annotator corrections (texts of the unlabelled pool
the champion gets wrong, given their corpus label, as an annotator correcting it would) go into
the labels store, then one real feedback turn runs (ZenML pipeline, MLflow registry, in-process
training, promotion, reload, push; Label Studio is not started here, so sync is skipped and the
labels come from the store as the webhook writes them). Reported per rule:

- wall time of the turn and its parts (prepare, train, test pass, register, judge);
- frozen-test macro-F1 of the champion before and of the challenger, and the promotion decision;
- the share of the corrected texts the served champion now predicts as corrected.

The first champion is trained once (`labelloop train` with --config) and copied for each rule,
so both start from the same model. Usage (CPU, the demo profile; a few minutes):
    .venv/bin/python benchmarks/loop_turn.py --config configs/demo.yaml --corrections 20 \
        --rules warm full --repeats 2 --json docs/loop_turn_cpu.json
On a GPU box at default settings (1,000 labels):
    python benchmarks/loop_turn.py --corrections 1000 --rules warm full
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(cmd: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{(out.stdout + out.stderr)[-3000:]}")
    return out.stdout


def corrections(settings, n: int):
    """n pool texts the champion gets wrong, with their corpus labels, and its pool accuracy."""
    from labelloop import challenger, data, registry
    from labelloop.tasks import task_from_settings

    task = task_from_settings(settings)
    train, _ = data.split(data.load_labelled(settings.dataset, task), settings.dataset.test_fraction)
    pool = train.sample(n=min(len(train), max(20 * n, 2000)), random_state=7)
    champion = str(registry.get_champion(settings).version)
    clf = challenger.classifier_for(settings, champion)
    preds = clf.predict(list(pool["text"]))
    wrong = [(t, lab, p) for t, lab, p in zip(pool["text"], pool["label"], preds) if p.label != lab]
    if len(wrong) < n:
        sys.exit(f"only {len(wrong)} wrong predictions in the pool; ask for fewer corrections")
    return wrong[:n], champion


def add_corrections(settings, rows, champion: str) -> None:
    from labelloop import labels_store
    from labelloop.labels_store import LabelRecord

    now = time.time()
    with labels_store.open_store(settings) as store:
        store.upsert_many([
            LabelRecord(source="label_studio", project="1", annotation_id=str(i + 1), text=t,
                        label=lab, updated_at=now + i, model_version=champion,
                        shown_label=p.label, shown_score=p.score, changed=True)
            for i, (t, lab, p) in enumerate(rows)])


def one_turn(base_dir: Path, env: dict[str, str], rule: str, n: int, config: str | None) -> dict:
    from labelloop import challenger, registry
    from labelloop.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix=f"turn-{rule}-", dir=base_dir.parent))
    shutil.copytree(base_dir, work, dirs_exist_ok=True)
    env = {**env, "LABELLOOP__DATA_DIR": str(work), "LABELLOOP__FEEDBACK__TRAIN_RULE": rule,
           "LABELLOOP__FEEDBACK__MIN_NEW_LABELS": str(max(1, n // 2))}
    os.environ.update({k: v for k, v in env.items() if k.startswith("LABELLOOP")})
    settings = load_settings(config)
    rows, champion = corrections(settings, n)
    add_corrections(settings, rows, champion)
    challenger._classifiers.clear()
    cmd = [sys.executable, "-m", "labelloop.cli", "feedback", "--project", "1", "--reason", "bench"]
    if config:
        cmd += ["--config", config]
    t0 = time.perf_counter()
    out = run(cmd, env)
    wall = time.perf_counter() - t0
    from labelloop import loop_status

    turn = loop_status.turns(settings, limit=1)[0]
    result = turn["details"].get("result", {})
    new_champion = str(registry.get_champion(settings).version)
    clf = challenger.classifier_for(settings, new_champion)
    trained = [r for r in rows if not challenger.is_holdout(r[0], settings.feedback.holdout_fraction)]
    fixed = sum(p.label == lab for (_, lab, _), p in
                zip(trained, clf.predict([t for t, _, _ in trained])))
    before = registry.get_version(settings, champion).tags.get("test_macro_f1")
    shutil.rmtree(work, ignore_errors=True)
    return {"rule": rule, "corrections": n, "wall_s": round(wall, 1),
            "turn_s": round(turn["details"].get("seconds", wall), 1),
            "timings": {k: round(v, 1) for k, v in (result.get("timings") or {}).items()},
            "champion_test_macro_f1": float(before) if before else None,
            "challenger_test_macro_f1": (result.get("metrics") or {}).get("macro_f1"),
            "promoted": result.get("promoted"), "reason": result.get("promotion_reason"),
            "corrected_and_trained": len(trained),
            "now_predicted_as_corrected": fixed, "served_version": new_champion,
            "summary": turn["summary"], "tail": out.strip().splitlines()[-8:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="settings profile (e.g. configs/demo.yaml)")
    p.add_argument("--corrections", type=int, default=20)
    p.add_argument("--rules", nargs="+", default=["warm", "full"], choices=["warm", "full"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="labelloop-turn-bench-"))
    base = root / "base"
    env = {**os.environ, "LABELLOOP__DATA_DIR": str(base),
           "LABELLOOP__STUDIO__PORT": "1", "LABELLOOP__STUDIO__API_TOKEN": "x" * 40,
           "LABELLOOP__SERVING__PORT": "1"}  # nothing listens: sync and reload are skipped
    env.pop("LABELLOOP_CONFIG", None)
    print(f"training the first champion ({args.config or 'defaults'}) ...", flush=True)
    t0 = time.perf_counter()
    run([sys.executable, "-m", "labelloop.cli", "train"] + (["--config", args.config]
                                                            if args.config else []), env)
    print(f"  {time.perf_counter() - t0:.0f} s")
    results = []
    for i in range(args.repeats):
        for rule in args.rules:
            r = one_turn(base, env, rule, args.corrections, args.config)
            results.append(r)
            print(f"{rule:>4} #{i + 1}: turn {r['turn_s']:.1f} s (train {r['timings'].get('train_s')}"
                  f" s, test pass {r['timings'].get('test_eval_s')} s); test macro-F1 "
                  f"{r['champion_test_macro_f1']:.4f} -> {r['challenger_test_macro_f1']:.4f}; "
                  f"{'promoted' if r['promoted'] else 'kept'}; corrected texts now right "
                  f"{r['now_predicted_as_corrected']}/{r['corrected_and_trained']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(sys.argv), "results": results}, indent=2, default=str))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
