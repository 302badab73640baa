"""Generation loop benchmark: a simulated human-feedback campaign, SFT alone against SFT then DPO.

Simulated annotators on the demo corpus (chatterbot, configs/generation.yaml): each round they
get N new prompts of the training split's pool; in the *edit* project they rewrite the shown
response into the corpus's reference response, in the *compare* project they see two samples
of the arm's current model (temperature `--temperature`) and prefer the one closer to the
reference by sentence chrF (equal scores or identical samples: no pair, as a tie). After each
round both arms retrain from the base model the way a feedback turn does
(labelloop.generation.feedback): SFT on the seed rows plus every human response so far (a human
response replaces the corpus rows of its prompt), and, for the DPO arm, then DPO (LoRA, the SFT
model as reference; labelloop.generation.preference) on every pair so far. Both are scored with
chrF on the frozen test split (greedy, `generation.max_new_tokens`). The SFT of a round is
shared by the arms (same rows, same seed: the same model), so the DPO arm costs only its DPO and
its samples. Every round records its times (SFT, samples, DPO, evaluation): one loop turn's
training and scoring, without ZenML/MLflow around it (`turn` times a real `labelloop feedback`).

    # CPU, small (minutes on 2 cores; OMP_NUM_THREADS=1 under load)
    OMP_NUM_THREADS=1 python benchmarks/generation_loop.py campaign --seed-rows 32 --per-round 16 \\
        --rounds 2 --test-rows 24 --set model.max_length=96 --set generation.max_new_tokens=24 \\
        --out docs/generation_loop_cpu.json
    # GPU: the whole pool, 3 seeds
    python benchmarks/generation_loop.py campaign --device cuda --seed-rows 100 --per-round 100 \\
        --rounds 6 --seeds 3 --out docs/generation_loop_h200.json --plot docs/generation_loop_curve.png
    # one real feedback turn (ZenML + MLflow + the pipeline), after `answers` simulated answers
    python benchmarks/generation_loop.py turn --answers 16 --out docs/generation_turn_cpu.json
    # the GPU box's kit (wheels, corpus, code, GGUF in two parts; see `kit --help`)
    python benchmarks/generation_loop.py kit .gpuloop/gen-loop
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import labelloop  # noqa: E402,F401
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from labelloop.generation import base, chat, data, evaluation, preference, training  # noqa: E402
from labelloop.generation.feedback import sft_rows  # noqa: E402
from labelloop.settings import load_settings  # noqa: E402


def _overrides(args) -> dict:
    out: dict = {"data_dir": args.data_dir, "training": {"device": args.device}}

    def put(dotted: str, value) -> None:
        node = out
        *heads, last = dotted.split(".")
        for h in heads:
            node = node.setdefault(h, {})
        node[last] = value

    if args.base:
        put("model.base", args.base)
    if args.dataset:
        put("dataset.path", args.dataset)
    if args.test_rows:
        put("dataset.max_test_rows", args.test_rows)
    for spec in args.set:
        key, _, value = spec.partition("=")
        put(key, yaml.safe_load(value))
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- the simulated annotators ----------------------------------------------------------------------
def sentence_chrf(hyp: str, ref: str) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(hyp, [ref]).score / 100.0


@torch.inference_mode()
def sample(model, tokenizer, prompts: list[str], settings, temperature: float, seed: int) -> list[str]:
    """One sampled response per prompt (what a compare task shows beside another sample)."""
    g = settings.generation
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for start in range(0, len(prompts), g.eval_batch_size):
        ids = [chat.prompt_ids(tokenizer, chat.messages_for(p, g.system_prompt), g.max_prompt_tokens)
               for p in prompts[start:start + g.eval_batch_size]]
        width = max(len(x) for x in ids)
        batch = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            batch[row, width - len(x):] = torch.tensor(x)
            mask[row, width - len(x):] = 1
        gen = model.generate(input_ids=batch.to(device), attention_mask=mask.to(device),
                             max_new_tokens=g.max_new_tokens, do_sample=True,
                             temperature=temperature, top_p=0.95,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        for row in range(len(ids)):
            new = gen[row, width:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return out


def simulated_pairs(prompts: list[str], refs: list[str], a: list[str], b: list[str]) -> pd.DataFrame:
    """The annotator prefers the response closer to the reference by chrF; ties give no pair."""
    rows = []
    for p, ref, x, y in zip(prompts, refs, a, b):
        sx, sy = sentence_chrf(x, ref), sentence_chrf(y, ref)
        if x.strip() and y.strip() and x.strip() != y.strip() and sx != sy:
            rows.append({"prompt": p, "chosen": x if sx > sy else y, "rejected": y if sx > sy else x})
    return pd.DataFrame(rows, columns=["prompt", "chosen", "rejected"])


# -- one campaign ------------------------------------------------------------------------------------
def _plain(model):
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    return model.eval()


def _score(model, tokenizer, test: pd.DataFrame, settings) -> tuple[float, float]:
    tokenizer.padding_side = "left"
    start = time.perf_counter()
    outs = [x.text for x in evaluation.generate(model, tokenizer, list(test["prompt"]), settings)]
    _sync()
    return float(evaluation.text_scores(outs, list(test["response"]))["chrf"]), \
        time.perf_counter() - start


def campaign(settings, train: pd.DataFrame, test: pd.DataFrame, args, seed: int) -> dict:
    s = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": seed})})
    prompts = sorted(train["prompt"].unique())
    rng = np.random.default_rng(seed)
    rng.shuffle(prompts)
    seed_prompts, pool = prompts[:args.seed_rows], prompts[args.seed_rows:]
    need = args.per_round * args.rounds
    if len(pool) < need:
        raise SystemExit(f"the pool holds {len(pool)} prompts, {need} needed "
                         f"({args.rounds} rounds of {args.per_round}): fewer rounds or a smaller seed")
    seed_rows = train[train["prompt"].isin(set(seed_prompts))]
    reference = train.drop_duplicates("prompt").set_index("prompt")["response"]

    def sft(rows):
        start = time.perf_counter()
        r = training.fine_tune(rows, s, progress=False)
        _sync()
        return _plain(r.model), r.tokenizer, time.perf_counter() - start, r.steps

    model, tok, sft_s, steps = sft(seed_rows)
    chrf0, eval_s = _score(model, tok, test, s)
    print(f"seed {seed}: first model on {len(seed_rows)} rows: test chrF {chrf0:.4f} "
          f"(SFT {sft_s:.1f}s, {steps} steps; eval {eval_s:.1f}s)", flush=True)
    rounds = [{"round": 0, "human_responses": 0, "pairs": 0, "sft_chrf": chrf0, "dpo_chrf": chrf0,
               "sft_s": sft_s, "eval_s": eval_s}]
    edits = pd.DataFrame(columns=["prompt", "response"])
    pairs = pd.DataFrame(columns=["prompt", "chosen", "rejected"])
    dpo_model = model  # the DPO arm's current champion writes its compare samples
    for r in range(1, args.rounds + 1):
        batch = pool[(r - 1) * args.per_round:r * args.per_round]
        refs = [reference[p] for p in batch]
        t = time.perf_counter()
        greedy = [x.text for x in evaluation.generate(dpo_model, tok, batch, s)]
        a = sample(dpo_model, tok, batch, s, args.temperature, seed * 1000 + r)
        _sync()
        gen_s = time.perf_counter() - t
        shown_chrf = float(evaluation.text_scores(greedy, refs)["chrf"])
        new_pairs = simulated_pairs(batch, refs, greedy, a)
        edits = pd.concat([edits, pd.DataFrame({"prompt": batch, "response": refs})],
                          ignore_index=True)
        pairs = pd.concat([pairs, new_pairs], ignore_index=True)
        rows = sft_rows(train[train["prompt"].isin(set(seed_prompts))], test, edits,
                        s.feedback.generation.human_repeats)
        sft_model, tok, sft_s, steps = sft(rows)
        sft_chrf, eval_sft_s = _score(sft_model, tok, test, s)
        t = time.perf_counter()
        dpo = preference.dpo_tune(sft_model, tok, pairs, s, progress=False) if len(pairs) else None
        _sync()
        dpo_s = time.perf_counter() - t
        dpo_model = dpo.model if dpo else sft_model
        dpo_chrf, eval_dpo_s = _score(dpo_model, tok, test, s) if dpo else (sft_chrf, 0.0)
        row = {"round": r, "human_responses": len(edits), "pairs": len(pairs),
               "human_answers": len(edits) + len(pairs), "sft_chrf": sft_chrf,
               "dpo_chrf": dpo_chrf, "shown_chrf": shown_chrf, "sft_rows": len(rows),
               "sft_steps": steps, "dpo_steps": dpo.steps if dpo else 0,
               "dpo_reward_accuracy": dpo.reward_accuracy if dpo else None,
               "samples_s": gen_s, "sft_s": sft_s, "dpo_s": dpo_s,
               "eval_s": eval_sft_s + eval_dpo_s,
               "turn_s": sft_s + dpo_s + eval_dpo_s}  # what one turn of the DPO arm trains+scores
        rounds.append(row)
        print(f"seed {seed} round {r}: {len(edits)} responses, {len(pairs)} pairs; test chrF "
              f"SFT {sft_chrf:.4f}, SFT+DPO {dpo_chrf:.4f} (shown {shown_chrf:.4f}); "
              f"SFT {sft_s:.1f}s, DPO {dpo_s:.1f}s, samples {gen_s:.1f}s, eval "
              f"{row['eval_s']:.1f}s", flush=True)
    return {"seed": seed, "rounds": rounds}


def campaign_section(args) -> dict:
    settings = load_settings(REPO / "configs" / "generation.yaml", overrides=_overrides(args),
                             environ={})
    start = time.perf_counter()
    base_dir = base.resolve_causal_base(settings.model.base, base.cache_root(settings))
    ready_s = time.perf_counter() - start
    df = data.load_pairs(settings.dataset)
    train, test = data.frozen_split(df, settings.dataset)
    print(f"{len(train)} training pairs ({train['prompt'].nunique()} prompts), {len(test)} test "
          f"pairs; base {base_dir} ready in {ready_s:.1f}s", flush=True)
    started = time.perf_counter()
    runs = []
    for k in range(args.seeds):
        runs.append(campaign(settings, train, test, args, settings.training.seed + k))
        if args.out:  # a run cut short by a time limit keeps the seeds it finished
            Path(args.out).write_text(json.dumps({"partial": True, "command": " ".join(sys.argv),
                                                  "runs": runs}, indent=2, default=str))
    return {"command": " ".join(sys.argv), "device": str(settings.training.device),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            "wall_s": time.perf_counter() - started, "train_rows": len(train),
            "test_rows": len(test), "args": vars(args),
            "settings": {"training": settings.training.model_dump(),
                         "model": settings.model.model_dump(),
                         "generation": settings.generation.model_dump(),
                         "dpo": settings.feedback.generation.dpo.model_dump()},
            "summary": summarize(runs), "runs": runs}


def summarize(runs: list[dict]) -> list[dict]:
    """Per round: mean and range over seeds of both arms' test chrF and the turn's seconds."""
    out = []
    for r in range(max(len(run["rounds"]) for run in runs)):
        rows = [run["rounds"][r] for run in runs if len(run["rounds"]) > r]  # a seed cut short

        def span(key):
            values = [x[key] for x in rows if x.get(key) is not None]
            return [float(min(values)), float(np.mean(values)), float(max(values))] if values else None

        out.append({"round": r, "human_responses": rows[0]["human_responses"], "seeds": len(rows),
                    "pairs": span("pairs"), "sft_chrf": span("sft_chrf"),
                    "dpo_chrf": span("dpo_chrf"), "sft_s": span("sft_s"),
                    "dpo_s": span("dpo_s") if r else None, "turn_s": span("turn_s") if r else None})
    return out


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["human_responses"] for r in report["summary"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name in (("sft_chrf", "SFT"), ("dpo_chrf", "SFT then DPO")):
        lo, mean, hi = zip(*[r[key] for r in report["summary"]])
        ax.plot(xs, mean, marker="o", label=name)
        ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_xlabel("human responses (edit answers; the DPO arm also has the pairs)")
    ax.set_ylabel("chrF on the frozen test split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# -- one real feedback turn ------------------------------------------------------------------------
def turn_section(args) -> dict:
    """`labelloop train` (the first model), `answers` simulated edits and compare answers written
    to the labels store as the webhook writes them, then one timed `labelloop feedback`."""
    from labelloop import labels_store
    from labelloop.labels_store import LabelRecord

    root = Path(args.workdir or tempfile.mkdtemp(prefix="labelloop-genturn-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"PYTHONPATH": str(REPO), "ZENML_CONFIG_PATH": str(root / "zen"),
                "LABELLOOP_CONFIG": str(REPO / "configs" / "generation.yaml"),
                "LABELLOOP__DATA_DIR": str(root / "data"), "LABELLOOP__ANNOTATION__TOOLS": "[]",
                "LABELLOOP__TRAINING__DEVICE": args.device,
                "LABELLOOP__FEEDBACK__MIN_NEW_LABELS": "1",
                "LABELLOOP__FEEDBACK__GENERATION__MIN_PREFERENCE_PAIRS": "1"})
    for key, value in _overrides(args).items():
        pass  # (only --set values become environment settings below)
    for spec in args.set:
        key, _, value = spec.partition("=")
        env["LABELLOOP__" + "__".join(k.upper() for k in key.split("."))] = value
    if args.base:
        env["LABELLOOP__MODEL__BASE"] = args.base
    if args.test_rows:
        env["LABELLOOP__DATASET__MAX_TEST_ROWS"] = str(args.test_rows)
    settings = load_settings(env["LABELLOOP_CONFIG"], environ={
        k: v for k, v in env.items() if k.startswith("LABELLOOP__")})

    def cli(*a):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "labelloop.cli", *a], env=env, cwd=REPO,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"{a} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout, wall

    _, train_s = cli("train")
    train, test = data.frozen_split(data.load_pairs(settings.dataset), settings.dataset)
    pool = train.drop_duplicates("prompt").sample(args.answers, random_state=0)
    records = []
    for i, (p, ref) in enumerate(zip(pool["prompt"], pool["response"])):
        records.append(LabelRecord(source="label_studio", project="1", annotation_id=f"e{i}",
                                   text=p, label=ref, kind="response", shown_label="(shown)",
                                   model_version="1", updated_at=float(i + 1)))
        records.append(LabelRecord(source="label_studio", project="2", annotation_id=f"c{i}",
                                   text=p, label=ref, rejected=f"(another answer {i})",
                                   choice="a", kind="preference", model_version="1",
                                   updated_at=float(i + 1)))
    with labels_store.open_store(settings) as store:
        store.upsert_many(records)
    out, turn_s = cli("feedback", "--reason", "benchmark")
    lines = [x for x in out.splitlines() if x.startswith(("turn ", "decision", "training ",
                                                           "new version", "  "))]
    print("\n".join(lines))
    return {"command": " ".join(sys.argv), "device": args.device,
            "load_average": os.getloadavg(), "first_train_wall_s": train_s,
            "feedback_turn_wall_s": turn_s, "answers": args.answers, "summary": lines,
            "workdir": str(root)}


# -- the GPU box's kit -------------------------------------------------------------------------------
BENCH_SH = """#!/bin/bash
# Call 2 on the GPU box, from the checkout's root (its code, carried with the working tree: the
# kit's code/ would not fit beside the GGUF's second part): join the GGUF, run the campaign.
set -o pipefail
ROOT=$PWD
cd "$(dirname "$0")/.."
cat /tmp/gk/gguf.a partB/gguf.b > /tmp/gk/SmolLM2-135M-Instruct.Q4_1.gguf || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site lxml/*.whl || exit 4
export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1
DATASET=$PWD/extra/chatterbot-english
cd "$ROOT" && timeout ${BENCH_TIMEOUT:-540} python3 benchmarks/generation_loop.py campaign --device cuda \\
  --base /tmp/gk/SmolLM2-135M-Instruct.Q4_1.gguf --dataset $DATASET \\
  --seed-rows ${SEED_ROWS:-100} --per-round ${PER_ROUND:-100} --rounds ${ROUNDS:-6} --seeds ${SEEDS:-2} \\
  --data-dir /tmp/gk/data --out $OUT/generation_loop_gpu.json 2>&1 | tee $OUT/loop.log
"""


def build_kit(kit: Path) -> None:
    """benchmarks/generation.py's kit (wheels, corpus, code, GGUF in two parts) plus this
    benchmark and its own call-2 script."""
    import shutil

    sys.path.insert(0, str(REPO / "benchmarks"))
    import generation as gen_bench
    from box_wheels import download

    gen_bench.build_kit(kit)
    # chrF (sacrebleu) and ROUGE-L's absl are not in that kit's wheel list: add them, pinned;
    # sacrebleu's lxml (5 MB) goes with call 2 (`lxml/`), call 1 being near the 64 MiB limit.
    download(["sacrebleu", "portalocker", "tabulate", "colorama", "absl-py"], kit / "whl")
    download(["lxml"], kit / "lxml")
    shutil.copy(Path(__file__), kit / "code" / "benchmarks")
    (kit / "extra" / "loop.sh").write_text(BENCH_SH)
    print(f"call 1 (carry {kit}/whl, partA, extra, code): bash {kit}/extra/setup.sh\n"
          f"call 2 (carry {kit}/partB, lxml, extra; from the checkout's root): "
          f"bash {kit}/extra/loop.sh")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    for name in ("campaign", "turn"):
        c = sub.add_parser(name)
        c.add_argument("--device", default="auto" if name == "campaign" else "cpu")
        c.add_argument("--base", help="model.base (default: configs/generation.yaml's GGUF)")
        c.add_argument("--dataset", help="dataset.path (default: the chatterbot English corpus)")
        c.add_argument("--test-rows", type=int, help="stable subsample of the test split")
        c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        c.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "labelloop-genbench"),
                       help="where the converted base model is cached")
        c.add_argument("--out", help="write the JSON report here")
    camp = sub.choices["campaign"]
    camp.add_argument("--seed-rows", type=int, default=100, help="prompts the first model trains on")
    camp.add_argument("--per-round", type=int, default=100, help="new prompts answered per round")
    camp.add_argument("--rounds", type=int, default=4)
    camp.add_argument("--seeds", type=int, default=1, help="campaigns with seeds seed, seed+1, ...")
    camp.add_argument("--temperature", type=float, default=1.0, help="the compare samples'")
    camp.add_argument("--plot", help="draw chrF against human answers (PNG)")
    camp.add_argument("--from-json", help="only redraw the plot from a report")
    turn = sub.choices["turn"]
    turn.add_argument("--answers", type=int, default=16, help="edit and compare answers each")
    turn.add_argument("--workdir", help="keep the turn's ZenML/MLflow stores here")
    k = sub.add_parser("kit", help="write the GPU-box kit")
    k.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.section == "kit":
        build_kit(args.dir)
        return 0
    if args.section == "campaign" and args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        report.setdefault("summary", summarize(report["runs"]))  # a partial report has none
    else:
        report = campaign_section(args) if args.section == "campaign" else turn_section(args)
        print(json.dumps(report["summary"], indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    if args.section == "campaign" and args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
