"""benchmarks/prefill_graphs.py end to end on a tiny model (CPU: no graphs, so the padded
prefill is off and every decoder must agree exactly); its figures come from a GPU run."""

import json

from benchmarks import prefill_graphs


def test_prefill_benchmark_checks_parity_and_times_every_decoder(tmp_path):
    out = tmp_path / "p.json"
    assert prefill_graphs.main(["--device", "cpu", "--tiny", "--reps", "1", "--slots", "32",
                                "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["parity_ok"] and len(result["checks"]) == 16
    assert all(c["logits_rel_diff"] < 1e-4 and c["same_next_4_tokens"] for c in result["checks"])
    assert [t["prompts"] for t in result["timings"]] == [1, 2, 4, 8, 16]
    assert all({"before", "graphs", "now"} <= set(t) for t in result["timings"])
    assert [s["rows"] for s in result["decode_steps"]] == [1]  # 64 and 256 exceed 32 slots
