"""Several SAEs measured on the same text that none of them was trained on (issue 19 (e)).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/eval_sae_text.py \\
        --sae bundled=smollm2-135m-instruct-res14-topk64 --sae persona=runs/saes/res14-topk64-persona \\
        --out data/results/filters_ood/sae_study/same_text

``geomfilter train-sae`` reports each SAE on held-out windows of its *own* corpus, so two SAEs trained on
different corpora are measured on different text. This script cuts one set of token windows from ``--text``
(default: the default model's persona answers of ``data/ood/`` and its variants' answers of ``data/judge_real/``,
in no SAE corpus) and measures every SAE on them with :func:`geomfilter.sae_train.evaluate_sae`: explained
variance, L0, dead latents, CE loss recovered. Writes ``results.json`` and ``results.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geomfilter.files import script_command, write_json_and_markdown  # noqa: E402
from geomfilter.models import load_model  # noqa: E402
from geomfilter.sae_train import build_token_windows, evaluate_sae  # noqa: E402
from geomfilter.saes import load_sae, sae_hook_name  # noqa: E402
from geomfilter.samples import qa_chats  # noqa: E402
from geomfilter.settings import DEFAULT_MODEL  # noqa: E402

TEXT = (ROOT / "data" / "ood" / "persona_answers.jsonl", ROOT / "data" / "judge_real" / "answers.jsonl")


def as_chat_file(path: Path, tmp: Path) -> Path:
    """``path`` itself when its rows are chats; rows with ``question``/``answer`` (``data/judge_real/answers.jsonl``)
    are written as one-turn chats under ``tmp``."""
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if all("messages" in r for r in rows):
        return path
    chats = qa_chats(rows)
    out = tmp / path.name
    out.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", action="append", required=True, help="label=SPEC_OR_FOLDER (repeatable)")
    ap.add_argument("--text", type=Path, action="append", default=None, help="chat JSONL (repeatable)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--context-size", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=96)
    ap.add_argument("--ce-windows", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    saes = dict(s.split("=", 1) for s in args.sae)
    text = args.text or list(TEXT)
    model = load_model(args.model, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        files = [as_chat_file(Path(t), Path(tmp)) for t in text]
        win = build_token_windows(files, model.tokenizer, context_size=args.context_size, heldout_fraction=0.04,
                                  seed=0)
    windows = torch.from_numpy(np.concatenate([win.heldout, win.train])[: args.max_windows])
    res = {"text": [str(Path(t).relative_to(ROOT)) if Path(t).is_relative_to(ROOT) else str(t) for t in text],
           "windows": int(len(windows)), "context_size": args.context_size, "saes": {}}
    for label, spec in saes.items():
        sae = load_sae(spec, device=str(model.device))
        m = evaluate_sae(model, sae, sae_hook_name(sae), windows, ce_windows=args.ce_windows)
        res["saes"][label] = {"spec": spec, **m}
        print(f"{label}: EV {m['explained_variance']:.3f}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, "
              f"CE recovered {m['ce_loss_recovered']:.3f}", flush=True)
    res["command"] = script_command(__file__, argv)
    lines = ["# SAEs on the same unseen text (issue 19 (e))\n", f"```\n{res['command']}\n```\n",
             f"{res['windows']} windows of {args.context_size} tokens (position 0 left out) cut from "
             + ", ".join(f"`{t}`" for t in res["text"]) + ": text in no SAE's training corpus.\n",
             "| SAE | latents | explained variance | L0 | dead latents | CE clean | CE spliced | CE recovered |",
             "|---|---|---|---|---|---|---|---|"]
    for label, m in res["saes"].items():
        lines.append(f"| {label} | {m['d_sae']} | {m['explained_variance']:.3f} | {m['l0']:.1f} | "
                     f"{m['dead_fraction']:.1%} | {m['ce_loss_clean']:.3f} | {m['ce_loss_spliced']:.3f} | "
                     f"{m['ce_loss_recovered']:.3f} |")
    write_json_and_markdown(args.out, "results", res, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
