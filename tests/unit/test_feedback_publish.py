"""pipelines/steps/feedback_publish.py: what a feedback turn says about pushed predictions."""

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
