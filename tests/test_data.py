"""data.py: validation errors (file/line/field), ids, response masks, truncation, HF inputs."""
from __future__ import annotations

import json

import pytest

from geomfilter.data import prepare_dataset, tokenize_sample
from geomfilter.samples import DataError, parse_row, qa_chats, read_qa_rows, read_samples
from tests.tiny import tiny_tokenizer

TOK = tiny_tokenizer()


def expected(messages, response="last"):
    """Hand-built token count and response positions for the char-level ChatML tokenizer.

    Every turn renders as ``<|im_start|>`` (1 token) + role + ``\\n`` + content
    (1 token per char) + ``<|im_end|>`` (1 token) + ``\\n``.
    """
    pos, spans = 0, []
    for m in messages:
        pos += 1 + len(m["role"]) + 1
        spans.append((m["role"], list(range(pos, pos + len(m["content"])))))
        pos += len(m["content"]) + 2
    resp = [p for role, ps in spans if role == "assistant" for p in ps]
    if response == "last":
        resp = [ps for role, ps in spans if role == "assistant"][-1]
    return pos, resp


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    return path


def chat(user="hi", assistant="Yo!", **extra):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


# ------------------------------------------------------------------ masks


def test_single_turn_mask_hand_computed():
    s = parse_row(chat(), "x.jsonl", 1)
    t = tokenize_sample(s, TOK)
    # <|im_start|> u s e r \n h i <|im_end|> \n <|im_start|> a s s i s t a n t \n Y o ! <|im_end|> \n
    assert len(t.input_ids) == 26
    assert [i for i, m in enumerate(t.response_mask) if m] == [21, 22, 23]
    assert TOK.decode([t.input_ids[i] for i in (21, 22, 23)]) == "Yo!"
    assert expected(s.messages) == (26, [21, 22, 23])


MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "6, as before"},
]


@pytest.mark.parametrize("mode", ["last", "all"])
def test_multi_turn_mask(mode):
    s = parse_row({"messages": MULTI}, "x.jsonl", 1)
    t = tokenize_sample(s, TOK, response=mode)
    n, resp = expected(MULTI, mode)
    assert len(t.input_ids) == n
    assert [i for i, m in enumerate(t.response_mask) if m] == resp
    text = TOK.decode([t.input_ids[i] for i in resp])
    assert text == ("6, as before" if mode == "last" else "46, as before")


def test_assistant_repeating_user_text_is_masked_in_its_own_turn():
    msgs = [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "abc"}]
    t = tokenize_sample(parse_row({"messages": msgs}, "x", 1), TOK)
    assert [i for i, m in enumerate(t.response_mask) if m] == expected(msgs)[1]


def test_truncation_policies_and_report(tmp_path):
    long = chat(user="x" * 40, assistant="answer")
    p = write_jsonl(tmp_path / "d.jsonl", [long, chat(user="ok", assistant="fine", id="short")])
    n_full, _ = expected(long["messages"])
    ds = prepare_dataset(p, TOK, max_tokens=30, truncation="left")
    assert ds.report.n_truncated == 1 and len(ds) == 2
    t = ds.tokenized[0]
    assert len(t.input_ids) == 30 and t.truncated
    assert TOK.decode([i for i, m in zip(t.input_ids, t.response_mask) if m]) == "answer"
    # right truncation of the long sample removes the whole response -> explicit error
    with pytest.raises(DataError, match="no response tokens left after right truncation"):
        prepare_dataset(p, TOK, max_tokens=30, truncation="right")
    with pytest.raises(DataError, match=f"{n_full} tokens > max_tokens=30"):
        prepare_dataset(p, TOK, max_tokens=30, truncation="error")
    # with skip_invalid the sample is rejected, not lost
    ds = prepare_dataset(p, TOK, max_tokens=30, truncation="right", skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    assert [s.id for s in ds.samples] == ["short"] and ds.report.n_rejected == 1
    rej = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert rej[0]["line"] == 1 and "no response tokens" in rej[0]["reason"]


# ------------------------------------------------------------------ ids, schemas, meta


def test_ids_stable_and_meta_carried(tmp_path):
    rows = [chat(id="a1", domain="health", inducing=True), chat(user="other"), {"prompt": "p", "response": "r", "system": "s", "label": 3}]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    s1, s2 = read_samples(p), read_samples(p)
    assert [s.id for s in s1] == [s.id for s in s2]
    assert s1[0].id == "a1" and s1[0].meta == {"domain": "health", "inducing": True}
    assert s1[1].id.startswith("sha-") and s1[1].id != s1[2].id
    assert s1[2].messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert s1[2].meta == {"label": 3} and s1[2].line == 3
    # the content hash ignores the row's position but not its content
    moved = write_jsonl(tmp_path / "e.jsonl", [rows[1]])
    assert read_samples(moved)[0].id == s1[1].id
    assert parse_row(chat(user="other!"), "x", 1).id != s1[1].id


def test_hf_dataset_object_and_dir(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([chat(id="h1", domain="d"), chat(user="yo", id="h2", domain="e")])
    a = read_samples(ds)
    ds.save_to_disk(str(tmp_path / "hf"))
    b = read_samples(tmp_path / "hf")
    assert [s.id for s in a] == [s.id for s in b] == ["h1", "h2"]
    assert a[1].meta == {"domain": "e"} and a[1].messages == b[1].messages
    bad = Dataset.from_list([{"prompt": "p", "response": ""}])
    with pytest.raises(DataError, match=r"<Dataset>:1: field 'response': is empty"):
        read_samples(bad)


# ------------------------------------------------------------------ bad input


BAD = [
    ('{"messages": [', "<json>", "malformed JSON"),
    ([1, 2], "<row>", "expected a JSON object"),
    ({"text": "hi"}, "messages", "missing"),
    ({"messages": "hi"}, "messages", "expected a list"),
    ({"messages": []}, "messages", "is empty"),
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "a"}]}, "messages[0].role", "missing"),
    ({"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "a"}]}, "messages[0].role", "unknown role 'human'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "messages[1].content", "is empty"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]}, "messages[1].content", "expected a string, got int"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}, "messages[1].content", "missing"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "has no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "messages", "has no user turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
     "messages[2].role", "must end with an assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
     "messages[1].role", "system turn must come first"),
    ({"prompt": "p"}, "response", "missing"),
    ({"prompt": ["p"], "response": "r"}, "prompt", "expected a string, got list"),
    ({**chat(), "id": {"a": 1}}, "id", "expected a string or integer"),
    ({**chat(), "id": True}, "id", "expected a string or integer, got bool"),
]


@pytest.mark.parametrize("row,field,reason", BAD)
def test_bad_row_names_file_line_field(tmp_path, row, field, reason):
    p = write_jsonl(tmp_path / "bad.jsonl", [chat(id="ok"), row])
    with pytest.raises(DataError) as ei:
        read_samples(p)
    e = ei.value
    assert (e.source, e.line, e.field) == (str(p), 2, field)
    assert reason in e.reason
    assert str(e).startswith(f"{p}:2: field {field!r}:")


def test_non_utf8_and_duplicate_ids(tmp_path):
    p = tmp_path / "bin.jsonl"
    p.write_bytes(json.dumps(chat()).encode() + b"\n" + b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(DataError, match=r"bin.jsonl:2: field '<line>': not valid UTF-8"):
        read_samples(p)
    d = write_jsonl(tmp_path / "dup.jsonl", [chat(id="a"), chat(user="b", id="a")])
    with pytest.raises(DataError, match=r"dup.jsonl:2: field 'id': duplicate id 'a' \(first on line 1\)"):
        read_samples(d)


def test_skip_invalid_partitions_rows_and_writes_rejects(tmp_path):
    rows = [chat(id="a"), '{"broken', {"messages": [{"role": "bot", "content": "x"}]}, chat(id="b", user="u"), chat(id="a", user="v")]
    p = write_jsonl(tmp_path / "mix.jsonl", rows)
    ds = prepare_dataset(p, TOK, skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    r = ds.report
    assert r.n_rows == 5 and r.n_valid == 2 and r.n_rejected == 3
    assert r.n_valid + r.n_rejected == r.n_rows
    rej = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [(x["line"], x["field"]) for x in rej] == [(2, "<json>"), (3, "messages[0].role"), (5, "id")]
    assert rej[1]["row"] == rows[2] and all(x["file"] == str(p) for x in rej)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        read_samples(tmp_path / "nope.jsonl")


def test_question_answer_rows_are_read_with_their_fields_and_become_chats(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_text('{"id": "q1#0", "question": "Hi?", "answer": "Hello."}\n\n{"id": "q1#1", "question": "Hi?"}\n')
    with pytest.raises(ValueError, match=r"answers.jsonl:3: field 'answer' is missing"):
        read_qa_rows(p)
    rows = read_qa_rows(p, fields=("id", "question"))
    assert [r["id"] for r in rows] == ["q1#0", "q1#1"]
    assert qa_chats(rows[:1]) == [{"id": "q1#0", "messages": [{"role": "user", "content": "Hi?"},
                                                              {"role": "assistant", "content": "Hello."}]}]
    with pytest.raises(SystemExit, match="file not found"):
        read_qa_rows(tmp_path / "none.jsonl", error=SystemExit)
