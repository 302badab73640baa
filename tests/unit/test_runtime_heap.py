"""ModelHolder swaps versions atomically and leaves the heap frozen (no long GC pauses)."""

from __future__ import annotations

import gc

from services import runtime


class _Version:
    def __init__(self, version):
        self.version = version


def test_reload_swaps_and_freezes_the_heap(monkeypatch):
    from labelloop import registry
    from labelloop.settings import load_settings

    settings = load_settings(environ={})
    champion = {"v": "1"}
    monkeypatch.setattr(registry, "get_champion", lambda s: _Version(champion["v"]))
    loaded = []

    def loader(s, version):
        loaded.append(version)
        return runtime.LoadedModel(version=version, classifier=None)

    holder = runtime.ModelHolder(settings, loader=loader)
    assert holder.current.version == "1"
    gc.unfreeze()
    assert holder.check()["changed"] is False
    assert gc.get_freeze_count() == 0  # nothing reloaded, nothing frozen
    champion["v"] = "2"
    result = holder.check()
    assert result == {"previous": "1", "current": "2", "changed": True}
    assert holder.current.version == "2" and loaded == ["1", "2"]
    assert gc.get_freeze_count() > 0
    gc.unfreeze()


def test_settle_heap_collects_cycles_frozen_earlier():
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the collector frees it
    ref = weakref.ref(a)
    gc.freeze()
    del a, b
    runtime.settle_heap()
    assert ref() is None
    gc.unfreeze()
