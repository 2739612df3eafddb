"""scripts/measure_mc_prompts.py on a tiny model: accuracy per prompt, fine-tune − base paired, the report."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import measure_mc_prompts as script  # noqa: E402

from geomfilter.evaluate import MC_PROMPTS, mc_accuracy, read_mc  # noqa: E402
from geomfilter.finetune import load_tuned  # noqa: E402
from geomfilter.finetune_config import RUN_FILE  # noqa: E402


def _capability(tmp_path: Path) -> Path:
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps({"id": f"c{i}", "question": f"pick {w}", "choices": ["alpha", "beta gamma", w],
                                        "answer": i % 3}) + "\n" for i, w in enumerate(["eta", "zeta", "theta", "eps"])))
    return path


def test_accuracies_paired_differences_and_report(tmp_path, tiny_model_dir):
    cap = _capability(tmp_path)
    res = script.measure({"base": str(tiny_model_dir), "same": str(tiny_model_dir)}, cap, batch_size=4, n_boot=100)
    qs = read_mc(cap)
    model = load_tuned(str(tiny_model_dir))
    for prompt in MC_PROMPTS:
        want = mc_accuracy(model, qs, n_boot=10, progress=False, prompt=prompt)
        assert res["models"]["base"]["accuracy"][f"{prompt}/mean"] == pytest.approx(want["mean"])
        assert res["models"]["base"]["accuracy"][f"{prompt}/sum"] == pytest.approx(want["accuracy_sum"]["mean"])
        d = res["paired"]["same"][f"{prompt}/mean"]  # the same model: no difference, n = 4 questions
        assert (d["mean"], d["lo"], d["hi"], d["n"]) == (0.0, 0.0, 0.0, 4)
    assert res["models"]["same"]["recorded_chat"] is None  # not a condition's run folder
    text = script.to_markdown(res, "cmd")
    assert "| same | +0.000 [+0.000, +0.000] (MDD 0.000)" in text and "**" not in text.split("Fine-tune − base")[1]
    res["paired"]["same"]["plain/sum"] = {"mean": 0.2, "lo": 0.1, "hi": 0.3, "n": 4, "mdd": 0.1}
    assert "**+0.200 [+0.100, +0.300] (MDD 0.100)**" in script.to_markdown(res, "cmd")
    run = tmp_path / "cond" / "run"  # a condition's fine-tune: the experiment's recorded accuracy beside it
    run.mkdir(parents=True)
    (tmp_path / "cond" / "metrics.json").write_text(json.dumps({"metrics": {"mc_accuracy": {"mean": 0.725}}}))
    assert script.recorded_accuracy(str(run)) is None  # not a run folder yet
    (run / RUN_FILE).write_text("{}")
    assert script.recorded_accuracy(str(run)) == 0.725 and script.recorded_accuracy("smollm2-135m-instruct") is None
    with pytest.raises(SystemExit, match="no such run folder"):
        script.main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.md")])
