"""`geomfilter respond` and `generate`: a model's own answers to a dataset's prompts, and answers to
prompts given on the command line."""
from __future__ import annotations

from pathlib import Path

import typer

from ..finetune import load_tuned
from ..generate import OWN_ANSWER, generate_answers, generate_texts, prompts_of_samples
from ..samples import read_samples
from ..settings import DEFAULT_MODEL
from ._common import DeviceOpt, ModelOpt, ProgressOpt


def respond(
    data: Path = typer.Argument(..., metavar="DATA", help="Chat JSONL or HF dataset directory."),
    out: Path = typer.Option(..., help="Output JSONL: each row's prompt with the model's own answer, same id."),
    model: ModelOpt = DEFAULT_MODEL,
    max_new_tokens: int = typer.Option(OWN_ANSWER["max_new_tokens"], help="Longest answer."),
    temperature: float = typer.Option(OWN_ANSWER["temperature"], help="0 = greedy (the model's most likely answer)."),
    top_p: float = typer.Option(OWN_ANSWER["top_p"], help="Nucleus sampling (temperature > 0)."),
    repetition_penalty: float = typer.Option(OWN_ANSWER["repetition_penalty"], help="Repetition penalty."),
    batch_size: int = typer.Option(OWN_ANSWER["batch_size"], help="Prompts per generate call."),
    seed: int = typer.Option(OWN_ANSWER["seed"], help="Seed (per batch: seed * 100003 + batch index)."),
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
):
    """Generate the model's own answer to every prompt of DATA (resumable); feed it to score/filter --own."""
    samples = read_samples(data)
    m = load_tuned(model, device=device, progress=progress)  # plain HF: generation, no hooks
    res = generate_answers(m, prompts_of_samples(samples), out, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
                           batch_size=batch_size, seed=seed, progress=progress)
    typer.echo(f"{res.n_prompts} prompts: {res.n_skipped} already answered, {res.n_written} written "
               f"({res.n_new_tokens} tokens, {res.n_new_tokens / max(res.seconds, 1e-9):.0f} tok/s), "
               f"{res.n_rejected} empty (-> {out.with_suffix('.rejects.jsonl')}) -> {out}")


def generate(
    model: str = typer.Argument(..., metavar="DIR", help="A `geomfilter finetune` run folder, or a model spec."),
    prompts: list[str] = typer.Argument(..., metavar="PROMPT...", help="User messages, one answer each."),
    gates: list[Path] = typer.Option(None, help="Gate folders / gate runs to attach as well (repeatable)."),
    gate_scale: float = typer.Option(1.0, help="g_a = 1 + a (g - 1): 1 learned gates (amplify), -1 the mirror "
                                     "2 - g (suppress), 0 off."),
    max_new_tokens: int = typer.Option(120, help="Tokens to generate per answer."),
    temperature: float = typer.Option(0.0, help="0: greedy; > 0: sampling."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, help="Sampling seed."),
    system: str | None = typer.Option(None, help="Optional system message."),
    device: DeviceOpt = None,
):
    """Answer PROMPTs with a fine-tuned model (and gates at --gate-scale)."""
    tm = load_tuned(model, gates=gates or None, gate_scale=gate_scale, device=device)
    sys_turn = [{"role": "system", "content": system}] if system else []
    convs = {f"{i:06d}": sys_turn + [{"role": "user", "content": p}] for i, p in enumerate(prompts)}
    out = generate_texts(tm, convs, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                         batch_size=8, progress=False)
    for key, prompt in zip(convs, prompts):
        typer.echo(f"### {prompt}\n{out[key]['answer']}\n")
