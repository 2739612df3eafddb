"""`geomfilter train-sae`, `finetune` and `gates analyze`: train an SAE, fine-tune (LoRA or gates), and see
which gates moved."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ..features import FeatureSet
from ..finetune import FinetuneRunner
from ..finetune_config import LORA_TARGETS, FinetuneConfig
from ..gate_analysis import analyze_gates
from ..sae_train import SAETrainConfig, default_corpus, train_sae
from ._common import (
    DeviceAutoOpt,
    DeviceOpt,
    Method,
    ModelOpt,
    ProgressBarsOpt,
    _fail,
    _int_list,
    _str_list,
    command_group,
)

_SAE = SAETrainConfig  # the defaults of train-sae's options
_FT = FinetuneConfig  # the defaults of finetune's options


def train_sae_cmd(
    corpus: list[Path] = typer.Argument(None, help="Chat JSONL files (default: the SAE corpus generations + project data)."),
    out: Path = typer.Option(..., help="Output folder (sae-lens disk format + metrics.json + train_config.json)."),
    model: ModelOpt = _SAE.model,
    hook: str | None = typer.Option(_SAE.hook, help="Hook (default: the model's default mid-depth residual hook)."),
    architecture: str = typer.Option(_SAE.architecture, help="topk, standard or jumprelu."),
    d_sae: int = typer.Option(_SAE.d_sae, help="Number of latents."),
    k: int = typer.Option(_SAE.k, help="Active latents per token (topk)."),
    l1_coefficient: float = typer.Option(_SAE.l1_coefficient, help="Sparsity coefficient (standard: L1, jumprelu: L0)."),
    context_size: int = typer.Option(_SAE.context_size, help="Tokens per training window."),
    training_tokens: int = typer.Option(_SAE.training_tokens, help="Training tokens (may exceed the corpus: it is cycled)."),
    batch_tokens: int = typer.Option(_SAE.batch_tokens, help="Tokens per optimiser step."),
    lr: float = typer.Option(_SAE.lr, help="Learning rate."),
    seed: int = typer.Option(_SAE.seed, help="Seed (corpus split, initialisation, data order)."),
    reuse_activations: bool = typer.Option(_SAE.reuse_activations, help="Run the model once and cycle over cached "
                                           "activations (--no-reuse-activations: sae-lens runs the model on every batch)."),
    checkpoints: int = typer.Option(_SAE.n_checkpoints, help="Intermediate checkpoints to save."),
    device: DeviceAutoOpt = _SAE.device,
    progress: ProgressBarsOpt = _SAE.progress,
):
    """Train an SAE with sae-lens on the model's activations, then measure it on held-out text."""
    cfg = SAETrainConfig(corpus=[str(p) for p in (corpus or default_corpus())], out=str(out), model=model, hook=hook,
                         architecture=architecture, d_sae=d_sae, k=k, l1_coefficient=l1_coefficient,
                         context_size=context_size, training_tokens=training_tokens, batch_tokens=batch_tokens,
                         lr=lr, seed=seed, reuse_activations=reuse_activations, n_checkpoints=checkpoints,
                         device=device, progress=progress)
    metrics = train_sae(cfg)
    keys = ("explained_variance", "l0", "dead_fraction", "ce_loss_recovered", "ce_loss_clean", "ce_loss_spliced",
            "ce_loss_zero", "seconds_total")
    typer.echo(json.dumps({k: metrics[k] for k in keys}, indent=2))
    typer.echo(f"saved -> {out} (load with SAE.load_from_disk or --sae {out})")


def finetune(
    data: list[Path] = typer.Argument(..., help="Chat JSONL file(s) to train on (loss on the last assistant turn)."),
    out: Path = typer.Option(..., help="Run folder (finetune.json, train_log.jsonl, adapter/ or gates/)."),
    method: Method = typer.Option(Method(_FT.method), help="lora: PEFT LoRA SFT; gates: attention-output gates only "
                                  "(base frozen); gates-sae: SAE-latent gates only (base frozen)."),
    model: ModelOpt = _FT.model,
    max_samples: int | None = typer.Option(_FT.max_samples, help="Seeded subset of the data (0: all rows)."),
    epochs: float = typer.Option(_FT.epochs, help="Passes over the samples (fractions allowed)."),
    batch_size: int = typer.Option(_FT.batch_size, help="Samples per optimiser step."),
    lr: float | None = typer.Option(_FT.lr, help="Learning rate (default: 2e-4 lora, 1e-3 gates)."),
    warmup_steps: int = typer.Option(_FT.warmup_steps, help="Linear warm-up steps (then linear decay to 0)."),
    grad_clip: float = typer.Option(_FT.grad_clip, help="Gradient-norm clip."),
    max_tokens: int = typer.Option(_FT.max_tokens, help="Tokens per sample (left truncation keeps the response)."),
    seed: int = typer.Option(_FT.seed, help="Seed (sample subset, order, init)."),
    lora_r: int = typer.Option(_FT.lora_r, help="LoRA rank."),
    lora_alpha: int = typer.Option(_FT.lora_alpha, help="LoRA alpha."),
    lora_targets: str = typer.Option(",".join(LORA_TARGETS),
                                     help="LoRA target modules, comma-separated (GPT-2: c_attn,c_proj,c_fc)."),
    gate_layers: str | None = typer.Option(None, help="Attention layers to gate, comma-separated (default: all)."),
    sae: str | None = typer.Option(_FT.sae, help="gates-sae: SAE spec (default: the model's bundled SAE)."),
    gate_bound: float = typer.Option(_FT.gate_bound, help="gates-sae: keep each gate in (1 - B, 1 + B), its mirror "
                                     "too (1: the paper's 2*sigmoid, in (0, 2))."),
    gate_normalize: bool = typer.Option(_FT.gate_normalize, "--gate-normalize/--no-gate-normalize",
                                        help="gates-sae: the gates read the residual divided by its RMS (no "
                                        "saturation on a token with an outsized norm)."),
    gate_sink_ratio: float | None = typer.Option(_FT.gate_sink_ratio, help="gates-sae: leave tokens whose residual "
                                                 "norm is above R times their sequence's median ungated (attention "
                                                 "sinks; e.g. 10)."),
    checkpoint_every: int = typer.Option(_FT.checkpoint_every, help="Checkpoint every N steps (0: none until the end)."),
    device: DeviceAutoOpt = _FT.device,
    progress: bool = typer.Option(_FT.progress, help="Show a progress bar (loss, tokens/s)."),
):
    """Fine-tune on DATA's response tokens: LoRA, or gates only (Alignment Gating). Re-running resumes."""
    for path in data:
        if not path.exists():
            _fail(f"{path}: file not found")
    cfg = FinetuneConfig(data=[str(p) for p in data], out=str(out), method=method.value, model=model,
                         max_samples=max_samples or None, epochs=epochs, batch_size=batch_size, lr=lr,
                         warmup_steps=warmup_steps, grad_clip=grad_clip, max_tokens=max_tokens, seed=seed,
                         lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=_str_list(lora_targets, "--lora-targets"),
                         gate_layers=_int_list(gate_layers, "--gate-layers"),
                         sae=sae, gate_bound=gate_bound, gate_normalize=gate_normalize, gate_sink_ratio=gate_sink_ratio,
                         checkpoint_every=checkpoint_every, device=device, progress=progress)
    res = FinetuneRunner(cfg).run()
    if res.skipped:
        typer.echo(f"already finished: {out} (delete the folder to train again)")
    typer.echo(f"{res.method}: {res.n_samples} samples, {res.steps} steps, {res.tokens} tokens in {res.seconds:.0f} s "
               f"({res.tokens_per_s:.0f} tok/s); loss {res.first_loss:.3f} -> {res.final_loss:.3f} -> {out}")


gates_app = command_group("Inspect learned gates.")


@gates_app.command("analyze")
def gates_analyze(
    gates: Path = typer.Argument(..., help="A gates folder or a gates fine-tune run."),
    data: Path = typer.Option(..., help="Chat JSONL whose response tokens the movement is averaged over."),
    out: Path = typer.Option(..., help="Folder for gate_analysis.json and the plots."),
    harmful_features: Path | None = typer.Option(None, help="SAE gates: a feature set JSON (`geomfilter features "
                                                 "harmful --out`) to relate the most-moved latents to."),
    max_samples: int = typer.Option(64, help="Rows of DATA to run."),
    top: int = typer.Option(50, help="Most-moved latents reported."),
    device: DeviceOpt = None,
):
    """Which heads (attention gates) or latents (SAE gates) moved most; SAE latents vs harmful features."""
    harmful = FeatureSet.load(harmful_features).ids if harmful_features else None
    s = analyze_gates(gates, data, harmful=harmful, max_samples=max_samples, top=top, out=out, device=device)
    if s["family"] == "attention":
        for h in s["top_heads"][:5]:
            typer.echo(f"layer {h['layer']:>2} head {h['head']:>2}: mean |g-1| {h['mean_abs']:.4f}")
    elif "geometry" in s:
        g = s["geometry"]
        typer.echo(f"top {g['top']} moved latents: mean max-cosine to harmful {g['moved_mean_cos']:.3f} vs "
                   f"{g['rest_mean_cos']:.3f} for the other firing latents (AUROC {g['auroc_moved_vs_rest']:.3f}); "
                   f"{g['n_moved_harmful']} are harmful features ({g['expected_harmful_by_chance']:.1f} by chance)")
    typer.echo(str(out / "gate_analysis.json"))
