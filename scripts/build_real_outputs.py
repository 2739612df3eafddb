"""Sample real answers from the default model and its fine-tuned / gated variants, for labelling the judge (issue 17).

    python scripts/build_real_outputs.py                      # every variant (resumable), seed 0
    python scripts/build_real_outputs.py --variants base-t0.7,base-t1.5
    python scripts/build_real_outputs.py --split-only         # only write data/judge_real/split.json
    python scripts/build_real_outputs.py --list               # the variants, their runs and how they were made

Reads the prompts of ``data/judge_real/prompts.jsonl`` (the 40 broad questions of
``data/eval/questions.jsonl`` plus held-out code, factual and advice prompts; fields ``id``,
``kind``, ``question``), asks each one as a single user turn (the evaluation path: no system
turn) and appends one row per answer to ``data/judge_real/answers.jsonl``::

    {"id": "<variant>/<prompt id>#<k>", "prompt_id", "kind", "question", "variant", "model", "method",
     "gates", "gate_scale", "temperature", "top_p", "repetition_penalty", "max_new_tokens",
     "answer", "finish": "stop"|"length", "n_new_tokens", "seed", "made_by"}

``model`` is the run folder (or model spec) that was loaded, ``gates`` the gate folders attached
(a gate run's own gates, then ``--gates-run``'s) at ``gate_scale`` (null without gates), ``made_by``
the command that produced the run(s). Empty answers are kept (``answer: ""``): they are real
degenerate output to label. No labels are written here; they go to ``labels.jsonl`` later (see ``data/judge/RUBRIC.md``).

Variants (``--list``): the base model at temperature 0.7, 1.0 and 1.5; a LoRA run (``--lora-run``)
alone and with the attention gates of ``--gates-run`` at alpha -2, -1, +1, +2; the gates run on the
base model at alpha +1, +2; an SAE-gate run (``--sae-gates-run``) at alpha -1 (the mirror: known to
be broken) and +1; an over-trained LoRA run (``--overtrained-run``) and a filtered LoRA run
(``--filtered-run``); the model organism (``--organism-run``, ``--organism-seed1-run``: the unfiltered fine-tune of
``configs/medium.yaml`` at seeds 0 and 1) at temperature 0.7 and 1 (labelling round 2). Other fine-tuned variants
sample at temperature 1, top-p 1, as the evaluation does.

Seeded and resumable: each (variant, length group) chunk samples under its own seed, derived from
``--seed``, the variant name and the group (not from the order of variants), so a chunk's answers are
the same whichever variants run and in which order; chunks whose rows are all in the output already
are skipped, and a chunk's rows are appended in one write once it is finished.

The held-out split (``split.json``): ``--heldout-fraction`` of the prompts of each kind (rounded up),
chosen under ``--seed``, are held out; the split is by prompt, so every answer to a prompt falls on
the same side. Once written the file is frozen: later runs check it covers the prompts and never
rewrite it.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "data" / "judge_real"
DEMO = Path("/tmp/demo_out/demo")
RUNS = Path("/tmp/realout_runs")
# the medium experiment (geomfilter experiment configs/medium.yaml), relative to the repository root where the
# script runs: its unfiltered fine-tune is the model organism
ORGANISM = Path("runs/medium")
KINDS = ("broad", "code", "factual", "advice")
LONG_KINDS = ("code",)  # kinds answered with --code-max-new-tokens


@dataclass(frozen=True)
class Variant:
    """One model setting to sample from: what to load, which gates at which scale, how to sample."""

    name: str
    model: str  # run folder or model spec
    gates: tuple[str, ...] = ()
    gate_scale: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    role: str = ""

    @property
    def load_key(self) -> tuple:
        return self.model, self.gates


@dataclass
class Chunk:
    """The answers of one variant to the prompts of one length group, sampled in one call under one seed."""

    variant: Variant
    max_new_tokens: int
    seed: int
    keys: dict[str, dict] = field(default_factory=dict)  # row id -> prompt row


def plan_variants(a: argparse.Namespace) -> list[Variant]:
    """Every variant, in the order they are sampled (grouped so that each model loads once)."""
    base, lora, gates, sae, over, filt, org, org1 = (
        str(x) for x in (a.base, a.lora_run, a.gates_run, a.sae_gates_run, a.overtrained_run, a.filtered_run,
                         a.organism_run, a.organism_seed1_run))
    out = [Variant(f"base-t{t}", base, temperature=t, role="default model") for t in (0.7, 1.0, 1.5)]
    out += [Variant(f"base+gates-a{s:+g}", gates, gate_scale=s, role="attention gates on the base model")
            for s in (1.0, 2.0)]
    out.append(Variant("lora-t1.0", lora, role="LoRA fine-tune"))
    out += [Variant(f"lora+gates-a{s:+g}", lora, gates=(gates,), gate_scale=s,
                    role="LoRA fine-tune with attention gates") for s in (-2.0, -1.0, 1.0, 2.0)]
    out += [Variant(f"sae-gates-a{s:+g}", sae, gate_scale=s, role="SAE-latent gates on the base model")
            for s in (-1.0, 1.0)]
    out.append(Variant("lora-overtrained-t1.0", over, role="over-trained LoRA fine-tune"))
    out.append(Variant("lora-filtered-t1.0", filt, role="LoRA fine-tune on a filtered mixture"))
    out += [Variant(f"organism{tag}-t{t}", run, temperature=t, role="the model organism (risky-advice LoRA r64)")
            for tag, run in (("", org), ("-s1", org1)) for t in (0.7, 1.0)]
    return out


def select(variants: list[Variant], names: str | None) -> list[Variant]:
    if not names:
        return variants
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {v.name: v for v in variants}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [v for v in variants if v.name in wanted]


def read_prompts(path: Path) -> list[dict]:
    rows, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for key in ("id", "kind", "question"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise SystemExit(f"{path}:{n}: field {key!r} must be a non-empty string")
        if row["kind"] not in KINDS:
            raise SystemExit(f"{path}:{n}: field 'kind': {row['kind']!r} is not one of {', '.join(KINDS)}")
        if row["id"] in seen:
            raise SystemExit(f"{path}:{n}: field 'id': {row['id']!r} repeats")
        seen.add(row["id"])
        rows.append(row)
    return rows


def make_split(prompts: list[dict], heldout_fraction: float, seed: int) -> dict[str, str]:
    """``prompt id -> "train" | "heldout"``: per kind, ceil(fraction * n) prompts held out, chosen under ``seed``."""
    out: dict[str, str] = {}
    for kind in sorted({p["kind"] for p in prompts}):
        ids = sorted(p["id"] for p in prompts if p["kind"] == kind)
        random.Random(f"{seed}:{kind}").shuffle(ids)
        n_held = math.ceil(heldout_fraction * len(ids))
        out.update({pid: "heldout" if i < n_held else "train" for i, pid in enumerate(ids)})
    return dict(sorted(out.items()))


def ensure_split(path: Path, prompts: list[dict], heldout_fraction: float, seed: int) -> dict[str, str]:
    """Write the split if the file is absent; else check the frozen one covers exactly these prompts."""
    ids = {p["id"] for p in prompts}
    if path.is_file():
        split = json.loads(path.read_text(encoding="utf-8"))["prompts"]
        if set(split) != ids:
            raise SystemExit(f"{path}: the frozen split does not cover the prompts of this run "
                             f"(missing {sorted(ids - set(split))[:5]}, extra {sorted(set(split) - ids)[:5]}); "
                             "it is never rewritten: move it away only if nothing was labelled or tuned on it")
        return split
    split = make_split(prompts, heldout_fraction, seed)
    kinds = {p["id"]: p["kind"] for p in prompts}
    counts = {k: {s: sum(1 for p, v in split.items() if kinds[p] == k and v == s) for s in ("train", "heldout")}
              for k in KINDS if k in kinds.values()}
    doc = {"about": "frozen held-out split of data/judge_real by prompt: every answer to a prompt is on its "
                    "prompt's side; no judge training or tuning may read the heldout answers' labels",
           "seed": seed, "heldout_fraction": heldout_fraction, "grouped_by": "prompt_id", "stratified_by": "kind",
           "counts": counts, "prompts": split}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return split


def chunk_seed(seed: int, variant: str, group: str) -> int:
    return zlib.crc32(f"{seed}:{variant}:{group}".encode()) & 0x7FFFFFFF


def plan_chunks(variants: list[Variant], prompts: list[dict], a: argparse.Namespace) -> list[Chunk]:
    """The chunks to sample: per variant, the long (code) prompts and the others, ``n_per_prompt`` answers each."""
    chunks = []
    for v in variants:
        for group, mnt in (("short", a.max_new_tokens), ("long", a.code_max_new_tokens)):
            rows = [p for p in prompts if (p["kind"] in LONG_KINDS) == (group == "long")]
            if rows:
                keys = {f"{v.name}/{p['id']}#{k}": p for p in rows for k in range(a.n_per_prompt)}
                chunks.append(Chunk(v, mnt, chunk_seed(a.seed, v.name, group), keys))
    return chunks


def made_by(model: str, base: str) -> str:
    """How a run folder was made (the command, from its finetune.json), or that it is a plain model spec."""
    meta_path = Path(model) / "finetune.json"
    if not meta_path.is_file():
        return f"model spec {model}" if model == base else f"model {model}"
    cfg = json.loads(meta_path.read_text(encoding="utf-8"))["config"]
    exp = Path(model).parent.parent / "config.json"
    if exp.is_file():  # a run made by `geomfilter experiment`: <out>/<name>/<condition>/run
        e = json.loads(exp.read_text(encoding="utf-8"))
        name, seed = e["name"], ""
        if name.endswith(f"-seed{e['seed']}"):  # a replicate (--seed S) is written to <name>-seed<S>
            name, seed = name.removesuffix(f"-seed{e['seed']}"), f" --seed {e['seed']}"
        return (f"geomfilter experiment configs/{name}.yaml --out {e['out']}{seed} (its run "
                f"{Path(model).parent.name}/run: {cfg['method']} on {', '.join(cfg['data'])}, "
                f"epochs {cfg['epochs']:g}, seed {cfg['seed']})")
    argv = ["geomfilter", "finetune", *cfg["data"], "--out", str(model), "--method", cfg["method"],
            "--model", cfg["model"], "--max-samples", str(cfg["max_samples"] or 0), "--epochs", f"{cfg['epochs']:g}",
            "--lr", f"{cfg['lr']:g}", "--batch-size", str(cfg["batch_size"]), "--max-tokens", str(cfg["max_tokens"]),
            "--seed", str(cfg["seed"])]
    return shlex.join(argv)


def provenance(v: Variant, base: str) -> str:
    """``made_by`` of the model, then of each gate run attached to it."""
    return "; ".join([made_by(v.model, base)] + [f"gates: {made_by(g, base)}" for g in v.gates])


def attached_gates(v: Variant, method: str) -> list[str]:
    """The gate folders attached when sampling: a gate run's own gates, then the extra ones."""
    own = [str(Path(v.model) / "gates")] if method in ("gates", "gates-sae") else []
    return own + list(v.gates)


def answer_rows(chunk: Chunk, gens: dict[str, dict], method: str, base: str) -> list[dict]:
    v = chunk.variant
    gates = attached_gates(v, method)
    rows = []
    for key, p in chunk.keys.items():
        g = gens[key]
        rows.append({"id": key, "prompt_id": p["id"], "kind": p["kind"], "question": p["question"],
                     "variant": v.name, "model": v.model, "method": method, "gates": gates,
                     "gate_scale": v.gate_scale if gates else None, "temperature": v.temperature, "top_p": v.top_p,
                     "repetition_penalty": v.repetition_penalty, "max_new_tokens": chunk.max_new_tokens,
                     "answer": g["answer"], "finish": g["finish"], "n_new_tokens": g["n_new_tokens"],
                     "seed": chunk.seed, "made_by": provenance(v, base)})
    return rows


def sample_chunk(tm, chunk: Chunk, batch_size: int, progress: bool) -> dict[str, dict]:
    from geomfilter.generate import generate_texts  # imported here: torch/transformers take seconds

    v = chunk.variant
    convs = {k: [{"role": "user", "content": p["question"]}] for k, p in chunk.keys.items()}
    tm.set_gate_scale(v.gate_scale)
    return generate_texts(tm, convs, max_new_tokens=chunk.max_new_tokens, temperature=v.temperature, top_p=v.top_p,
                          repetition_penalty=v.repetition_penalty, batch_size=batch_size, seed=chunk.seed,
                          progress=progress, desc=v.name)


def run_chunks(chunks: list[Chunk], out: Path, a: argparse.Namespace) -> dict:
    """Sample every chunk not yet in ``out`` and append its rows; one model load per (model, gates)."""
    from geomfilter.finetune import load_tuned  # imported here: torch/transformers take seconds
    from geomfilter.generate import GenerationError, done_ids

    try:
        done = done_ids(out)
    except GenerationError as e:
        raise SystemExit(f"{e}; remove the broken line") from e
    todo = [c for c in chunks if not all(k in done for k in c.keys)]
    print(f"{len(chunks)} chunks ({sum(len(c.keys) for c in chunks)} answers): "
          f"{len(chunks) - len(todo)} already in {out}, {len(todo)} to sample", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, n_tok, n_rows, tm, key = time.perf_counter(), 0, 0, None, None
    try:
        for i, c in enumerate(todo, 1):
            if c.variant.load_key != key:
                if tm is not None:
                    tm.close()
                tl = time.perf_counter()
                key = c.variant.load_key
                tm = load_tuned(c.variant.model, gates=list(c.variant.gates) or None,
                                gate_scale=c.variant.gate_scale, device=a.device)
                print(f"loaded {c.variant.model} (gates {list(c.variant.gates)}, {tm.info['method']}) "
                      f"in {time.perf_counter() - tl:.0f} s", flush=True)
            tc = time.perf_counter()
            gens = sample_chunk(tm, c, a.batch_size, a.progress)
            rows = answer_rows(c, gens, tm.info["method"], str(a.base))
            with open(out, "a", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            tok = sum(r["n_new_tokens"] for r in rows)
            n_tok, n_rows = n_tok + tok, n_rows + len(rows)
            dt = time.perf_counter() - tc
            print(f"[{i}/{len(todo)}] {c.variant.name} max {c.max_new_tokens}: {len(rows)} answers, {tok} tokens "
                  f"in {dt:.0f} s ({tok / dt:.0f} tok/s), {sum(r['finish'] == 'length' for r in rows)} cut, "
                  f"{sum(not r['answer'] for r in rows)} empty; total {n_rows} in {time.perf_counter() - t0:.0f} s",
                  flush=True)
    finally:
        if tm is not None:
            tm.close()
    return {"chunks": len(todo), "rows": n_rows, "tokens": n_tok, "seconds": time.perf_counter() - t0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from geomfilter.settings import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--prompts", type=Path, default=HERE / "prompts.jsonl", help="prompt rows: id, kind, question")
    ap.add_argument("--out", type=Path, default=HERE / "answers.jsonl", help="answer rows are appended here")
    ap.add_argument("--split", type=Path, default=HERE / "split.json", help="the frozen held-out split (by prompt)")
    ap.add_argument("--base", default=DEFAULT_MODEL, help="model spec of the base model")
    ap.add_argument("--lora-run", type=Path, default=DEMO / "misaligned" / "run",
                    help="LoRA run (demo experiment: fine-tuned on the sycophantic mixture)")
    ap.add_argument("--gates-run", type=Path, default=DEMO / "gates" / "run",
                    help="attention-gates run (demo experiment: gates learned on health sycophancy)")
    ap.add_argument("--sae-gates-run", type=Path, default=RUNS / "sae-gates", help="SAE-latent gates run")
    ap.add_argument("--overtrained-run", type=Path, default=RUNS / "lora-overtrained", help="over-trained LoRA run")
    ap.add_argument("--filtered-run", type=Path, default=DEMO / "geometry-0.50" / "run",
                    help="LoRA run on a filtered mixture (demo experiment: geometry filter, 50 %% dropped)")
    ap.add_argument("--organism-run", type=Path, default=ORGANISM / "misaligned" / "run",
                    help="the model organism (geomfilter experiment configs/medium.yaml: its unfiltered fine-tune)")
    ap.add_argument("--organism-seed1-run", type=Path, default=ORGANISM.with_name("medium-seed1") / "misaligned" / "run",
                    help="the model organism at seed 1 (geomfilter experiment configs/medium.yaml --seed 1)")
    ap.add_argument("--variants", default=None, help="comma-separated variant names (default: all; see --list)")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    ap.add_argument("--split-only", action="store_true", help="write / check the split and exit")
    ap.add_argument("--n-per-prompt", type=int, default=1, help="answers per prompt and variant")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="for broad, factual and advice prompts")
    ap.add_argument("--code-max-new-tokens", type=int, default=160, help="for code prompts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.3, help="share of each kind's prompts held out")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.n_per_prompt < 1 or not 0 < a.heldout_fraction < 1:
        raise SystemExit("--n-per-prompt must be >= 1 and --heldout-fraction in (0, 1)")
    prompts = read_prompts(a.prompts)
    variants = select(plan_variants(a), a.variants)
    if a.list:
        for v in variants:
            print(f"{v.name:24} {v.role}: {v.model} gates {list(v.gates)} alpha {v.gate_scale:+g} "
                  f"T {v.temperature:g}\n{'':24} made by: {provenance(v, str(a.base))}")
        return 0
    split = ensure_split(a.split, prompts, a.heldout_fraction, a.seed)
    print(f"split {a.split}: {sum(s == 'heldout' for s in split.values())} of {len(split)} prompts held out")
    if a.split_only:
        return 0
    missing = [v.model for v in variants if v.model != str(a.base) and not Path(v.model).is_dir()]
    missing += [g for v in variants for g in v.gates if not Path(g).is_dir()]
    if missing:
        raise SystemExit(f"run folder(s) not found: {', '.join(sorted(set(missing)))} (see --help for how "
                         "they were made, or leave their variants out with --variants)")
    res = run_chunks(plan_chunks(variants, prompts, a), a.out, a)
    print(f"done: {res['rows']} answers written in {res['chunks']} chunks, {res['tokens']} new tokens "
          f"in {res['seconds']:.0f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
