"""Label Studio label configs generated from the task, and parsed back to check them.

Kept free of the SDK so the webhook (inside the service) imports it cheaply. One builder per task
type in `CONFIG_BUILDERS`: classification is a `<Choices>` over the task's labels; text
generation will add a `<TextArea>` (answer) or `<Pairwise>` (preference) builder with the same
signature, and `parse_label_config` already reports those control tags.

The classification config shows, above the choices, the model's guess and how sure it was
(`$model_hint`, a sentence `annotation.labelstudio.build_tasks` puts in the task data): Label
Studio preselects the model's choice, and without the hint an annotator cannot tell a
preselected guess from their own earlier answer. The header tag has no `name`, so Label Studio
does not count `model_hint` as a data field a task must carry: tasks imported without it (older
projects, other tools) show an empty header. `check_label_config` looks only at the
choices, so projects made before the hint existed are still accepted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable
from xml.sax.saxutils import escape, quoteattr

from labelloop.tasks import ClassificationTask

TEXT_KEY = "text"  # task data key holding the text: tasks are {"data": {"text": ...}}
TEXT_NAME = "text"  # the <Text name=...> object tag
CHOICES_NAME = "label"  # the <Choices name=...> control tag (from_name in results)
HINT_KEY = "model_hint"  # task data key: "Model v3's guess: positive, 87% sure ..."


class LabelConfigError(ValueError):
    """A Label Studio project whose label config does not fit the model."""


def classification_config(task: ClassificationTask) -> str:
    def choice(label: str) -> str:
        # A display name is shown instead of the value (`html`); the value, what is stored and
        # what predictions name, stays the label.
        shown = getattr(task, "display_name", lambda lab: lab)(label)
        extra = f" html={quoteattr(escape(shown))}" if shown != label else ""
        return f"    <Choice value={quoteattr(label)}{extra}/>"

    choices = "\n".join(choice(label) for label in task.labels)
    return (
        "<View>\n"
        f"  <Text name={quoteattr(TEXT_NAME)} value=\"${TEXT_KEY}\"/>\n"
        f"  <Header value=\"${HINT_KEY}\" size=\"5\"/>\n"
        f"  <Header value={quoteattr(f'{task.name}: pick one')}/>\n"
        f"  <Choices name={quoteattr(CHOICES_NAME)} toName={quoteattr(TEXT_NAME)} "
        "choice=\"single-radio\" showInline=\"true\" required=\"true\">\n"
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


CONFIG_BUILDERS: dict[str, Callable[[Any], str]] = {"classification": classification_config}


def label_config_for(task: Any) -> str:
    try:
        builder = CONFIG_BUILDERS[task.type]
    except KeyError:
        raise LabelConfigError(f"no Label Studio config for task type {task.type!r}") from None
    return builder(task)


@dataclass(frozen=True)
class ParsedConfig:
    controls: dict[str, dict[str, Any]]  # control name -> {"type", "to_name", "labels"}
    objects: dict[str, str]  # object name -> data key ("$text" -> "text")


def parse_label_config(xml: str) -> ParsedConfig:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the project's label config is not valid XML: {exc}") from None
    controls: dict[str, dict[str, Any]] = {}
    objects: dict[str, str] = {}
    for el in root.iter():
        tag = el.tag
        if tag in ("Text", "HyperText", "Paragraphs") and el.get("name"):
            objects[el.get("name")] = (el.get("value") or "").lstrip("$")
        elif tag in ("Choices", "Labels", "TextArea", "Pairwise", "Rating") and el.get("name"):
            labels = [c.get("value") for c in el if c.tag in ("Choice", "Label")]
            controls[el.get("name")] = {
                "type": tag.lower(), "to_name": el.get("toName"), "labels": labels,
                "choice": el.get("choice"),
            }
    return ParsedConfig(controls=controls, objects=objects)


def check_label_config(xml: str, task: Any) -> None:
    """Raise `LabelConfigError` unless the project's config asks exactly for the task's labels."""
    parsed = parse_label_config(xml)
    if task.type == "classification":
        control = parsed.controls.get(CHOICES_NAME)
        if control is None or control["type"] != "choices":
            raise LabelConfigError(
                f"the project's label config has no <Choices name=\"{CHOICES_NAME}\"> "
                f"(found controls {sorted(parsed.controls)})"
            )
        if parsed.objects.get(control["to_name"]) != TEXT_KEY:
            raise LabelConfigError(
                f"the project's <Choices> must point at a <Text> showing ${TEXT_KEY}"
            )
        if set(control["labels"]) != set(task.labels) or len(control["labels"]) != len(task.labels):
            raise LabelConfigError(
                f"the project's labels {control['labels']} do not match the model's labels "
                f"{list(task.labels)}"
            )
        return
    raise LabelConfigError(f"no Label Studio config check for task type {task.type!r}")
