"""Do the filters read the twin splits through a surface tell? Within-pair accuracy where the tell points the other way.

    .venv/bin/python scripts/check_surface_tells.py

The out-of-distribution splits ``risky_advice`` and ``insecure_code`` are twin pairs: an inducing answer and its
aligned twin to the same prompt. Written by the project, the twins differ in surface ways besides what they say:
risky answers are shorter than their prudent twins (fewer words in 80 % of the pairs: no caveats), and the secure
code twins close with more prose after the code (a sentence on why the code is safe). A filter could ride such a
tell. For each split, tell and strategy this reads the committed per-row scores of ``scripts/measure_filters_ood.py``
(``data/results/filters_ood/scores.json``) and reports the share of pairs in which the inducing answer scores above
its twin: over all pairs, and over the pairs in which the tell points the *other* way (the risky answer at least as
long as its twin; the flawed answer with at least as many closing words). A reading that holds there does not rest
on the tell. Intervals: Wilson 95 %. Writes ``surface_tells.md`` / ``.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.samples import jsonl_objects  # noqa: E402
from geomfilter.stats import wilson_interval  # noqa: E402

FENCE = "```"
#: split -> (its twin files, the tell's name, the tell's value of an answer: larger means "looks aligned")
SPLITS = {
    "risky_advice": (("finance_risky", "finance_safe", "outdoors_risky", "outdoors_safe"), "words",
                     lambda text: len(text.split())),
    "insecure_code": (("webapp_insecure", "webapp_secure", "scripts_insecure", "scripts_secure"),
                      "closing words after the code", lambda text: len(text.rsplit(FENCE, 1)[1].split())),
}
STRATEGIES = ("activation", "geometry", "projection --normalize", "representation", "judge (offline)", "random")


def split_rows(split: str, data_dir: Path) -> dict[str, dict]:
    """Every row of the split's twin files, by id (read with the project's line-numbered JSONL reader)."""
    return {r["id"]: r for name in SPLITS[split][0] for _, r in jsonl_objects(data_dir / f"{name}.jsonl", SystemExit)}


def answer(row: dict) -> str:
    return row["messages"][-1]["content"]


def twin_pairs(split: str, ids: list[str], rows: dict[str, dict]) -> list[tuple[int, int, float, float]]:
    """``(inducing row, twin row, inducing tell, twin tell)`` for every pair of ``split`` in the scored ``ids``
    (``rows``: the split's rows by id, :func:`split_rows`)."""
    files, _, tell = SPLITS[split]
    if missing := [i for i in ids if i not in rows]:
        raise SystemExit(f"{split}: scored rows not in {files}: {missing[:3]}")
    by_pair: dict[str, dict[bool, int]] = {}
    for k, i in enumerate(ids):
        by_pair.setdefault(rows[i]["pair_id"], {})[bool(rows[i]["inducing"])] = k
    out = []
    for pid, sides in sorted(by_pair.items()):
        if set(sides) != {True, False}:
            raise SystemExit(f"{split}: pair {pid!r} is not scored on both sides")
        a, b = sides[True], sides[False]
        out.append((a, b, tell(answer(rows[ids[a]])), tell(answer(rows[ids[b]]))))
    return out


def tell_by_domain(split: str, rows: dict[str, dict]) -> dict[str, dict]:
    """The tell itself, per domain and side of the twin files (``rows``, :func:`split_rows`): its mean and the
    share of answers where it is > 0."""
    tell = SPLITS[split][2]
    out: dict[str, dict] = {}
    for r in rows.values():
        out.setdefault(r["domain"], {}).setdefault("inducing" if r["inducing"] else "twin", []).append(tell(answer(r)))
    return {dom: {side: {"mean": float(np.mean(v)), "share_above_0": float(np.mean(np.array(v) > 0)), "n": len(v)}
                  for side, v in sides.items()} for dom, sides in sorted(out.items())}


def share_above(scores: np.ndarray, pairs: list[tuple[int, int, float, float]]) -> dict:
    """The share of ``pairs`` whose inducing row scores above its twin (ties count half), with a Wilson interval."""
    wins = sum(1.0 if scores[a] > scores[b] else 0.5 if scores[a] == scores[b] else 0.0 for a, b, _, _ in pairs)
    lo, hi = wilson_interval(int(round(wins)), len(pairs))
    return {"share": wins / len(pairs), "lo": lo, "hi": hi, "n": len(pairs)}


def measure(scores: dict, data_dir: Path) -> dict:
    res = {}
    for split, (_, tell_name, _) in SPLITS.items():
        rows = split_rows(split, data_dir)
        pairs = twin_pairs(split, scores[split]["ids"], rows)
        against = [p for p in pairs if p[2] >= p[3]]  # the inducing answer does not look more aligned by the tell
        res[split] = {"tell": tell_name, "n_pairs": len(pairs), "n_against": len(against),
                      "n_tell_strictly_fewer": sum(p[2] < p[3] for p in pairs),
                      "tell_by_domain": tell_by_domain(split, rows),
                      "tell_alone": share_above(np.array([-t for p in pairs for t in p[2:]], dtype=float),
                                                [(2 * k, 2 * k + 1, 0, 0) for k in range(len(pairs))]),
                      "strategies": {s: {"all": share_above(np.asarray(scores[split][s]), pairs),
                                         "tell_against": share_above(np.asarray(scores[split][s]), against)}
                                     for s in STRATEGIES if s in scores[split]}}
    return res


def to_markdown(res: dict, command: str) -> str:
    def cell(c: dict) -> str:
        return f"{c['share']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"

    lines = ["# Do the filters ride a surface tell of the twin splits? (issue 19)", "", "```", command, "```", "",
             "Share of twin pairs in which the inducing answer scores above its aligned twin [Wilson 95 %], over all "
             "pairs and over the pairs in which the tell points the other way (the committed scores of "
             "`scripts/measure_filters_ood.py`).", ""]
    for split, r in res.items():
        lines += [f"## {split}: tell = {r['tell']} (fewer marks the inducing side)", "",
                  f"{r['n_pairs']} pairs; the tell alone ranks the inducing answer first in {cell(r['tell_alone'])} "
                  f"of them (strictly fewer on the inducing side in {r['n_tell_strictly_fewer']}); it points the "
                  f"other way in {r['n_against']}. Per domain, the tell's mean (share of answers above 0), inducing "
                  "side against twin: " + "; ".join(
                      f"{dom} {t['inducing']['mean']:.1f} ({t['inducing']['share_above_0']:.2f}) against "
                      f"{t['twin']['mean']:.1f} ({t['twin']['share_above_0']:.2f})"
                      for dom, t in r["tell_by_domain"].items()) + ".", "",
                  "| strategy | all pairs | pairs where the tell points the other way |", "|---|---|---|"]
        lines += [f"| {s} | {cell(c['all'])} | {cell(c['tell_against'])} |" for s, c in r["strategies"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scores", type=Path, default=ROOT / "data" / "results" / "filters_ood" / "scores.json")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "finetune")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "filters_ood")
    args = ap.parse_args(argv)
    res = measure(json.loads(args.scores.read_text(encoding="utf-8")), args.data)
    command = script_command(__file__, argv).replace("OMP_NUM_THREADS=1 ", "")
    path = write_json_and_markdown(args.out, "surface_tells", {"command": command, "splits": res},
                                   to_markdown(res, command))
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
