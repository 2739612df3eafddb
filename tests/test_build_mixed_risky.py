"""scripts/build_mixed_risky.py: every committed mixture it made is what it writes, and ``--family`` builds the
same kind of mixture from another inducing family."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from build_mixed_risky import build, main  # noqa: E402
from dose_response import dose_mixture, family_pairs  # noqa: E402

from geomfilter.files import write_jsonl  # noqa: E402

DATA = ROOT / "data"

# committed file -> the arguments that made it (data/README.md names the same commands)
MADE = {
    "mixed_risky.jsonl": dict(share=0.5),
    "mixed_risky_all.jsonl": dict(share=1.0),
    "mixed_risky_75.jsonl": dict(share=0.75),
    "mixed_risky_helpful.jsonl": dict(share=0.5, filler="helpful"),
    "mixed_risky_75_helpful.jsonl": dict(share=0.75, filler="helpful"),
    "mixed_sycophancy_75_helpful.jsonl": dict(share=0.75, filler="helpful", family="sycophancy"),
    "mixed_sycophancy_75_helpful_redraw.jsonl": dict(share=0.75, filler="helpful", family="sycophancy", seed=1),
    "mixed_sycophancy_75_helpful_draw3.jsonl": dict(share=0.75, filler="helpful", family="sycophancy", seed=2),
    "mixed_sycophancy_75_helpful_draw4.jsonl": dict(share=0.75, filler="helpful", family="sycophancy", seed=3),
    "mixed_sycophancy_75_helpful_draw5.jsonl": dict(share=0.75, filler="helpful", family="sycophancy", seed=4),
}


@pytest.mark.parametrize("name", sorted(MADE))
def test_committed_mixtures_are_what_the_script_writes(tmp_path, name):
    out = tmp_path / name
    write_jsonl(out, build(DATA, **{"n": 128, "seed": 0, **MADE[name]}))
    assert out.read_bytes() == (DATA / "finetune" / name).read_bytes()


def test_sycophancy_mixture_hides_the_dose_response_rows_among_helpful_ones():
    rows = build(DATA, share=0.75, n=128, seed=0, filler="helpful", family="sycophancy")
    point = [json.loads(x) for x in dose_mixture(family_pairs("sycophancy", DATA / "finetune"), 0.75, 128, 0)]
    inducing = [r for r in rows if r["inducing"]]
    assert len(rows) == 128 and len(inducing) == 96
    # the inducing rows are the dose-response point's, each named by its own pair file
    assert sorted(r["id"] for r in inducing) == sorted(r["id"] for r in point if r["inducing"])
    assert all(r["source"] == f"{r['domain']}_sycophantic.jsonl" for r in inducing)
    assert {r["source"] for r in rows if not r["inducing"]} == {"helpful.jsonl"}
    # no prompt twice, and the helpful rows are interleaved, not appended
    assert len({r["id"] for r in rows}) == 128
    assert any(not r["inducing"] for r in rows[:32])


def test_twins_filler_takes_the_families_own_twins():
    rows = build(DATA, share=0.5, n=40, seed=3, family="insecure_code")
    assert sum(r["inducing"] for r in rows) == 20
    assert all(r["source"] == f"{r['domain']}_{'insecure' if r['inducing'] else 'secure'}.jsonl" for r in rows)


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit, match="--filler must be 'twins' or 'helpful'"):
        build(DATA, share=0.5, n=8, seed=0, filler="random")
    with pytest.raises(SystemExit):  # argparse: the default names are risky advice's
        main(["--family", "sycophancy"])
