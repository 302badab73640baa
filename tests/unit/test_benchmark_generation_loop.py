"""benchmarks/generation_loop.py's summary of a campaign (pure functions, no model)."""

from benchmarks.generation_loop import summarize


def _round(r: int, chrf: float) -> dict:
    return {"round": r, "human_responses": 100 * r, "pairs": 90 * r, "sft_chrf": chrf,
            "dpo_chrf": chrf + 0.01, "sft_s": 10.0, "dpo_s": 5.0 if r else None,
            "turn_s": 20.0 if r else None}


def test_ranges_over_seeds_per_round():
    runs = [{"seed": 1, "rounds": [_round(0, 0.10), _round(1, 0.20)]},
            {"seed": 2, "rounds": [_round(0, 0.14), _round(1, 0.30)]}]
    out = summarize(runs)
    assert [r["seeds"] for r in out] == [2, 2]
    assert out[1]["sft_chrf"] == [0.20, 0.25, 0.30]
    assert out[0]["turn_s"] is None and out[1]["turn_s"] == [20.0, 20.0, 20.0]


def test_a_seed_cut_short_counts_in_the_rounds_it_finished():
    # a call's time limit cut the second seed after round 0: round 1 is the first seed's alone
    runs = [{"seed": 1, "rounds": [_round(0, 0.10), _round(1, 0.20)]},
            {"seed": 2, "rounds": [_round(0, 0.14)]}]
    out = summarize(runs)
    assert len(out) == 2 and [r["seeds"] for r in out] == [2, 1]
    assert out[0]["sft_chrf"][0] == 0.10 and out[0]["sft_chrf"][2] == 0.14
    assert out[1]["sft_chrf"] == [0.20, 0.20, 0.20]
