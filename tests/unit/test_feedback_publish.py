"""pipelines/steps/feedback_publish.py and feedback_sync.py: what a feedback turn says about its
annotation tools."""

from __future__ import annotations

from labelloop.settings import Settings


class _Down(Exception):
    pass


class _Tool:
    def __init__(self, name, got=None, down=False):
        self.name, self.got, self.down = name, got, down

    def unavailable(self):
        return (_Down,)

    def publish(self, settings, project, version):
        if self.down:
            raise _Down("connection refused")
        return self.got


def test_a_tool_that_is_down_is_reported_without_a_made_up_version(monkeypatch, capsys):
    """Regression: an unreachable Label Studio printed "0 pending item(s) got version ?'s
    prediction (...)"."""
    import annotation.tools
    from pipelines.steps import feedback_publish

    tools = [_Tool("label-studio", down=True),
             _Tool("argilla", got={"pushed": 3, "model_version": "2"})]
    monkeypatch.setattr(annotation.tools, "enabled", lambda settings: tools)
    out = feedback_publish.publish_all(Settings(), None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["predictions: label-studio: none pushed (label-studio unavailable: "
                     "connection refused)",
                     "predictions: argilla: 3 pending item(s) got version 2's prediction"]
    assert out["pushed"] == 3 and out["model_version"] == "2"
    assert out["tools"]["label-studio"] == {"pushed": 0, "note": "label-studio unavailable: "
                                                                 "connection refused"}


def test_sync_line_reads_as_words_not_a_dict():
    """Regression: "22 responses in 200 records, {'unchanged': 22}, 0 deleted"."""
    from pipelines.steps.feedback_sync import _describe

    line = _describe({"dataset": "d1", "responses": 22, "records": 200,
                      "outcomes": {"unchanged": 19, "inserted": 3}, "deleted": 0,
                      "skipped": ["x"]})
    assert line == ("dataset d1: 22 responses in 200 records: 3 inserted, 19 unchanged, "
                    "0 deleted, 1 skipped (not trainable)")
    assert _describe({"project": 1, "annotations": 0, "tasks": 5, "outcomes": {},
                      "deleted": 0}) == ("project 1: 0 annotations in 5 tasks: no changes, "
                                         "0 deleted, 0 skipped (not trainable)")
