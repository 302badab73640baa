"""The feedback loop's generation half: what the generic `feedback` pipeline
(pipelines/feedback.py, steps pipelines/steps/feedback_*.py) hands to this family.

Human data in the labels store (annotation tools write it; labelloop.labels_store):
- kind `response` (Label Studio's *edit* project): text = the prompt, label = the annotator's
  final response (the champion's, kept or rewritten);
- kind `preference` (the *compare* project): label = the chosen response, `rejected` the other;
  only choices `a` / `b` are pairs (a tie or "both bad" teaches no direction).

Held out: a random share of PROMPTS (`feedback.holdout_fraction`, by the same hash
classification uses on texts), whatever their kind, never trained on. A turn:

- `evaluate_on_fresh`: the champion's greedy responses to held-out prompts scored by chrF
  against the annotators' final responses, and its preference accuracy on held-out pairs (how
  often its likelihood ranks the chosen response above the rejected one;
  labelloop.generation.preference);
- `fresh_reasons`: the score rules of the decision (`feedback.generation.min_fresh_chrf`,
  `min_preference_accuracy`, on at least `feedback.min_fresh_labels` held-out answers);
- `retrain`: SFT from the base model on the base rows plus the trainable human responses (a
  human response replaces the corpus's responses to the same prompt), then, once at least
  `feedback.generation.min_preference_pairs` trainable pairs exist, DPO on them (LoRA; the SFT
  model is the reference). Scored on the frozen test split, registered, judged by `judge`;
- `judge` / `decide`: promoted only if not worse beyond chance on the frozen test split (paired
  bootstrap over the same prompts) and better on the held-out human data (chrF of responses,
  then preference accuracy); without held-out human data, better beyond chance on the test
  split, or more like the trained human responses than the champion, decides.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, Optional

import pandas as pd

from labelloop import promotion
from labelloop.challenger import is_holdout
from labelloop.data import human_digest as _digest
from labelloop.settings import ConfigError, FeedbackSettings, Settings

RESPONSE, PREFERENCE = "response", "preference"
PAIR_CHOICES = ("a", "b")
RULE_SFT, RULE_DPO = "sft", "sft+dpo"
_generators: dict[tuple[str, str], Any] = {}


# -- human data --------------------------------------------------------------------------------
def _active(settings: Settings, max_seq: Optional[int]) -> pd.DataFrame:
    from labelloop import labels_store

    with labels_store.open_store(settings) as store:
        df = store.rows(status=labels_store.ACTIVE)
    if max_seq is not None and not df.empty:
        df = df[df["seq"] <= int(max_seq)]
    return df


def _kind(df: pd.DataFrame) -> pd.Series:
    # A store written before kinds existed holds only responses.
    return df["kind"].fillna(RESPONSE) if "kind" in df else pd.Series(RESPONSE, index=df.index)


def responses_from_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Final human responses, one per prompt (the latest wins): prompt, response, seq, ..."""
    columns = ["prompt", "response", "seq", "changed", "model_version", "shown"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    df = df[_kind(df) == RESPONSE]
    df = df[df["label"].fillna("").astype(str).str.strip() != ""]
    df = df.sort_values(["updated_ts", "seq"]).drop_duplicates("text", keep="last")
    out = df.rename(columns={"text": "prompt", "label": "response", "shown_label": "shown"})
    return out.reindex(columns=columns).reset_index(drop=True)


def preferences_from_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Preference pairs (choice a or b, two different non-empty responses): prompt, chosen,
    rejected, seq, model_version; one per prompt and pair (the latest wins)."""
    columns = ["prompt", "chosen", "rejected", "seq", "model_version"]
    if df.empty or "rejected" not in df:
        return pd.DataFrame(columns=columns)
    df = df[_kind(df) == PREFERENCE]
    if "choice" in df:
        df = df[df["choice"].isin(PAIR_CHOICES)]
    chosen = df["label"].fillna("").astype(str).str.strip()
    rejected = df["rejected"].fillna("").astype(str).str.strip()
    df = df[(chosen != "") & (rejected != "") & (chosen != rejected)]
    df = df.sort_values(["updated_ts", "seq"]).drop_duplicates(["text", "label", "rejected"],
                                                               keep="last")
    out = df.rename(columns={"text": "prompt", "label": "chosen"})
    return out.reindex(columns=columns).reset_index(drop=True)


def human_responses(settings: Settings, max_seq: Optional[int] = None) -> pd.DataFrame:
    return responses_from_rows(_active(settings, max_seq))


def human_preferences(settings: Settings, max_seq: Optional[int] = None) -> pd.DataFrame:
    return preferences_from_rows(_active(settings, max_seq))


def split_by_prompt(df: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trainable, held out): a prompt is always on the same side, whatever the answer's kind."""
    if df.empty:
        return df, df
    held = df["prompt"].map(lambda p: is_holdout(p, fraction))
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def human_digest(responses: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """Order-free digest of the human data a retrain would use: equal means the same data."""
    frame = pd.concat([
        pd.DataFrame({"text": list(responses["prompt"]), "label": list(responses["response"])}),
        pd.DataFrame({"text": ["preference:" + p for p in pairs["prompt"]],
                      "label": [f"{c}\x1f{r}" for c, r in zip(pairs["chosen"], pairs["rejected"])]}),
    ], ignore_index=True)
    return _digest(frame)


def _humans_and_rest(base_train: pd.DataFrame, test: pd.DataFrame,
                     responses: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trainable human responses (never a test prompt's) and the base rows of the prompts
    no human answered (a human response replaces the corpus's for its prompt)."""
    human = responses[~responses["prompt"].isin(set(test["prompt"]))][["prompt", "response"]]
    rest = base_train[~base_train["prompt"].isin(set(human["prompt"]))][["prompt", "response"]]
    return human, rest


def sft_rows(base_train: pd.DataFrame, test: pd.DataFrame, responses: pd.DataFrame,
             human_repeats: int = 1) -> pd.DataFrame:
    """Base rows plus human responses, each `human_repeats` times; a human response replaces the
    base rows of its prompt, and prompts of the frozen test split are never trained on."""
    if human_repeats < 1:
        raise ValueError(f"human_repeats must be at least 1, not {human_repeats}")
    human, rest = _humans_and_rest(base_train, test, responses)
    return pd.concat([rest, *[human] * human_repeats], ignore_index=True)


def warm_rows(base_train: pd.DataFrame, test: pd.DataFrame, responses: pd.DataFrame,
              replay_rows: int, repeats: int, seed: int) -> pd.DataFrame:
    """A warm start's rows (`feedback.train_rule: warm`): every trainable human response
    `repeats` times, plus a stable replay sample of `replay_rows` base rows of prompts no human
    answered, so the champion keeps what it knew while it learns what annotators wrote."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    human, rest = _humans_and_rest(base_train, test, responses)
    replay = rest.sample(n=min(replay_rows, len(rest)), random_state=seed)
    return pd.concat([replay, *[human] * repeats], ignore_index=True)


def dpo_pairs(pairs: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    return pairs[~pairs["prompt"].isin(set(test["prompt"]))][
        ["prompt", "chosen", "rejected"]].reset_index(drop=True)


# -- models --------------------------------------------------------------------------------------
def generator_for(settings: Settings, version: str):
    """A registered version loaded for inference, once per process (steps share a process)."""
    from labelloop import registry
    from labelloop.generation.bundle import load_generation_bundle

    key = (settings.registry.model_name, str(version))
    if key not in _generators:
        _generators[key] = load_generation_bundle(registry.fetch_bundle(settings, version),
                                                  device=settings.training.device)
    return _generators[key]


def responses_of(gen, prompts: list[str], settings: Settings) -> list[str]:
    from labelloop.generation import evaluation

    if not prompts:
        return []
    return [x.text for x in evaluation.generate(gen.model, gen.tokenizer, prompts, settings)]


def champion_responses(settings: Settings, gen, prompts: list[str]) -> tuple[list, list]:
    """(greedy, sampled): a model's response to each prompt, and a second, sampled one (seeded:
    the same prompts give the same pairs) for annotators to compare with it. What the annotation
    tools show (Label Studio's edit and compare tasks, Argilla's records)."""
    from labelloop.generation import evaluation

    if not prompts:
        return [], []
    greedy = evaluation.generate(gen.model, gen.tokenizer, prompts, settings)
    sampled = evaluation.generate(gen.model, gen.tokenizer, prompts, settings, sample_seed=0)
    return [g.text for g in greedy], [g.text for g in sampled]


def chrf(outputs: list[str], references: list[str]) -> float:
    from labelloop.generation import evaluation

    return float(evaluation.text_scores(outputs, references)["chrf"])


def human_scores(gen, responses: pd.DataFrame, pairs: pd.DataFrame,
                 settings: Settings) -> dict[str, Any]:
    """chrF of `gen`'s greedy responses against human responses, and its preference accuracy."""
    from labelloop.generation import preference

    out: dict[str, Any] = {"responses": int(len(responses)), "pairs": int(len(pairs)),
                           "chrf": None, "preference_accuracy": None}
    if len(responses):
        out["chrf"] = chrf(responses_of(gen, list(responses["prompt"]), settings),
                           list(responses["response"]))
    if len(pairs):
        out["preference_accuracy"] = preference.preference_accuracy(gen.model, gen.tokenizer,
                                                                    pairs, settings)
    return out


# -- the turn: fresh evaluation and decision rules -------------------------------------------------
def preflight(settings: Settings) -> None:
    """Base model and data load, and the training rule is one generation has; else one error."""
    from labelloop.generation import steps

    if settings.feedback.train_rule == "warm":
        from labelloop import modeling, registry

        champion = registry.get_champion(settings)
        if champion is None:
            raise ConfigError("feedback.train_rule is warm but there is no champion to continue "
                              "from: train one first (labelloop train), or use auto or full")
        meta = modeling.read_bundle_meta(registry.fetch_bundle(settings, champion.version))
        family = (meta.get("task") or {}).get("type")
        if family != "generation":
            raise ConfigError(f"feedback.train_rule is warm but the champion of "
                              f"{settings.registry.model_name} is a {family} model")
    steps.check_inputs(settings)


def evaluate_on_fresh(settings: Settings, project: Optional[int] = None) -> dict[str, Any]:
    from labelloop import labels_store
    from pipelines.steps.feedback_evaluate import champion_info

    champ = champion_info(settings)
    with labels_store.open_store(settings) as store:
        new_since_run = store.new_labels_since_last_run()
        seq_now = store.current_seq()
        last_digest = store.get_meta(f"last_retrain_digest:{'all' if project is None else project}")
    rows = _active(settings, seq_now)
    responses, pairs = responses_from_rows(rows), preferences_from_rows(rows)
    fraction = settings.feedback.holdout_fraction
    trainable, heldout = split_by_prompt(responses, fraction)
    ptrain, pheld = split_by_prompt(pairs, fraction)
    seen = int((champ or {}).get("labels_seq", 0))
    out: dict[str, Any] = {
        "family": "generation", "champion": champ, "fresh": None,
        "fresh_labels": int(len(heldout) + len(pheld)),
        "new_labels_since_last_retrain": new_since_run, "store_seq": seq_now,
        "human_labels": int(len(responses) + len(pairs)),
        "trainable_labels": int(len(trainable) + len(ptrain)),
        "trainable_responses": int(len(trainable)), "trainable_pairs": int(len(ptrain)),
        "new_trainable_labels": int((trainable["seq"] > seen).sum() + (ptrain["seq"] > seen).sum()),
        "human_digest": human_digest(trainable, ptrain), "last_retrain_digest": last_digest,
        "estimate": "held-out human responses and preferences",
    }
    if champ is None:
        print("fresh evaluation: no champion yet")
        return out
    if heldout.empty and pheld.empty:
        print(f"fresh evaluation: champion v{champ['version']}: no held-out human answers yet "
              f"({len(responses)} responses, {len(pairs)} preference pairs; {fraction:.0%} of "
              "prompts are held out)")
        return out
    out["fresh"] = human_scores(generator_for(settings, champ["version"]), heldout, pheld, settings)
    print("fresh evaluation: champion v" + champ["version"] + ": " + describe_fresh(out["fresh"]))
    return out


def describe_fresh(fresh: dict[str, Any]) -> str:
    bits = []
    if fresh.get("responses"):
        bits.append(f"chrF {fresh['chrf']:.4f} against the final responses to "
                    f"{fresh['responses']} held-out prompts")
    if fresh.get("pairs"):
        bits.append(f"preference accuracy {fresh['preference_accuracy']:.4f} on "
                    f"{fresh['pairs']} held-out pairs")
    return "; ".join(bits) or "no held-out human answers"


def describe_estimate(fresh_eval: dict[str, Any]) -> str:
    fresh = fresh_eval.get("fresh")
    if not fresh:
        return (f"estimate: no held-out human answers to score the champion on "
                f"({int(fresh_eval.get('fresh_labels') or 0)})")
    return "estimate: " + describe_fresh(fresh)


def fresh_reasons(fresh: Optional[dict[str, Any]], cfg: FeedbackSettings) -> list[str]:
    """Reasons to retrain from the champion's scores on held-out human answers."""
    if not fresh:
        return []
    g, reasons = cfg.generation, []
    if fresh.get("responses", 0) >= cfg.min_fresh_labels and fresh["chrf"] < g.min_fresh_chrf:
        reasons.append(f"held-out chrF {fresh['chrf']:.4f} against the annotators' final "
                       f"responses is below feedback.generation.min_fresh_chrf "
                       f"{g.min_fresh_chrf:.4f} ({fresh['responses']} prompts)")
    acc = fresh.get("preference_accuracy")
    if fresh.get("pairs", 0) >= cfg.min_fresh_labels and acc < g.min_preference_accuracy:
        reasons.append(f"held-out preference accuracy {acc:.4f} is below "
                       f"feedback.generation.min_preference_accuracy "
                       f"{g.min_preference_accuracy:.4f} ({fresh['pairs']} pairs)")
    return reasons


# -- promotion ---------------------------------------------------------------------------------------
def _compare(h: Optional[dict]) -> int:
    if not h or not h.get("n"):
        return 0
    return (h["challenger"] > h["champion"]) - (h["challenger"] < h["champion"])


def _fmt(name: str, h: Optional[dict]) -> str:
    if not h or not h.get("n"):
        return f"no {name}"
    return f"{name} {h['challenger']:.4f} vs {h['champion']:.4f} on {h['n']}"


def decide(metric: str, challenger_version: str, champion_version: Optional[str],
           challenger_score: float, champion_score: Optional[float],
           interval: Optional[tuple[float, float]], margin: float, confidence: float,
           heldout: Optional[dict] = None, preferences: Optional[dict] = None,
           corrections: Optional[dict] = None, *,
           max_loss: float, best: Optional[tuple[str, float]] = None) -> promotion.PromotionDecision:
    """The generation feedback rule. `heldout`: chrF of both versions' responses against the
    held-out human responses; `preferences`: their preference accuracy on held-out pairs;
    `corrections`: chrF against the human responses the challenger trained on. Each
    {"n", "challenger", "champion"}. `max_loss`: the most the challenger may lose on the test
    split when only the responses it trained on speak for it (it learns them whatever they
    are), against the champion and against `best` (version, score: the best version promoted
    earlier on this test split)."""
    human = {"heldout": heldout or {}, "preferences": preferences or {},
             "corrections": corrections or {}}

    def make(promote: bool, reason: str) -> promotion.PromotionDecision:
        return promotion.PromotionDecision(
            promote, reason, metric, str(challenger_version), challenger_score, champion_version,
            champion_score, margin, rule="paired", confidence=confidence, human=human,
            interval=tuple(interval) if interval else None)

    early = promotion._preconditions(challenger_score, champion_version, challenger_version,
                                     champion_score)
    if early is not None:
        return make(*early)
    low, high = interval
    gain = challenger_score - champion_score
    test = (f"test {metric} {challenger_score:.4f} vs {champion_score:.4f} ({gain:+.4f}, paired "
            f"bootstrap {confidence:.0%} interval [{low:+.4f}, {high:+.4f}])")
    evidence = (f"{_fmt('held-out human responses chrF', heldout)}; "
                f"{_fmt('held-out preference accuracy', preferences)}; "
                f"{_fmt('trained human responses chrF', corrections)}")
    if high < 0:
        return make(False, f"kept the champion: worse beyond chance on the {test} ({evidence})")
    votes = [_compare(heldout), _compare(preferences)]
    has_heldout = bool((heldout or {}).get("n") or (preferences or {}).get("n"))
    if has_heldout:
        if max(votes) > 0 and min(votes) >= 0:
            return make(True, f"promoted: at least as good on the {test}, better on held-out "
                              f"human data ({evidence})")
        if min(votes) < 0 and max(votes) <= 0:
            return make(False, f"kept the champion: worse on held-out human data; {test} "
                               f"({evidence})")
        return make(False, f"kept the champion: not better on held-out human data; {test} "
                           f"({evidence})")
    if low > 0 and gain >= margin:
        return make(True, f"promoted: better beyond chance on the {test}, no held-out human "
                          f"data ({evidence})")
    if _compare(corrections) > 0:
        lost = promotion.loss_beyond(max_loss, metric, challenger_score, champion_score, best)
        if lost:
            return make(False, f"kept the champion: closer to the human responses it trained on "
                               f"but {lost} on the {test}, more than promotion.max_loss "
                               f"{max_loss} ({evidence})")
        return make(True, f"promoted: within noise on the {test}, no held-out human data, "
                          f"closer to the human responses it trained on ({evidence})")
    return make(False, f"kept the champion: within noise on the {test} and no better on human "
                       f"data ({evidence})")


def judge(settings: Settings, challenger_version: str, challenger_outputs: list[str], challenger,
          test: pd.DataFrame, champion_version: Optional[str], heldout: pd.DataFrame,
          heldout_pairs: pd.DataFrame, trained: pd.DataFrame) -> promotion.PromotionDecision:
    """The promotion decision for a challenger (loaded: `challenger`) with these test outputs."""
    from labelloop.generation import promotion as gen_promotion

    p = settings.promotion
    if champion_version is None or p.rule == "margin":
        return gen_promotion.judge(settings, challenger_version, challenger_outputs, test,
                                   champion_version)
    refs = list(test["response"])
    chal = gen_promotion.per_row_stats(p.metric, list(challenger_outputs), refs)
    champ = gen_promotion.per_row_stats(
        p.metric, gen_promotion.outputs_of(settings, str(champion_version), test), refs)
    _, low, high = gen_promotion.paired_bootstrap(p.metric, champ, chal, p.resamples,
                                                  p.confidence, seed=settings.training.seed)
    champion = generator_for(settings, str(champion_version))
    a = human_scores(champion, heldout, heldout_pairs, settings)
    b = human_scores(challenger, heldout, heldout_pairs, settings)
    trained = trained[~trained["prompt"].isin(set(test["prompt"]))]
    no_pairs = pd.DataFrame(columns=["prompt", "chosen", "rejected"])
    ca = human_scores(champion, trained, no_pairs, settings)
    cb = human_scores(challenger, trained, no_pairs, settings)

    def pair(key: str, n: int, x: dict, y: dict) -> dict:
        return {"n": n, "champion": x[key], "challenger": y[key]} if n else {"n": 0}

    return decide(p.metric, challenger_version, str(champion_version),
                  gen_promotion.score_from_stats(p.metric, chal),
                  gen_promotion.score_from_stats(p.metric, champ), (low, high), p.margin,
                  p.confidence, heldout=pair("chrf", len(heldout), a, b),
                  preferences=pair("preference_accuracy", len(heldout_pairs), a, b),
                  corrections=pair("chrf", len(trained), ca, cb), max_loss=p.max_loss,
                  best=gen_promotion.best_promoted(settings, test, challenger_version)
                  if len(trained) else None)


# -- the retrain ------------------------------------------------------------------------------------
def retrain(settings: Settings, project: Optional[int] = None,
            turn: Optional[int] = None) -> dict[str, Any]:
    """SFT (+ DPO) a challenger, score, register and (maybe) promote it; what happened."""
    import mlflow

    from labelloop import labels_store, loop_status, registry, scratch
    from labelloop.generation import bundle, evaluation, preference, steps, training
    from labelloop.generation import data as gen_data
    from labelloop.generation.promotion import store_outputs
    from labelloop.tasks import task_from_settings
    from pipelines.steps.feedback_evaluate import LABELS_SEQ_TAG, champion_info

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with labels_store.open_store(settings) as store:
        seq = store.current_seq()  # answers up to here are what the challenger trains on
    rows_now = _active(settings, seq)
    fraction = settings.feedback.holdout_fraction
    trainable, heldout = split_by_prompt(responses_from_rows(rows_now), fraction)
    ptrain, pheld = split_by_prompt(preferences_from_rows(rows_now), fraction)
    champ = champion_info(settings)
    base_train, test, _ = steps.load(settings)
    g = settings.feedback.generation
    # warm: the champion continued on the human responses (x new_label_repeats) plus a replay
    # sample, seconds of SFT; auto and full: SFT from the base model on base rows + humans.
    warm = settings.feedback.train_rule == "warm" and champ is not None
    if warm:
        w = settings.feedback.warm_start
        rows = warm_rows(base_train, test, trainable, w.replay_rows, w.new_label_repeats,
                         settings.training.seed)
        init_dir = str(registry.fetch_bundle(settings, champ["version"]))
        # the warm start's own schedule (feedback.warm_start: method, learning rate, epochs,
        # batch), as for the classifier: a few rewrites need more, larger steps to stick
        from labelloop.challenger import warm_training_settings

        train_settings = settings.model_copy(update={"training": warm_training_settings(settings)})
    else:
        from labelloop.generation.training import resolve

        train_settings = settings.model_copy(update={"training": resolve(settings.training)})
        rows = sft_rows(base_train, test, trainable, g.human_repeats)
        init_dir = None
    pairs = dpo_pairs(ptrain, test)
    rule = RULE_DPO if len(pairs) >= g.min_preference_pairs else RULE_SFT
    rule_tag = f"warm-{rule}" if warm else rule  # the registry's and MLflow's name for it
    why = (f"{len(pairs)} trainable preference pairs "
           f"{'>=' if rule == RULE_DPO else '<'} feedback.generation.min_preference_pairs "
           f"{g.min_preference_pairs}")
    timings["prepare_s"] = time.perf_counter() - t0
    n_human = int((~trainable["prompt"].isin(set(test["prompt"]))).sum())
    if warm:
        start = f"warm start from v{champ['version']}"
        humans = (f"{n_human} human responses, each "
                  f"{settings.feedback.warm_start.new_label_repeats} times, and a replay sample")
    else:
        start = "SFT from the base model"
        humans = f"{n_human} human responses" + (
            f", each {g.human_repeats} times" if g.human_repeats > 1 and n_human else "")
    print(f"retrain: {start} on {len(rows)} rows ({humans}); "
          + (f"then DPO on {len(pairs)} preference pairs" if rule == RULE_DPO else
             f"no DPO ({why})")
          + f"; {len(heldout)} responses and {len(pheld)} pairs held out")
    stages = len(loop_status.STAGES)

    def on_log(step_no: int, values: dict[str, float]) -> None:
        mlflow.log_metrics(values, step=step_no)
        loop_status.set_stage(settings, turn, "train", (3 + 0.5) / stages)

    version_guess = registry.next_version(settings)
    tmp = scratch.make(settings, "challenger")
    task = task_from_settings(settings)
    try:
        with mlflow.start_run(run_name=f"training v{version_guess} ({rule_tag})", nested=True) as run:
            mlflow.set_tags({"labelloop.kind": "training", "labelloop.train_rule": rule_tag})
            mlflow.log_params({"train_rule": rule_tag, "train_rule_why": why[:250],
                               "warm_from": champ["version"] if warm else None,
                               "train_rows": len(rows), "human_responses": n_human,
                               "preference_pairs": len(pairs), "heldout_responses": len(heldout),
                               "heldout_pairs": len(pheld),
                               "method": train_settings.training.method,
                               "epochs": train_settings.training.epochs,
                               "learning_rate": train_settings.training.learning_rate,
                               "dpo_beta": g.dpo.beta if rule == RULE_DPO else None})
            t1 = time.perf_counter()
            sft = training.fine_tune(rows, train_settings, on_log=on_log, init_dir=init_dir)
            timings["sft_s"] = time.perf_counter() - t1
            model, dpo = sft.model, None
            if rule == RULE_DPO:
                t1 = time.perf_counter()
                dpo = preference.dpo_tune(model, sft.tokenizer, pairs, settings, on_log=on_log)
                model = dpo.model
                timings["dpo_s"] = time.perf_counter() - t1
                mlflow.log_metrics({"dpo_final_loss": dpo.final_loss,
                                    "dpo_reward_accuracy": dpo.reward_accuracy})
            timings["train_s"] = timings["sft_s"] + timings.get("dpo_s", 0.0)
            gs = settings.generation
            out = bundle.save_generation_bundle(model, sft.tokenizer, tmp / "bundle", {
                "task": task.to_dict(), "base_model": settings.model.base,
                "base_dir": sft.base_dir, "init": settings.model.init,
                "method": train_settings.training.method, "max_length": settings.model.max_length,
                "max_prompt_tokens": gs.max_prompt_tokens, "max_new_tokens": gs.max_new_tokens,
                "system_prompt": gs.system_prompt, "dataset": settings.dataset.path,
                "dataset_digest": gen_data.digest(rows), "train_rows": len(rows),
                "train_rule": rule_tag, "human_responses": n_human, "preference_pairs": len(pairs),
            })
            del sft, model
            loop_status.set_stage(settings, turn, "promote")
            t2 = time.perf_counter()
            from labelloop.generation.bundle import load_generation_bundle

            challenger = load_generation_bundle(out, device=settings.training.device)
            scores, outputs = evaluation.score_model(challenger.model, challenger.tokenizer,
                                                     test, settings)
            mlflow.log_metrics({f"test_{k}": float(v) for k, v in scores.items()})
            timings["test_eval_s"] = time.perf_counter() - t2
            t3 = time.perf_counter()
            mlflow.log_artifacts(str(out), registry.BUNDLE_ARTIFACT_PATH)
            digest = human_digest(trainable, ptrain)
            mv = registry.register_bundle(settings, run.info.run_id, tags={
                "task": task.name, "base_model": settings.model.base,
                "method": train_settings.training.method, "dataset_digest": gen_data.digest(rows),
                "test_digest": gen_data.digest(test),
                **{f"test_{k}": repr(float(scores[k])) for k in task.promotion_metrics},
                LABELS_SEQ_TAG: str(seq), "labelloop.full_seq": str(seq),
                "labelloop.train_rule": rule_tag, "labelloop.human_digest": digest,
            })
            version = str(mv.version)
            mlflow.set_tag("mlflow.runName", f"training v{version} ({rule_tag})")
            store_outputs(settings, version, test, outputs)
            timings["register_s"] = time.perf_counter() - t3
            t4 = time.perf_counter()
            _generators[(settings.registry.model_name, version)] = challenger
            decision = judge(settings, version, outputs, challenger, test,
                             champ["version"] if champ else None, heldout, pheld, trainable)
            if decision.promote:
                registry.set_champion(settings, version)
            timings["judge_s"] = time.perf_counter() - t4
            mlflow.log_dict(decision.to_dict(), "promotion/decision.json")
            mlflow.log_metrics({"promoted": float(decision.promote),
                                **{f"time_{k}": v for k, v in timings.items()}})
            mlflow.set_tag("promotion", decision.reason[:5000])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with labels_store.open_store(settings) as store:
        store.mark_feedback_run(None, "retrain", seq)
        if project is not None:
            store.mark_feedback_run(project, "retrain", seq)
        store.set_meta(f"last_retrain_digest:{'all' if project is None else project}", digest)
    return {"version": version, "promoted": bool(decision.promote), "rule": rule_tag,
            "rule_label": ("warm start, " if warm else "") + ("SFT + DPO" if rule == RULE_DPO
                                                              else "SFT"),
            "rule_reason": why,
            "promotion_reason": decision.reason, "decision": decision.to_dict(),
            "metrics": {k: float(v) for k, v in scores.items()}, "labels_seq": seq,
            "champion_before": champ["version"] if champ else None, "timings": timings,
            "train_rows": len(rows), "new_labels": n_human + len(pairs),
            "preference_pairs": len(pairs), "heldout_labels": len(heldout) + len(pheld),
            "dpo": None if dpo is None else {"steps": dpo.steps, "final_loss": dpo.final_loss,
                                             "reward_accuracy": dpo.reward_accuracy}}

