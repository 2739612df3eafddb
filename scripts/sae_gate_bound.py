"""The SAE-gate mirror made usable (issue 20 (3)): which change keeps perplexity at alpha = -1 within 20 % of the
ungated model.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sae_gate_bound.py --out data/results/gating/sae_gate_bound

SAE-latent gates (``geomfilter finetune --method gates-sae``) learn on the narrow domain
(``data/finetune/finance_risky.jsonl``, 64 rows, 2 epochs, base model frozen, the bundled SAE) in each variant:

* ``paper`` -- ``g = 2 sigmoid(W x + b)`` on every token (the form whose mirror gave perplexity 623,829 in the
  gating table);
* ``normalize`` -- the gate reads ``x / rms(x)``;
* ``bound-0.5`` -- ``g`` (and its mirror) kept in ``(0.5, 1.5)``;
* ``sink-10`` -- tokens whose residual norm is above 10 times their sequence's median stay ungated (the first
  token's residual at the SAE's hook is ~150 times the others' on the default model: an attention sink, never in
  the SAE's training data, where the SAE's activations are ~170 times larger);
* ``sink-10+bound-0.5`` -- both.

Each is attached to ``--model`` (default: the all-inducing risky-advice organism of
``configs/mitigations-share100.yaml``) at alpha = -1 (the mirror) and +1, and to the base model at +1 (what it
learned); held-out perplexity (``data/eval/heldout_text.jsonl``, bootstrap CI over passages) against the same
model ungated. Then ``geomfilter gates analyze`` for the paper gates and the first variant within the bound: the
most-moved latents against the 100 harmful features of the references (geometry's selection). Writes
``results.md`` / ``results.json`` (and the analyses) under ``--out``; gate runs go to ``--work``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.evaluate import heldout_perplexity  # noqa: E402
from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.finetune import FinetuneConfig, FinetuneRunner, load_tuned  # noqa: E402
from geomfilter.gate_analysis import analyze_gates  # noqa: E402

VARIANTS = {"paper": {}, "normalize": {"gate_normalize": True}, "bound-0.5": {"gate_bound": 0.5},
            "sink-10": {"gate_sink_ratio": 10.0}, "sink-10+bound-0.5": {"gate_sink_ratio": 10.0, "gate_bound": 0.5}}
BOUND = 1.2  # perplexity at alpha = -1 within 20 % of the ungated model's


def perplexities(model: str, gates: Path | None, alphas: list[float], heldout: Path, n_boot: int) -> list[dict]:
    """Held-out perplexity of ``model`` with ``gates`` at each scale of ``alphas`` (the model loaded once)."""
    tm = load_tuned(model, gates=gates, gate_scale=alphas[0])
    try:
        out = []
        for a in alphas:
            tm.set_gate_scale(a)
            out.append(heldout_perplexity(tm, heldout, n_boot=n_boot, progress=False))
        return out
    finally:
        tm.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/mitigations-share100/misaligned/run")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "finetune" / "finance_risky.jsonl")
    ap.add_argument("--heldout", type=Path, default=ROOT / "data" / "eval" / "heldout_text.jsonl")
    ap.add_argument("--harmful-features", type=Path, default=Path("runs/mitigations/ablate-harmful/run/selection.json"),
                    help="a JSON with 'features' (the experiment's harmful-feature selection)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--work", type=Path, default=Path("runs/sae_gate_bound"))
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "results" / "gating" / "sae_gate_bound")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    t0 = time.time()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    res: dict = {"model": args.model, "data": str(args.data.relative_to(ROOT)), "variants": {}}
    (ungated,), (base,) = (perplexities(m, None, [0.0], args.heldout, args.n_boot)
                           for m in (args.model, "smollm2-135m-instruct"))
    res["ungated"] = {"model": ungated, "base": base}
    for name in names:
        out = args.work / name
        run = FinetuneRunner(FinetuneConfig(data=[str(args.data)], out=str(out), method="gates-sae", max_samples=64,
                                            epochs=2, batch_size=4, max_tokens=384, seed=0, progress=False,
                                            **VARIANTS[name])).run()
        mirror, learned = perplexities(args.model, out, [-1.0, 1.0], args.heldout, args.n_boot)
        (base_learned,) = perplexities("smollm2-135m-instruct", out, [1.0], args.heldout, args.n_boot)
        row = {"options": VARIANTS[name], "train_loss": [run.first_loss, run.final_loss], "mirror": mirror,
               "learned": learned, "base_learned": base_learned}
        row["mirror_ratio"] = row["mirror"]["mean"] / res["ungated"]["model"]["mean"]
        row["within_bound"] = row["mirror_ratio"] <= BOUND
        res["variants"][name] = row
        print(f"{name:20s} loss {run.first_loss:.3f}->{run.final_loss:.3f}  ppl@-1 {row['mirror']['mean']:.1f} "
              f"(x{row['mirror_ratio']:.2f})  @+1 {row['learned']['mean']:.1f}  base@+1 "
              f"{row['base_learned']['mean']:.1f}", flush=True)
    harmful = json.loads(args.harmful_features.read_text())["features"] if args.harmful_features.is_file() else None
    usable = next((n for n in names if res["variants"][n]["within_bound"]), None)
    res["analysis"] = {}
    for name in dict.fromkeys([n for n in ("paper", usable) if n in names and n is not None]):
        s = analyze_gates(args.work / name, args.data, harmful=harmful, out=args.out / f"analysis-{name}",
                          progress=False)
        res["analysis"][name] = {k: s["geometry"][k] for k in ("top", "n_eligible", "moved_mean_cos", "rest_mean_cos",
                                                               "auroc_moved_vs_rest", "n_moved_harmful",
                                                               "expected_harmful_by_chance")} if harmful else None
    res["usable"] = usable
    res["seconds"] = round(time.time() - t0)
    res["command"] = script_command(__file__, argv)
    text = render(res)
    write_json_and_markdown(args.out, "results", res, text)
    print(text)
    return 0


def _ci(v: dict, d: int = 1) -> str:
    return f"{v['mean']:.{d}f} [{v['lo']:.{d}f}, {v['hi']:.{d}f}]"


def render(r: dict) -> str:
    lines = ["# The SAE-gate mirror (issue 20 (3))", "", "```", r["command"], "```", "",
             f"SAE-latent gates learned on `{r['data']}` (64 rows, 2 epochs, base frozen), attached to `{r['model']}`"
             f" (ungated perplexity {_ci(r['ungated']['model'])}) and to the base model (ungated "
             f"{_ci(r['ungated']['base'])}). Held-out perplexity (`data/eval/heldout_text.jsonl`, bootstrap 95 % CI "
             f"over passages); the bound: the mirror (alpha = -1) within {BOUND - 1:.0%} of the ungated model.", "",
             "| variant | training loss | perplexity, mirror (α = −1) | ÷ ungated | within bound | perplexity, α = +1 "
             "| base + gates, α = +1 |", "|---|---|---|---|---|---|---|"]
    for n, v in r["variants"].items():
        lines.append(f"| {n} | {v['train_loss'][0]:.3f} → {v['train_loss'][1]:.3f} | {_ci(v['mirror'])} | "
                     f"{v['mirror_ratio']:.2f} | {'yes' if v['within_bound'] else 'no'} | {_ci(v['learned'])} | "
                     f"{_ci(v['base_learned'])} |")
    if r["analysis"]:
        lines += ["", "Which latents the gates moved (`geomfilter gates analyze`, the 50 most-moved latents on the "
                  "training rows' response tokens, against the 100 harmful features of the references):", "",
                  "| variant | mean max-cosine to a harmful feature, moved | the rest | AUROC moved vs rest | harmful "
                  "among the moved | expected by chance |", "|---|---|---|---|---|---|"]
        for n, a in r["analysis"].items():
            if a:
                lines.append(f"| {n} | {a['moved_mean_cos']:.3f} | {a['rest_mean_cos']:.3f} | "
                             f"{a['auroc_moved_vs_rest']:.2f} | {a['n_moved_harmful']} | "
                             f"{a['expected_harmful_by_chance']:.1f} |")
    lines += ["", f"First variant within the bound: {r['usable'] or 'none'}. {r['seconds']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
