"""Human answers for generation as labels-store records, whichever tool collected them.

The one conversion of the generation family: Label Studio (annotation/records.py) and Argilla
hand over what the annotator saw and answered, in plain terms, and get a `LabelRecord` back:

- `response_record`: an *edit* answer, the final response to a prompt (and the response the
  annotator was shown, so the store knows whether and how much it was changed), with the
  annotator's optional rating of the response shown (a whole number from 1 to MAX_RATING);
- `preference_record`: a *compare* answer, two responses A and B and the choice (`a`, `b`,
  `tie`, `both_bad`), with the model version that wrote each side.

Answers that cannot be trained on come back `invalid` with the reason (empty or whitespace
response, no choice, two identical responses, an empty prompt): they are stored and reported,
never trained on. `base` is the provenance every record carries (source, project, annotation_id,
task_id, annotator, created_at, updated_at, via, model_version).
"""

from __future__ import annotations

from typing import Any, Optional

from labelloop.labels_store import PREFERENCE, RESPONSE, LabelRecord
from labelloop.tasks import MAX_RATING, GenerationTask, LabelError

_TASK = GenerationTask(name="generation")  # the checks do not depend on the task's name


def check_rating(value: Any) -> Optional[int]:
    """An annotator's rating as a whole number 1..MAX_RATING (None: not rated); a LabelError
    says what is wrong with anything else (a tool sends 4 or 4.0)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RATING:
        raise LabelError(f"a rating is a whole number from 1 to {MAX_RATING}, not {value!r}")
    return value


def response_record(prompt: Any, response: Any, shown: Optional[str] = None,
                    rating: Any = None, **base: Any) -> LabelRecord:
    """An edit answer. `shown`: the response the annotator was shown (None: unknown);
    `rating`: their rating of it (None: not rated). A malformed rating makes the answer
    invalid, like a malformed response: the tool sent something its form cannot produce."""
    text = prompt if isinstance(prompt, str) else None
    shown = shown if isinstance(shown, str) else None
    try:
        row = _TASK.row_from_answer(prompt, response)
    except LabelError as exc:
        return LabelRecord.invalid(f"bad response: {exc}", text=text, kind=RESPONSE,
                                   shown_label=shown, **base)
    try:
        rating = check_rating(rating)
    except LabelError as exc:
        return LabelRecord.invalid(f"bad rating: {exc}", text=text, kind=RESPONSE,
                                   shown_label=shown, **base)
    return LabelRecord(text=row["prompt"], label=row["response"], kind=RESPONSE,
                       shown_label=shown, rating=rating, **base)


def preference_record(prompt: Any, response_a: Any, response_b: Any, choice: Any,
                      version_a: Optional[str] = None, version_b: Optional[str] = None,
                      **base: Any) -> LabelRecord:
    """A compare answer; `version_a`/`version_b`: the model versions that wrote A and B."""
    text = prompt if isinstance(prompt, str) else None
    try:
        pref = _TASK.preference_from_answer(prompt, response_a, response_b, choice)
    except LabelError as exc:
        return LabelRecord.invalid(f"bad comparison: {exc}", text=text, kind=PREFERENCE,
                                   choice=choice if isinstance(choice, str) else None, **base)
    versions = (version_b, version_a) if pref["choice"] == "b" else (version_a, version_b)
    return LabelRecord(text=pref["prompt"], label=pref["chosen"], rejected=pref["rejected"],
                       choice=pref["choice"], kind=PREFERENCE,
                       chosen_version=None if versions[0] is None else str(versions[0]),
                       rejected_version=None if versions[1] is None else str(versions[1]),
                       **base)
