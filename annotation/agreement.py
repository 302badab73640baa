"""Agreement, two kinds, both from the labels store.

Model/annotator agreement: how often annotators keep the model's prediction, per model version.
The live quality signal of the loop. Computed from the labels store (only annotations whose shown
prediction is known), logged to MLflow as one run in the `registry.experiment` experiment with
metrics `agreement/v<N>` and `annotations/v<N>` per version, and tagged on the registered model
versions (`labelloop.agreement`, `labelloop.agreement_n`) so `labelloop status` can show it.

For generation the live quality signals per model version (`generation_signals`): the share of
its responses annotators accepted unedited (`accepted_unedited/v<N>`), the mean normalized edit
distance from its response to the final one (`edit_distance/v<N>`, 0 = kept, 1 = nothing
kept), and its preference win rate (`win_rate/v<N>`: of the decided comparisons between its
response and another version's, the share it won; two samples of one version say nothing about
the version and are left out). Logged in the same run and tagged on the versions
(`labelloop.accepted_unedited`, `labelloop.edit_distance`, `labelloop.win_rate`).

Inter-annotator agreement (`task_agreement`, `annotator_agreement_summary`): where a task has
several active annotations, how far the annotators agree with each other: per task the majority
label and the share of annotations that give it; over all such tasks the pairwise agreement and
Krippendorff's alpha (nominal), which, unlike Fleiss' kappa, allows a different number of
annotations per task. Plain functions over the store's rows, so `labelloop labels export` and
`labelloop labels agreement` report the same figures.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

import pandas as pd

from labelloop.labels_store import ACTIVE, open_store
from labelloop.settings import Settings


def agreement_by_version(settings: Settings, source: Optional[str] = None,
                         project: Any = None) -> pd.DataFrame:
    """DataFrame[model_version, annotations, kept, agreement] (active labels with a shown prediction)."""
    with open_store(settings) as store:
        df = store.rows(source=source, project=project, status=ACTIVE)
    df = df[df["shown_label"].notna() & df["model_version"].notna()] if not df.empty else df
    if df.empty:
        return pd.DataFrame(columns=["model_version", "annotations", "kept", "agreement"])
    df = df.assign(kept=(df["label"] == df["shown_label"]).astype(int))
    out = df.groupby("model_version").agg(annotations=("kept", "size"), kept=("kept", "sum"))
    out["agreement"] = out["kept"] / out["annotations"]
    out = out.reset_index()
    return out.sort_values("model_version", key=lambda s: pd.to_numeric(s, errors="coerce"))\
        .reset_index(drop=True)


def generation_signals(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """version -> {responses, accepted_unedited, edit_distance, comparisons, wins, win_rate}
    from the store's active rows (see the module docstring); a figure without data is None."""
    out: dict[str, dict[str, Any]] = {}
    if rows.empty or "kind" not in rows:
        return out

    def entry(version: Any) -> dict[str, Any]:
        return out.setdefault(str(version), {"responses": 0, "accepted_unedited": None,
                                             "edit_distance": None, "comparisons": 0, "wins": 0,
                                             "win_rate": None})

    responses = rows[(rows["kind"] == "response") & rows["shown_label"].notna()
                     & rows["model_version"].notna()]
    for version, group in responses.groupby("model_version"):
        e = entry(version)
        distance = group["edit_distance"].astype(float)
        e["responses"] = int(len(group))
        e["accepted_unedited"] = float((distance == 0).mean())
        e["edit_distance"] = float(distance.mean())
    pairs = rows[(rows["kind"] == "preference") & rows["choice"].isin(("a", "b"))
                 & rows["chosen_version"].notna() & rows["rejected_version"].notna()]
    pairs = pairs[pairs["chosen_version"].astype(str) != pairs["rejected_version"].astype(str)]
    for r in pairs.itertuples():
        entry(r.chosen_version)["wins"] += 1
        for v in (r.chosen_version, r.rejected_version):
            entry(v)["comparisons"] += 1
    for e in out.values():
        if e["comparisons"]:
            e["win_rate"] = e["wins"] / e["comparisons"]
    return out


SIGNAL_METRICS = (("accepted_unedited", "responses"), ("edit_distance", "responses"),
                  ("win_rate", "comparisons"))


def log_agreement(settings: Settings, source: Optional[str] = None, project: Any = None,
                  run_name: str = "annotator-agreement") -> dict[str, Any]:
    """Compute and log to MLflow; returns {"run_id", "versions": {version: {...}}}."""
    import mlflow

    from labelloop import registry

    table = agreement_by_version(settings, source, project)
    signals: dict[str, dict[str, Any]] = {}
    if settings.task.type == "generation":
        with open_store(settings) as store:
            signals = generation_signals(store.rows(source=source, project=project,
                                                    status=ACTIVE))
        # A response kept or not is the generation's agreement; preferences have none.
        table = table.iloc[0:0]
    versions = {
        str(r.model_version): {"annotations": int(r.annotations), "kept": int(r.kept),
                               "agreement": float(r.agreement)}
        for r in table.itertuples()
    }
    experiment_id = registry.ensure_experiment(settings)
    # Inside a feedback turn this is one of the turn's nested runs, not a run of its own.
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=None if nested else experiment_id, run_name=run_name,
                          nested=nested) as run:
        mlflow.set_tags({"labelloop.kind": "agreement", "labelloop.source": source or "all",
                         "labelloop.project": "all" if project is None else str(project)})
        metrics = {}
        for version, v in versions.items():
            metrics[f"agreement/v{version}"] = v["agreement"]
            metrics[f"annotations/v{version}"] = v["annotations"]
        if versions:
            total = sum(v["annotations"] for v in versions.values())
            metrics["agreement/all"] = sum(v["kept"] for v in versions.values()) / total
            metrics["annotations/all"] = total
        for version, sig in signals.items():
            for name, count in SIGNAL_METRICS:
                if sig[name] is not None:
                    metrics[f"{name}/v{version}"] = sig[name]
                    metrics[f"{count}/v{version}"] = sig[count]
        if metrics:
            mlflow.log_metrics(metrics)
    c = registry.client(settings)
    for version, v in versions.items():
        try:
            c.set_model_version_tag(settings.registry.model_name, version,
                                    "labelloop.agreement", f"{v['agreement']:.4f}")
            c.set_model_version_tag(settings.registry.model_name, version,
                                    "labelloop.agreement_n", str(v["annotations"]))
        except Exception:  # noqa: BLE001 - a version from another registry: metrics suffice
            pass
    for version, sig in signals.items():
        for name, _ in SIGNAL_METRICS:
            if sig[name] is None:
                continue
            try:
                c.set_model_version_tag(settings.registry.model_name, version,
                                        f"labelloop.{name}", f"{sig[name]:.4f}")
            except Exception:  # noqa: BLE001
                pass
    return {"run_id": run.info.run_id, "versions": versions or signals}


# -- inter-annotator agreement --------------------------------------------------------------------
TASK_KEY = ["source", "project", "task_id"]
TASK_COLUMNS = TASK_KEY + ["annotations", "annotators", "majority_label", "task_agreement",
                           "labels"]


def _task_keys(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with a task key: the tool's task id, else the text (a task shows one text)."""
    task_id = rows["task_id"].where(rows["task_id"].notna(), "text:" + rows["text"].astype(str))
    return rows.assign(task_id=task_id.astype(str), project=rows["project"].astype(str))


def task_agreement(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per task with at least one label: annotations, distinct annotators, the majority
    label (ties: the alphabetically first, so the figure is stable), the share of annotations
    giving it, and the labels given (`label:count;...`). `rows` are the store's active rows."""
    if rows.empty:
        return pd.DataFrame(columns=TASK_COLUMNS)
    out = []
    for key, group in _task_keys(rows).groupby(TASK_KEY, sort=True):
        counts = Counter(group["label"])
        majority = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        out.append({
            **dict(zip(TASK_KEY, key)),
            "annotations": len(group),
            "annotators": int(group["annotator"].nunique(dropna=True)),
            "majority_label": majority,
            "task_agreement": counts[majority] / len(group),
            "labels": ";".join(f"{lab}:{n}" for lab, n in sorted(counts.items())),
        })
    return pd.DataFrame(out, columns=TASK_COLUMNS)


def krippendorff_alpha_nominal(label_lists: list[list[str]]) -> Optional[float]:
    """Krippendorff's alpha for nominal labels over units with 2+ labels each; None when it is
    undefined (no such unit, or every label the same, so no disagreement is possible)."""
    units = [labels for labels in label_lists if len(labels) >= 2]
    coincidence: Counter = Counter()  # (c, k) -> o_ck
    for labels in units:
        m = len(labels)
        counts = Counter(labels)
        for c in counts:
            for k in counts:
                pairs = counts[c] * (counts[k] - (1 if c == k else 0))
                coincidence[(c, k)] += pairs / (m - 1)
    n_c: Counter = Counter()
    for (c, _k), o in coincidence.items():
        n_c[c] += o
    n = sum(n_c.values())
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if n <= 1 or expected == 0:
        return None
    observed = sum(o for (c, k), o in coincidence.items() if c != k)
    return 1.0 - (n - 1) * observed / expected


def annotator_agreement_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """Agreement between annotators over the tasks that several annotations cover.

    `pairwise_agreement`: the share of agreeing pairs among all pairs of annotations of one task;
    `mean_task_agreement`: the mean share of a task's annotations that give its majority label;
    `krippendorff_alpha`: chance-corrected (1 = perfect, 0 = chance, None = undefined)."""
    tasks = task_agreement(rows)
    multi = tasks[tasks["annotations"] >= 2] if not tasks.empty else tasks
    summary: dict[str, Any] = {
        "labelled_tasks": int(len(tasks)),
        "tasks_with_several_annotations": int(len(multi)),
        "annotations_on_those_tasks": int(multi["annotations"].sum()) if len(multi) else 0,
        "disagreeing_tasks": int((multi["task_agreement"] < 1).sum()) if len(multi) else 0,
        "pairwise_agreement": None, "mean_task_agreement": None, "krippendorff_alpha": None,
    }
    if multi.empty:
        return summary
    keyed = _task_keys(rows)
    label_lists = [list(g["label"]) for _, g in keyed.groupby(TASK_KEY) if len(g) >= 2]
    agree = total = 0
    for labels in label_lists:
        counts = Counter(labels)
        agree += sum(v * (v - 1) // 2 for v in counts.values())
        total += len(labels) * (len(labels) - 1) // 2
    summary["pairwise_agreement"] = agree / total
    summary["mean_task_agreement"] = float(multi["task_agreement"].mean())
    summary["krippendorff_alpha"] = krippendorff_alpha_nominal(label_lists)
    return summary
