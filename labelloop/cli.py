"""`labelloop` command line: a thin layer over the pipelines, the service and the annotation tools.

Every subcommand takes `--config FILE` (a YAML like configs/default.yaml); environment variables
`LABELLOOP__SECTION__KEY` override single keys. Errors in config, data or model paths are printed
as one line naming the problem, with exit code 2; a pipeline step that fails at run time ends the
command with one line naming the step, after the step's own error, with exit code 1; Ctrl-C with
"interrupted" and exit code 130.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Callable, Optional

import labelloop  # noqa: F401  (switches telemetry off before anything else is imported)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", metavar="FILE",
        help="YAML settings file (default: built-in defaults, see configs/default.yaml; "
             "or $LABELLOOP_CONFIG)",
    )


def _config_first(args: argparse.Namespace) -> None:
    """A config error in a second, before the pipelines load torch, MLflow and ZenML."""
    from labelloop.settings import load_settings

    load_settings(args.config)


def _cmd_init(args: argparse.Namespace) -> int:
    from labelloop.scaffold import main as init_main

    return init_main(args)


def _cmd_train(args: argparse.Namespace) -> int:
    _config_first(args)
    from pipelines.run import run_training

    return run_training(args.config)


def _cmd_feedback(args: argparse.Namespace) -> int:
    from labelloop.trigger import CLI_ASKED_TO_TRAIN

    _config_first(args)
    from pipelines.run import run_feedback

    reason = args.reason
    if args.train:  # the trigger the decision reads (pipelines/steps/feedback_decide.py)
        reason = CLI_ASKED_TO_TRAIN + ("" if reason == "cli" else f" ({reason})")
    return run_feedback(args.config, project=args.project, reason=reason)


def _cmd_studio(args: argparse.Namespace) -> int:
    from annotation.studio import main as studio_main

    return studio_main(args)


def _cmd_argilla(args: argparse.Namespace) -> int:
    from annotation.argilla_server import cli

    return cli(args)


def _cmd_annotate(args: argparse.Namespace) -> int:
    from annotation.cli import main as annotate_main

    return annotate_main(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from services.run import serve

    return serve(args.config, port=args.port)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import main as demo_main

    return demo_main(args)


def _cmd_labels(args: argparse.Namespace) -> int:
    import json

    from labelloop import labels_export
    from labelloop.settings import load_settings

    if args.action == "export" and not args.output:
        raise labels_export.LabelsExportError("export needs --output FILE (.csv or .jsonl)")
    settings = load_settings(args.config)
    if args.action == "export":
        out = labels_export.export_labels(settings, args.output, fmt=args.format,
                                          status=args.status, project=args.project)
        print(f"exported {out['rows']} label(s) on {out['tasks']} task(s) "
              f"({out['tasks_with_several_annotations']} with several annotations) to "
              f"{out['path']} ({out['format']})")
        return 0
    print(json.dumps(labels_export.agreement_report(settings, project=args.project), indent=2))
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    from labelloop import image
    from labelloop.settings import load_settings

    overrides = {"image": {"variant": args.variant}} if args.variant else None
    settings = load_settings(args.config, overrides=overrides)
    result = image.build(settings, log=lambda msg: print(f"labelloop image: {msg}", flush=True),
                         rebuild=args.rebuild)
    if result.reused:
        print(f"up to date {result.image} (bento {result.bento}, {result.engine}, base "
              f"{result.base_image}; --rebuild builds anyway)")
    else:
        print(f"built {result.image} (bento {result.bento}, {result.engine}, base "
              f"{result.base_image})")
    print(f"run it:  {result.engine} run -d --network host -e PORT=3000 "
          f"-e LABELLOOP__REGISTRY__TRACKING_URI=http://127.0.0.1:5000 {result.image}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from pipelines.run import show_status

    return show_status(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelloop",
        description="Human-in-the-loop NLP: fine-tune and register a model (train), serve it "
                    "(serve), put its predictions in front of annotators (studio, annotate) and "
                    "retrain from their corrections (feedback).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _add_config(p)
        p.set_defaults(func=fn)
        return p

    p = sub.add_parser("init", help="Write a first config for your own data, guessed from the "
                       "data (task, columns, labels, encoding, cleaning, class weights).",
                       description="Write a first config for your own data: reads the file, "
                       "guesses the task family, text and label columns, labels, encoding, HTML "
                       "cleaning and class weights, writes a commented YAML and checks that it "
                       "and its data load. Nothing is trained.")
    p.set_defaults(func=_cmd_init)
    p.add_argument("--data", required=True, metavar="FILE",
                   help="the labelled data: a CSV/TSV/JSONL/Parquet file, a glob, a .zip or a "
                        "datasets directory")
    p.add_argument("--test", metavar="FILE", default=None,
                   help="a test source (default: a frozen share of the data by hash)")
    p.add_argument("--pool", metavar="FILE", default=None,
                   help="unlabelled texts for annotators (one per line, or a data file)")
    p.add_argument("--output", "-o", default="labelloop.yaml", metavar="FILE",
                   help="the config to write (default: labelloop.yaml)")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--name", default=None, help="the task's name (default: from the file name)")
    p.add_argument("--task", choices=["classification", "generation"], default=None,
                   help="the task family (default: generation when the data has a messages "
                        "column or prompt and response columns, else classification)")
    p.add_argument("--text-column", default=None, help="the text column (default: guessed)")
    p.add_argument("--label-column", default=None, help="the label column (default: guessed)")
    p.add_argument("--encoding", default=None,
                   help="the file's text encoding (default: utf-8 if it decodes, else latin-1)")

    add("train", _cmd_train,
        "Run the ZenML `training` pipeline: load -> split -> fine-tune -> evaluate -> register "
        "-> promote. Prints the metrics and the registry entry.")
    add("status", _cmd_status, "Show the registered model versions and which one is champion.")

    p = add("feedback", _cmd_feedback,
            "Run the ZenML `feedback` pipeline: sync human labels, check the champion on them, "
            "retrain and promote when needed.")
    p.add_argument("--project", type=int, default=None, help="Label Studio project id")
    p.add_argument("--reason", default="cli", help="why the run was triggered (logged)")
    p.add_argument("--train", action="store_true",
                   help="train now on any new labels, as Label Studio's Start training does "
                        "(without it, a turn retrains once feedback.min_new_labels have "
                        "arrived or the champion slips); promotion rules are unchanged")

    p = add("serve", _cmd_serve, "Serve the champion with BentoML (same as `bentoml serve`).")
    p.add_argument("--port", type=int, default=None, help="port (default: serving.port)")

    p = add("studio", _cmd_studio, "Manage the local Label Studio server (own virtualenv).")
    p.add_argument("action", choices=["up", "down", "status"], help="start, stop or check it")

    p = add("argilla", _cmd_argilla,
            "Argilla: manage the local server (up, down, status; own virtualenv), set up the "
            "dataset and webhook (setup), log texts with the champion's suggestions (log), "
            "update unanswered records to the champion (push), pull responses (sync).")
    p.add_argument("action", choices=["up", "down", "status", "setup", "log", "push", "sync"],
                   help="what to do")

    p = add("annotate", _cmd_annotate,
            "Set up the Label Studio project, import tasks with predictions, sync annotations.")
    p.add_argument("action", choices=["setup", "import", "sync"], help="what to do")
    p.add_argument("--file", metavar="FILE", default=None,
                   help="import: the unlabelled texts to import (a .txt file with one text per "
                        "line, or a CSV/JSONL/Parquet/zip file with pool.text_column); default: "
                        "pool.source")

    p = add("labels", _cmd_labels,
            "The human labels in the labels store: export them with provenance (CSV/JSONL), or "
            "report the agreement between annotators where a task has several annotations.")
    p.add_argument("action", choices=["export", "agreement"], help="what to do")
    p.add_argument("--output", "-o", metavar="FILE", help="export: the file to write (replaced "
                   "atomically; the format follows the suffix .csv/.jsonl unless --format)")
    p.add_argument("--format", choices=["csv", "jsonl"], default=None, help="export: file format")
    p.add_argument("--status", choices=["active", "all"], default="active",
                   help="export: active labels only (default), or also the invalid ones, with "
                        "the reason they cannot be trained on")
    p.add_argument("--project", default=None, help="only this project (default: all)")

    p = add("image", _cmd_image,
            "Build the service's container image (bento + podman/docker; docs/deploy.md).")
    p.add_argument("action", choices=["build"], help="what to do")
    p.add_argument("--variant", choices=["cpu", "gpu"], default=None,
                   help="cpu (CPU build of torch) or gpu (CUDA build); default image.variant")
    p.add_argument("--rebuild", action="store_true",
                   help="build even when the inputs did not change since the last build")

    p = add("demo", _cmd_demo,
            "The whole loop locally: train, serve, start Label Studio with predicted tasks.")
    p.add_argument("--stop", action="store_true",
                   help="stop the demo's service and annotation tools (the data stays)")
    p.add_argument("--tools", default=None, metavar="LIST",
                   help="annotation tools, comma-separated: label-studio (default), argilla, "
                        "or label-studio,argilla (replaces annotation.tools)")
    p.add_argument("--task", choices=["classification", "generation"], default="classification",
                   help="which task family: classification (default; configs/demo.yaml on a "
                        "CPU) or generation (SmolLM2 with edit and compare projects; "
                        "configs/demo-generation.yaml on a CPU, configs/generation.yaml on a GPU)")
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: printed as one line, not a traceback. The CLI is the
    top layer, so it may know the annotation tools' error types; the core package does not."""
    from annotation.argilla import ArgillaConnectionError, DatasetMismatch
    from annotation.argilla_server import ArgillaServerError
    from annotation.config import LabelConfigError
    from annotation.labelstudio import StudioConnectionError
    from annotation.studio import StudioError
    from annotation.sync import ExportError
    from labelloop.errors import USER_ERRORS
    from labelloop.image import ImageError
    from labelloop.labels_export import LabelsExportError
    from labelloop.scaffold import ScaffoldError
    from labelloop.trigger import FeedbackRunning

    return USER_ERRORS + (ScaffoldError, LabelConfigError, StudioConnectionError, StudioError,
                          ExportError, FeedbackRunning, LabelsExportError, ImageError,
                          ArgillaConnectionError, DatasetMismatch, ArgillaServerError)


# What ZenML's local orchestrator raises after a step failed (the step's own error and traceback
# were logged above it): one more traceback of the orchestrator's frames says nothing new.
_FAILED_STEPS = re.compile(r"Pipeline run has failed due to failure in step\(s\): (.+)")


def failed_steps(exc: BaseException) -> Optional[str]:
    """The steps named by ZenML's "a step failed" error, or None for any other error."""
    match = _FAILED_STEPS.fullmatch(str(exc).strip()) if isinstance(exc, RuntimeError) else None
    return match.group(1) if match else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors() as exc:
        print(f"labelloop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labelloop {args.command}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        steps = failed_steps(exc)
        if steps is None:
            raise
        print(f"labelloop {args.command}: error: step {steps} failed (its error is above); the "
              f"steps that depend on it were skipped", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
