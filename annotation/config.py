"""Label Studio label configs generated from the task, and parsed back to check them.

Kept free of the SDK so the webhook (inside the service) imports it cheaply. One builder per project
kind in `CONFIG_BUILDERS`, and the kinds each task family has in `PROJECT_KINDS`:
classification has one project (`label`: a `<Choices>` over the task's labels); generation has
two (`edit`: the prompt and a `<TextArea>` the champion's response pre-fills as a prediction,
with an optional `<Rating>`; `compare`: the prompt, two responses from the task data, a
`<Pairwise>` choice and a `<Choices>` for a tie or both bad).

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
from typing import Any, Callable, Optional
from xml.sax.saxutils import escape, quoteattr

from labelloop.tasks import MAX_RATING, ClassificationTask

TEXT_KEY = "text"  # task data key holding the text: tasks are {"data": {"text": ...}}
TEXT_NAME = "text"  # the <Text name=...> object tag
CHOICES_NAME = "label"  # the <Choices name=...> control tag (from_name in results)
HINT_KEY = "model_hint"  # task data key: "Model v3's guess: positive, 87% sure ..."

# Generation projects. Edit tasks are {"data": {"prompt"}} with the response as a prediction;
# compare tasks {"data": {"prompt", "response_a", "response_b", "version_a", "version_b"}}.
PROMPT_KEY = "prompt"  # task data key and <Text name=...> of the prompt, as annotators read it
# Task data key of the exact prompt when it holds earlier turns (a compact-JSON conversation,
# labelloop.generation.chat): $prompt then shows its turns readably. Not in the label config, so
# tasks imported with a prompt alone (by hand, by other tools) are still valid.
CONVERSATION_KEY = "conversation"
RESPONSE_NAME = "response"  # edit: the <TextArea name=...> (from_name of its results)
RATING_NAME = "rating"  # edit: the optional <Rating name=...> (stored, not trained on)
RESPONSE_A, RESPONSE_B = "response_a", "response_b"  # compare: data keys and <Text> names
VERSION_A, VERSION_B = "version_a", "version_b"  # compare: the model version of each response
PAIRWISE_NAME = "comparison"  # compare: the <Pairwise name=...>; left = A, right = B
VERDICT_NAME = "verdict"  # compare: the <Choices name=...> for a tie or both bad
VERDICTS = (("tie", "Both equally good"), ("both_bad", "Both bad"))

# The Label Studio projects of each task family, by kind.
PROJECT_KINDS = {"classification": ("label",), "generation": ("edit", "compare")}


def prompt_data(prompt: str) -> dict[str, str]:
    """A generation task's prompt keys: $prompt as annotators read it, and the exact prompt
    beside it when the two differ (labelloop.generation.chat.shown_prompt)."""
    from labelloop.generation.chat import shown_prompt

    shown, kept = shown_prompt(prompt)
    return {PROMPT_KEY: shown, **({CONVERSATION_KEY: kept} if kept is not None else {})}


def task_prompt(data: Any) -> Optional[str]:
    """The exact prompt of a generation task's data (`prompt_data` read back), or None."""
    from labelloop.generation.chat import prompt_from

    if not isinstance(data, dict):
        return None
    return prompt_from(data.get(PROMPT_KEY), data.get(CONVERSATION_KEY))


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


def edit_config(task: Any, rating: bool = True) -> str:
    """Generation *edit*: the prompt and one editable response, which the champion's response
    (a prediction) pre-fills: the annotator submits it as it is or rewritten."""
    extra = (f"  <Header value=\"How good was the model's response?\" size=\"5\"/>\n"
             f"  <Rating name={quoteattr(RATING_NAME)} toName={quoteattr(PROMPT_KEY)} "
             f"maxRating=\"{MAX_RATING}\"/>\n") if rating else ""
    return (
        "<View>\n"
        "  <Header value=\"Prompt\"/>\n"
        f"  <Text name={quoteattr(PROMPT_KEY)} value=\"${PROMPT_KEY}\"/>\n"
        f"  <Header value={quoteattr(f'{task.name}: the response. Keep it if it is good, or edit it into a better one, then submit')}/>\n"
        f"  <TextArea name={quoteattr(RESPONSE_NAME)} toName={quoteattr(PROMPT_KEY)} "
        "editable=\"true\" maxSubmissions=\"1\" rows=\"4\" required=\"true\" "
        "placeholder=\"The response\"/>\n"
        f"{extra}"
        "</View>\n"
    )


def compare_config(task: Any) -> str:
    """Generation *compare*: the prompt and two responses (from the task data); the annotator
    picks one side (`<Pairwise>`: left is A, right is B) or says they are as good or both bad."""
    verdicts = "\n".join(f"    <Choice value={quoteattr(v)} html={quoteattr(shown)}/>"
                         for v, shown in VERDICTS)
    return (
        "<View>\n"
        "  <Header value=\"Prompt\"/>\n"
        f"  <Text name={quoteattr(PROMPT_KEY)} value=\"${PROMPT_KEY}\"/>\n"
        f"  <Header value={quoteattr(f'{task.name}: which response is better? Click it')}/>\n"
        f"  <Text name={quoteattr(RESPONSE_A)} value=\"${RESPONSE_A}\"/>\n"
        f"  <Text name={quoteattr(RESPONSE_B)} value=\"${RESPONSE_B}\"/>\n"
        f"  <Pairwise name={quoteattr(PAIRWISE_NAME)} toName={quoteattr(f'{RESPONSE_A},{RESPONSE_B}')}/>\n"
        "  <Header value=\"... or neither:\" size=\"5\"/>\n"
        f"  <Choices name={quoteattr(VERDICT_NAME)} toName={quoteattr(PROMPT_KEY)} "
        "choice=\"single\" showInline=\"true\">\n"
        f"{verdicts}\n"
        "  </Choices>\n"
        "</View>\n"
    )


CONFIG_BUILDERS: dict[str, Callable[..., str]] = {
    "label": classification_config, "edit": edit_config, "compare": compare_config}


def project_kinds(task: Any) -> tuple[str, ...]:
    try:
        return PROJECT_KINDS[task.type]
    except KeyError:
        raise LabelConfigError(f"no Label Studio project for task type {task.type!r}") from None


def _kind_for(task: Any, kind: Optional[str]) -> str:
    kinds = project_kinds(task)
    if kind is None:
        if len(kinds) > 1:
            raise LabelConfigError(f"a {task.type} task has {len(kinds)} kinds of project "
                                   f"{list(kinds)}: name one")
        return kinds[0]
    if kind not in kinds:
        raise LabelConfigError(f"a {task.type} task has no {kind!r} project (its kinds: "
                               f"{list(kinds)})")
    return kind


def label_config_for(task: Any, kind: Optional[str] = None, **options: Any) -> str:
    """The label config of the task's project of `kind` (None: its only kind)."""
    return CONFIG_BUILDERS[_kind_for(task, kind)](task, **options)


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


def check_label_config(xml: str, task: Any, kind: Optional[str] = None) -> None:
    """Raise `LabelConfigError` unless the project's config asks for what the task's project of
    `kind` asks: exactly the task's labels (classification), an editable response to the
    prompt (edit), a pairwise choice between the two responses and a tie / both-bad choice
    (compare). Other tags (headers, a rating) are free."""
    parsed = parse_label_config(xml)
    kind = _kind_for(task, kind)
    if kind == "label":
        control = _control(parsed, CHOICES_NAME, "choices", TEXT_KEY)
        if set(control["labels"]) != set(task.labels) or len(control["labels"]) != len(task.labels):
            raise LabelConfigError(
                f"the project's labels {control['labels']} do not match the model's labels "
                f"{list(task.labels)}"
            )
    elif kind == "edit":
        _control(parsed, RESPONSE_NAME, "textarea", PROMPT_KEY)
    else:
        control = _control(parsed, PAIRWISE_NAME, "pairwise")
        targets = [t.strip() for t in (control["to_name"] or "").split(",")]
        if [parsed.objects.get(t) for t in targets] != [RESPONSE_A, RESPONSE_B]:
            raise LabelConfigError(
                f"the project's <Pairwise name=\"{PAIRWISE_NAME}\"> must compare the <Text> tags "
                f"showing ${RESPONSE_A} and ${RESPONSE_B}, in that order")
        if PROMPT_KEY not in parsed.objects.values():
            raise LabelConfigError(f"the project's label config shows no ${PROMPT_KEY}")
        verdict = _control(parsed, VERDICT_NAME, "choices")
        if set(verdict["labels"]) != {v for v, _ in VERDICTS}:
            raise LabelConfigError(
                f"the project's <Choices name=\"{VERDICT_NAME}\"> offers {verdict['labels']}; "
                f"it must offer {[v for v, _ in VERDICTS]}")


def _control(parsed: ParsedConfig, name: str, type_: str,
             data_key: Optional[str] = None) -> dict[str, Any]:
    control = parsed.controls.get(name)
    tag = {"choices": "Choices", "textarea": "TextArea", "pairwise": "Pairwise"}[type_]
    if control is None or control["type"] != type_:
        raise LabelConfigError(
            f"the project's label config has no <{tag} name=\"{name}\"> "
            f"(found controls {sorted(parsed.controls)})"
        )
    if data_key is not None and parsed.objects.get(control["to_name"]) != data_key:
        raise LabelConfigError(
            f"the project's <{tag} name=\"{name}\"> must point at a <Text> showing "
            f"${data_key}"
        )
    return control
