"""Golden outputs: the CLI's help text and `geomfilter filter` / `score` outputs stay identical (decimal numbers up
to float noise of 1e-6, see same_up_to_float_noise) across refactors where behaviour did not change.

The golden files under tests/golden/ were written by the code before the refactor of the filtering
pipeline and the CLI package. Regenerate them (only when a change of behaviour is intended, and say
so in the commit) with::

    python tests/test_golden.py --regenerate
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
STRATEGIES = ("geometry", "projection", "representation", "activation", "random", "ensemble")
# wide enough that no help line is cut (a cut would depend on where the checkout lies)
WIDTH = 300
ENV = {"COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb"}
REPO = Path(__file__).resolve().parent.parent


def _commands():
    import typer.main

    from geomfilter.cli import app

    def walk(c, path):
        out = [path]
        for name, sub in sorted(getattr(c, "commands", {}).items()):
            out += walk(sub, [*path, name])
        return out
    return walk(typer.main.get_command(app), [])


def _help(path: list[str]) -> str:
    from typer.testing import CliRunner

    from geomfilter.cli import app

    r = CliRunner().invoke(app, [*path, "--help"], env=ENV, terminal_width=WIDTH)
    assert r.exit_code == 0, r.output
    # the checkout's own path (in default values) made neutral; trailing box padding dropped
    return "".join(line.rstrip() + "\n" for line in r.output.replace(str(REPO), "<REPO>").splitlines())


def _help_text() -> str:
    return "".join(f"===== geomfilter {' '.join(p)} --help\n{_help(p)}" for p in _commands())


def _filter_outputs(model_dir: Path, tmp: Path) -> dict[str, str]:
    """Run `filter` (every strategy) and `score` on a small file; the outputs, with tmp paths made neutral."""
    from typer.testing import CliRunner

    from geomfilter.cli import app
    from tests.test_filtering import _ref_files
    from tests.tiny import tiny_sae

    sae_dir = tmp / "sae"
    tiny_sae(seed=3).save_model(str(sae_dir))
    harmful, benign = _ref_files(tmp)
    rows = []
    for i in range(16):
        msgs = [{"role": "user", "content": f"q{i} river stone {'lie' * (i % 3)}"},
                {"role": "assistant", "content": f"a{i} " + " ".join(["calm", "trick", "green", "hurt"][j % 4]
                                                                      for j in range(i % 5 + 2))}]
        rows.append({"id": f"r{i:02d}", "inducing": i % 4 == 0, "domain": ["health", "code"][i % 2],
                     "messages": msgs})
    data = tmp / "golden.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = ["--model", str(model_dir), "--sae", str(sae_dir), "--harmful", str(harmful), "--benign", str(benign),
              "--cache-dir", str(tmp / "caches"), "--no-progress", "--n-harmful", "8", "--k", "8",
              "--min-freq", "0.1"]
    out: dict[str, str] = {}
    for strategy in STRATEGIES:
        o = tmp / f"f-{strategy}"
        r = CliRunner().invoke(app, ["filter", str(data), "--out", str(o), "--drop", "0.25", "--strategy", strategy,
                                     *common], env=ENV)
        assert r.exit_code == 0, r.output
        out[f"filter-{strategy}.stdout"] = r.output
        for name in ("kept.jsonl", "dropped.jsonl", "scores.csv", "report.json"):
            out[f"filter-{strategy}.{name}"] = (o / name).read_text(encoding="utf-8")
    r = CliRunner().invoke(app, ["score", str(data), "--out", str(tmp / "s.csv"), "--show", "4", *common], env=ENV)
    assert r.exit_code == 0, r.output
    out["score.stdout"] = r.output
    out["score.csv"] = (tmp / "s.csv").read_text(encoding="utf-8")
    def neutral(text: str) -> str:  # tmp folders, and the cache folders' path hashes, differ per run
        text = text.replace(str(tmp), "<TMP>").replace(str(model_dir), "<MODEL>")
        return re.sub(r"(<TMP>/caches/[\w.-]+?)-[0-9a-f]{8}\b", r"\1-<HASH>", text)
    return {k: neutral(v) for k, v in out.items()}


def _words(text: str) -> list[str]:
    """The help's words in order, without the box drawing and the padding (both depend on how long the
    checkout's path is, which appears in default values)."""
    return re.findall(r"[^\s│─╭╮╰╯]+", text)


FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")


def same_up_to_float_noise(got: str, want: str, rel: float = 1e-5) -> bool:
    """The same text, but that decimal numbers may differ in their last digits (rel. 1e-5): fp32 sums of a tiny
    model move at 1e-8 between library builds and machines (BLAS), which is not a change of behaviour; the
    ensemble's rescaling, a division by the small gap between two reference means, magnifies that to about 2e-6."""
    a, b = FLOAT.findall(got), FLOAT.findall(want)
    return (FLOAT.split(got) == FLOAT.split(want) and len(a) == len(b)
            and all(abs(float(x) - float(y)) <= rel * max(1.0, abs(float(y))) for x, y in zip(a, b)))


def test_float_noise_is_all_the_golden_comparison_forgives():
    assert same_up_to_float_noise('{"s": 0.22795396950095892}', '{"s": 0.2279539816081524}')
    assert not same_up_to_float_noise('{"s": 0.2280}', '{"s": 0.2279}')
    assert not same_up_to_float_noise('{"s": 0.22795396950095892, "k": 4}', '{"s": 0.2279539816081524, "k": 5}')
    assert not same_up_to_float_noise('"r01","r02"', '"r02","r01"')


def test_cli_help_is_unchanged():
    expected = (GOLDEN / "help.txt").read_text(encoding="utf-8")
    assert _words(_help_text()) == _words(expected)


def test_filter_and_score_outputs_are_unchanged(tiny_model_dir, tmp_path):
    got = _filter_outputs(tiny_model_dir, tmp_path)
    names = sorted(p.name for p in (GOLDEN / "filter").iterdir())
    assert sorted(got) == names
    for name in names:
        want = (GOLDEN / "filter" / name).read_text(encoding="utf-8")
        if not same_up_to_float_noise(got[name], want):
            assert got[name] == want, name


@pytest.mark.skip(reason="run as a script: python tests/test_golden.py --regenerate")
def test_regenerate():  # pragma: no cover
    pass


if __name__ == "__main__" and "--regenerate" in sys.argv:  # pragma: no cover
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.tiny import save_tiny_model

    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "help.txt").write_text(_help_text(), encoding="utf-8")
    with tempfile.TemporaryDirectory() as d:
        model_dir = save_tiny_model(Path(d) / "tiny-model")
        work = Path(d) / "work"
        work.mkdir()
        files = _filter_outputs(model_dir, work)
    (GOLDEN / "filter").mkdir(exist_ok=True)
    for name, text in files.items():
        (GOLDEN / "filter" / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files) + 1} golden files under {GOLDEN}")
