"""`labelloop` command line: a thin layer over the pipelines, the service and the annotation tools.

Every subcommand takes `--config FILE` (a YAML like configs/default.yaml); environment variables
`LABELLOOP__SECTION__KEY` override single keys. Errors in config, data or model paths are printed
as one line naming the problem, with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import labelloop  # noqa: F401  (switches telemetry off before anything else is imported)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", metavar="FILE",
        help="YAML settings file (default: built-in defaults, see configs/default.yaml; "
             "or $LABELLOOP_CONFIG)",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.run import run_training

    return run_training(args.config)


def _cmd_feedback(args: argparse.Namespace) -> int:
    from pipelines.run import run_feedback

    return run_feedback(args.config, project=args.project, reason=args.reason)


def _cmd_studio(args: argparse.Namespace) -> int:
    from annotation.studio import main as studio_main

    return studio_main(args)


def _cmd_annotate(args: argparse.Namespace) -> int:
    from annotation.cli import main as annotate_main

    return annotate_main(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from services.run import serve

    return serve(args.config, port=args.port)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import main as demo_main

    return demo_main(args)


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

    add("train", _cmd_train,
        "Run the ZenML `training` pipeline: load -> split -> fine-tune -> evaluate -> register "
        "-> promote. Prints the metrics and the registry entry.")
    add("status", _cmd_status, "Show the registered model versions and which one is champion.")

    p = add("feedback", _cmd_feedback,
            "Run the ZenML `feedback` pipeline: sync human labels, check the champion on them, "
            "retrain and promote when needed.")
    p.add_argument("--project", type=int, default=None, help="Label Studio project id")
    p.add_argument("--reason", default="cli", help="why the run was triggered (logged)")

    p = add("serve", _cmd_serve, "Serve the champion with BentoML (same as `bentoml serve`).")
    p.add_argument("--port", type=int, default=None, help="port (default: serving.port)")

    p = add("studio", _cmd_studio, "Manage the local Label Studio server (own virtualenv).")
    p.add_argument("action", choices=["up", "down", "status"], help="start, stop or check it")

    p = add("annotate", _cmd_annotate,
            "Set up the Label Studio project, import tasks with predictions, sync annotations.")
    p.add_argument("action", choices=["setup", "import", "sync"], help="what to do")

    p = add("demo", _cmd_demo,
            "The whole loop locally: train, serve, start Label Studio with predicted tasks.")
    p.add_argument("--stop", action="store_true",
                   help="stop the demo's service and Label Studio (the data stays)")
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: printed as one line, not a traceback. The CLI is the
    top layer, so it may know the annotation tools' error types; the core package does not."""
    from annotation.config import LabelConfigError
    from annotation.labelstudio import StudioConnectionError
    from annotation.studio import StudioError
    from annotation.sync import ExportError
    from labelloop.errors import USER_ERRORS
    from labelloop.trigger import FeedbackRunning

    return USER_ERRORS + (LabelConfigError, StudioConnectionError, StudioError, ExportError,
                          FeedbackRunning)


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


if __name__ == "__main__":
    sys.exit(main())
