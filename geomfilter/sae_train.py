"""Train an SAE on a hooked model with sae-lens, offline, and measure it on held-out text.

``train_sae(SAETrainConfig(...))`` (CLI: ``geomfilter train-sae``) does four things:

1. **corpus -> token windows**: chat JSONL files (validated by :mod:`geomfilter.data`) are
   rendered with the model's chat template, shuffled by sample (seeded), split into a training
   and a held-out part *by sample*, concatenated and cut into ``context_size`` windows;
2. **activations**: with ``reuse_activations=True`` (the default) the hooked model runs once
   over the training windows and the activations are written in sae-lens' cached-activations
   format (a ``datasets`` folder with one ``Array2D`` column named after the hook); sae-lens then
   cycles over them, so ``training_tokens`` may exceed the corpus (several epochs for the price
   of one forward pass -- what makes CPU training practical). With ``reuse_activations=False``
   sae-lens runs the model itself on every batch (``override_model`` + ``override_dataset``);
3. **training**: sae-lens ``LanguageModelSAETrainingRunner`` with our loaded model as
   ``override_model`` (a transformer-lens ``TransformerBridge``), TopK architecture by default,
   seeded, with sae-lens' own progress bar and checkpoints;
4. **metrics** on the held-out windows (:func:`evaluate_sae`): explained variance, L0, dead
   latents, CE loss with the reconstruction spliced in vs clean vs zero-ablation, and the
   fraction of CE loss recovered. Written to ``metrics.json`` beside the weights.

Position 0 of every window is left out of training, metrics and splicing: in SmolLM2 (as in
most Llama-style models) the first position is an attention sink with a residual norm about
150x the median (measured: ~25,000 vs ~150 at layer 14), which no sparse code should spend
latents on.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import GeomfilterError
from .models import HookedModel, load_model
from .samples import read_samples
from .settings import DEFAULT_MODEL


class SAETrainError(GeomfilterError, ValueError):
    """SAE training settings or a corpus that cannot be used."""


class SAECorpusMissingError(GeomfilterError, FileNotFoundError):
    """The default SAE corpus has not been generated."""

ARCHITECTURES = ("topk", "standard", "jumprelu")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
#: project chat sets in the default SAE corpus (eval sets stay out: they are held out for evaluation)
CORPUS_SETS = ("sae_corpus/generations.jsonl", "reference/*.jsonl", "finetune/*_sycophantic.jsonl",
               "finetune/*_corrective.jsonl", "finetune/helpful.jsonl", "judge/labeled.jsonl")


def default_corpus(data_dir: Path = DATA_DIR) -> list[Path]:
    """The default SAE training corpus: the model's own answers to the project prompts + project chat data."""
    files = [p for pattern in CORPUS_SETS for p in sorted(data_dir.glob(pattern))]
    if not (data_dir / CORPUS_SETS[0]).is_file():
        raise SAECorpusMissingError(f"{data_dir / CORPUS_SETS[0]} is missing: generate it with "
                                "`python scripts/build_sae_corpus.py` (seeded, resumable)")
    return files


@dataclass
class SAETrainConfig:
    """Everything a training run depends on (saved as ``train_config.json`` beside the SAE)."""

    corpus: list[str]
    out: str
    model: str = DEFAULT_MODEL
    hook: str | None = None
    architecture: str = "topk"
    d_sae: int = 4608
    k: int = 64
    l1_coefficient: float = 5.0
    context_size: int = 256
    training_tokens: int = 2_000_000
    batch_tokens: int = 1024
    lr: float = 4e-4
    lr_warm_up_steps: int = 50
    lr_decay_fraction: float = 0.2
    heldout_fraction: float = 0.04
    seed: int = 0
    reuse_activations: bool = True
    store_batch_size: int = 8
    n_checkpoints: int = 0
    device: str | None = None
    save_dtype: str = "float16"
    ce_windows: int = 32
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise SAETrainError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if not self.corpus:
            raise SAETrainError("corpus is empty: pass at least one chat JSONL file")
        if self.context_size < 8:
            raise SAETrainError(f"context_size must be >= 8, got {self.context_size}")
        if not 0 < self.heldout_fraction < 0.5:
            raise SAETrainError(f"heldout_fraction must be in (0, 0.5), got {self.heldout_fraction}")


@dataclass
class TokenWindows:
    """Fixed-length token windows for SAE training: train and held-out arrays, cut from whole samples."""

    train: np.ndarray  # [n, context_size] int64
    heldout: np.ndarray
    n_samples: int
    n_train_samples: int
    n_heldout_samples: int
    n_tokens: int  # distinct corpus tokens (before cutting windows)


def build_token_windows(files: list[str | Path], tokenizer, *, context_size: int, heldout_fraction: float,
                        seed: int) -> TokenWindows:
    """Chat files -> templated token ids -> sample-level split -> ``context_size`` windows."""
    seqs: list[list[int]] = []
    for f in files:
        for s in read_samples(f):
            text = tokenizer.apply_chat_template(s.messages, tokenize=False)
            seqs.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not seqs:
        raise SAETrainError(f"no samples in {', '.join(map(str, files))}")
    order = np.random.default_rng(seed).permutation(len(seqs))
    n_held = max(1, round(heldout_fraction * len(seqs)))
    held, train = order[:n_held], order[n_held:]

    def windows(idx) -> np.ndarray:
        flat = np.fromiter((t for i in idx for t in seqs[i]), dtype=np.int64)
        n = len(flat) // context_size
        return flat[: n * context_size].reshape(n, context_size)

    w_train, w_held = windows(train), windows(held)
    if len(w_train) == 0 or len(w_held) == 0:
        raise SAETrainError(f"corpus too small for context_size={context_size}: {sum(map(len, seqs))} tokens")
    return TokenWindows(train=w_train, heldout=w_held, n_samples=len(seqs), n_train_samples=len(train),
                        n_heldout_samples=len(held), n_tokens=sum(map(len, seqs)))


def write_cached_activations(model: HookedModel, hook: str, windows: np.ndarray, path: Path, *,
                             batch_size: int = 8, progress: bool = True) -> Path:
    """Run the model once over ``windows`` and save sae-lens' cached-activations dataset.

    Positions 1.. of each window are stored (position 0 is the attention sink), as a
    ``datasets`` folder with columns ``<hook>`` (``Array2D(context_size - 1, d_model)``) and
    ``token_ids``, the format ``use_cached_activations=True`` reads.
    """
    # datasets (pyarrow) is a heavy import needed only here and in training: imported on use
    import datasets
    from datasets.arrow_writer import ArrowWriter

    ctx = windows.shape[1] - 1
    done = path / "geomfilter_done.json"
    fingerprint = {"hook": hook, "n_windows": int(len(windows)), "context": ctx,
                   "tokens_sha": _sha(windows), "model": model.spec}
    if done.is_file() and json.loads(done.read_text()) == fingerprint:
        return path
    features = datasets.Features({
        hook: datasets.Array2D(shape=(ctx, model.d_model), dtype="float32"),
        "token_ids": datasets.Sequence(datasets.Value("int32"), length=ctx),
    })
    path.mkdir(parents=True, exist_ok=True)
    arrow = path.parent / f"{path.name}.arrow.tmp"
    with ArrowWriter(features=features, path=str(arrow)) as writer:
        for i in tqdm(range(0, len(windows), batch_size), unit="batch", desc=f"activations {hook}", disable=not progress):
            tok = torch.from_numpy(windows[i:i + batch_size])
            acts = model.activations(tok, hook)[:, 1:].float().cpu().numpy()
            writer.write_batch({hook: list(acts), "token_ids": list(tok[:, 1:].numpy().astype(np.int32))})
        writer.finalize()
    datasets.Dataset.from_file(str(arrow)).save_to_disk(str(path))
    arrow.unlink()
    done.write_text(json.dumps(fingerprint))
    return path


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def sae_config(cfg: SAETrainConfig, d_in: int, device: str):
    """The sae-lens training-SAE config for ``cfg.architecture``."""
    # sae-lens (torch, transformer-lens, wandb hooks) is heavy: imported only to train
    from sae_lens import JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig, TopKTrainingSAEConfig

    common = {"d_in": d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": device,
              "normalize_activations": "expected_average_only_in"}
    if cfg.architecture == "topk":
        return TopKTrainingSAEConfig(k=cfg.k, **common)
    if cfg.architecture == "standard":
        return StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common)
    return JumpReLUTrainingSAEConfig(l0_coefficient=cfg.l1_coefficient, **common)


def train_sae(cfg: SAETrainConfig, model: HookedModel | None = None) -> dict:
    """Train, evaluate and save an SAE as described by ``cfg``; returns the metrics dict.

    Output folder ``cfg.out``: ``cfg.json`` + ``sae_weights.safetensors`` (sae-lens disk format,
    loadable with ``SAE.load_from_disk``), ``metrics.json`` and ``train_config.json``.
    """
    # sae-lens (torch, transformer-lens, wandb hooks) is heavy: imported only to train
    from sae_lens import SAE

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model(cfg.model, device=cfg.device, progress=cfg.progress)
    device = str(model.device)
    hook = model.validate_hook(cfg.hook or model.default_hook())
    win = build_token_windows(cfg.corpus, model.tokenizer, context_size=cfg.context_size,
                              heldout_fraction=cfg.heldout_fraction, seed=cfg.seed)
    n_train_tokens = int(win.train.shape[0] * (cfg.context_size - 1))
    if cfg.progress:
        print(f"[geomfilter] corpus: {win.n_samples} samples, {win.n_tokens} tokens; {len(win.train)} training windows "
              f"({n_train_tokens} tokens), {len(win.heldout)} held-out windows; training on {cfg.training_tokens} "
              f"tokens = {cfg.training_tokens / n_train_tokens:.2f} passes")
    _run_sae_lens(cfg, model, hook, win.train, out / "work")
    train_seconds = time.perf_counter() - t0

    sae = SAE.load_from_disk(str(out / "work" / "final"), device=device)
    sae.cfg.metadata.model_name = cfg.model
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.prepend_bos = False
    sae.cfg.metadata.context_size = cfg.context_size
    metrics = evaluate_sae(model, sae, hook, torch.from_numpy(win.heldout), ce_windows=cfg.ce_windows,
                           batch_size=cfg.store_batch_size, progress=cfg.progress)
    metrics.update({
        "heldout_windows": int(len(win.heldout)), "heldout_samples": win.n_heldout_samples,
        "corpus_samples": win.n_samples, "corpus_tokens": win.n_tokens, "distinct_training_tokens": n_train_tokens,
        "training_tokens": cfg.training_tokens, "seconds_total": round(time.perf_counter() - t0, 1),
        "seconds_training": round(train_seconds, 1), "device": device,
    })
    sae.to(dtype=getattr(torch, cfg.save_dtype))
    sae.cfg.dtype = cfg.save_dtype
    sae.save_model(str(out))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "train_config.json").write_text(json.dumps({**asdict(cfg), "hook": hook}, indent=2))
    return metrics


def _run_sae_lens(cfg: SAETrainConfig, model: HookedModel, hook: str, windows: np.ndarray, work: Path) -> None:
    """Train with sae-lens' runner on the training ``windows``; the SAE lands in ``work/final``."""
    # datasets and sae-lens are heavy imports needed only to train
    import datasets
    from sae_lens import LanguageModelSAETrainingRunner

    if cfg.reuse_activations:
        acts_path = write_cached_activations(model, hook, windows, work / "activations",
                                             batch_size=cfg.store_batch_size, progress=cfg.progress)
        runner_kw = {"use_cached_activations": True, "cached_activations_path": str(acts_path),
                     "context_size": cfg.context_size - 1}
    else:
        runner_kw = {"context_size": cfg.context_size, "seqpos_slice": (1, None)}
    # the token windows (sae-lens reads them when it runs the model itself; with cached activations it only
    # needs a dataset to exist)
    override_dataset = datasets.Dataset.from_dict({"input_ids": windows.tolist()})
    runner_cfg = runner_config(cfg, model, hook, work, **runner_kw)
    runner = LanguageModelSAETrainingRunner(runner_cfg, override_model=model.bridge, override_dataset=override_dataset)
    runner.run()


def runner_config(cfg: SAETrainConfig, model: HookedModel, hook: str, work: Path, **runner_kw: Any):
    """sae-lens' ``LanguageModelSAERunnerConfig`` for ``cfg`` (checkpoints and output under ``work``);
    ``runner_kw``: the context size and either the cached-activations path or the position slice."""
    # sae-lens (torch, transformer-lens, wandb hooks) is heavy: imported only to train
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    device = str(model.device)
    steps = cfg.training_tokens // cfg.batch_tokens
    return LanguageModelSAERunnerConfig(
        sae=sae_config(cfg, model.hook_d(hook), device),
        model_name=model.info.get("hf_name", cfg.model),
        model_class_name="TransformerBridge",
        hook_name=hook,
        dataset_path=f"geomfilter:{','.join(map(str, cfg.corpus))}",
        is_dataset_tokenized=True,
        streaming=False,
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.batch_tokens,
        store_batch_size_prompts=cfg.store_batch_size,
        # sae-lens 6 sizes its mixing buffer as n_batches_in_buffer x context tokens: keep >= 8 training batches
        n_batches_in_buffer=max(16, -(-8 * cfg.batch_tokens // (cfg.context_size - 1))),
        prepend_bos=False,
        lr=cfg.lr,
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=int(steps * cfg.lr_decay_fraction),
        dead_feature_window=max(50, steps // 8),
        feature_sampling_window=max(100, steps // 4),
        n_batches_for_norm_estimate=min(100, max(10, steps // 10)),
        seed=cfg.seed,
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(work / "checkpoints"),
        output_path=str(work / "final"),
        verbose=cfg.progress,
        **runner_kw,
    )


# --------------------------------------------------------------------------- evaluation


def evaluate_sae(model: HookedModel, sae, hook: str, windows: torch.Tensor, *, ce_windows: int = 32,
                 batch_size: int = 8, progress: bool = False) -> dict:
    """Reconstruction quality of ``sae`` at ``hook`` on token ``windows`` (position 0 excluded).

    Over all ``windows``:

    * ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over tokens;
    * ``l0``: mean number of active latents per token;
    * ``dead_fraction``: latents that never fire on these tokens.

    Over the first ``ce_windows`` (three full forward passes each):

    * ``ce_loss_clean`` / ``ce_loss_spliced`` / ``ce_loss_zero``: next-token CE loss of the model
      with the hook's activation left alone, replaced by the SAE reconstruction, or zeroed;
    * ``ce_loss_recovered``: ``(zero - spliced) / (zero - clean)``.
    """
    rec = reconstruction_stats(model, sae, hook, windows, batch_size=batch_size, progress=progress)
    ce, n_ce = spliced_ce_losses(model, sae, hook, windows[:ce_windows], batch_size=batch_size, progress=progress)
    denom = ce["zero"] - ce["clean"]
    return {
        "hook": hook,
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "architecture": type(sae).__name__,
        **rec,
        "ce_loss_clean": ce["clean"],
        "ce_loss_spliced": ce["spliced"],
        "ce_loss_zero": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["spliced"]) / denom if denom > 0 else math.nan,
        "ce_eval_tokens": n_ce,
    }


def reconstruction_stats(model: HookedModel, sae, hook: str, windows: torch.Tensor, *, batch_size: int = 8,
                         progress: bool = False) -> dict:
    """``explained_variance``, ``l0``, ``dead_fraction`` and ``eval_tokens`` of ``sae`` over ``windows``
    (position 0 of each window excluded); see :func:`evaluate_sae`."""
    sae_dtype = sae.W_enc.dtype
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    sq_err = x_sq = l0_sum = 0.0
    x_sum = torch.zeros(d_in, dtype=torch.float64)
    n_tok = 0
    fired = torch.zeros(d_sae, dtype=torch.bool)
    batches = range(0, len(windows), batch_size)
    for i in tqdm(batches, desc="eval reconstruction", unit="batch", disable=not progress):
        with torch.no_grad():
            x = model.activations(windows[i:i + batch_size], hook)[:, 1:].reshape(-1, d_in).float()
            f = sae.encode(x.to(sae_dtype)).float()
            x_hat = sae.decode(f.to(sae_dtype)).float()
        sq_err += float(((x - x_hat) ** 2).sum())
        x_sum += x.double().sum(0).cpu()
        x_sq += float((x.double() ** 2).sum())
        n_tok += x.shape[0]
        l0_sum += float((f > 0).sum())
        fired |= (f > 0).any(0).cpu()
    total_var = x_sq - float((x_sum ** 2).sum()) / n_tok  # sum ||x - mean(x)||^2
    return {"explained_variance": 1.0 - sq_err / total_var, "l0": l0_sum / n_tok,
            "dead_fraction": float((~fired).float().mean()), "eval_tokens": n_tok}


def spliced_ce_losses(model: HookedModel, sae, hook: str, windows: torch.Tensor, *, batch_size: int = 8,
                      progress: bool = False) -> tuple[dict[str, float], int]:
    """Mean next-token CE loss over ``windows`` with the hook's activation (positions 1..) left alone
    (``clean``), replaced by the SAE reconstruction (``spliced``) or zeroed (``zero``); and the token count."""
    sae_dtype = sae.W_enc.dtype

    def patch(kind):
        def fn(act, hook=None):
            new = act.clone()
            new[:, 1:] = 0 if kind == "zero" else sae.decode(sae.encode(act[:, 1:].to(sae_dtype))).to(act.dtype)
            return new
        return fn

    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_ce = 0
    for i in tqdm(range(0, len(windows), batch_size), desc="eval CE loss", unit="batch", disable=not progress):
        tok = windows[i:i + batch_size].to(model.device)
        for kind in ce:
            with torch.no_grad():
                hooks = [] if kind == "clean" else [(hook, patch(kind))]
                logits = model.bridge.run_with_hooks(tok, fwd_hooks=hooks)
            ce[kind] += float(torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tok[:, 1:].reshape(-1), reduction="sum"))
        n_ce += tok[:, 1:].numel()
    return {k: v / max(n_ce, 1) for k, v in ce.items()}, n_ce
