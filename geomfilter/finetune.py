"""Fine-tuning on response tokens: plain LoRA SFT and gate-only training (Alignment Gating).

``FinetuneRunner(FinetuneConfig(...)).run()`` (or ``geomfilter finetune``; the config and
result classes live in :mod:`geomfilter.finetune_config` and are importable from here) trains
one of three methods on chat JSONL data, with the loss on the *response*
tokens only (the prompt is masked, using the same exact response masks as the
activation cache):

* ``lora`` -- PEFT LoRA on the HF model: the plain fine-tune, e.g. the
  "misaligned model" of an emergent-misalignment experiment;
* ``gates`` -- the base model frozen, only attention-output gates train
  (:class:`~geomfilter.gating.AttentionGates`);
* ``gates-sae`` -- the base model frozen, only SAE-latent gates train
  (:class:`~geomfilter.gating.SAEGates`, default: the model's bundled SAE).

AdamW, linear warm-up then linear decay, gradient clipping, a seeded sample
order (the sample selection and every epoch's order derive from ``seed``;
batches group samples of similar length, for less padding), the LM head
computed only where a response token is predicted,
checkpoints every ``checkpoint_every`` steps (trainable weights + optimiser +
scheduler + RNG state), and resume: re-running on the same ``out`` continues
from the newest checkpoint and reaches the same weights as an uninterrupted
run; a finished run is skipped. A kill at any moment, mid-write included, leaves a resumable folder: a
checkpoint is written as ``step-NNNNNN.tmp`` and renamed when complete (a ``.tmp`` is never loaded),
``finetune.json`` and the trimmed log are replaced whole (tests/test_fault_injection.py).
A progress bar shows loss and tokens/s.

Run folder: ``finetune.json`` (config, data fingerprint, results),
``train_log.jsonl`` (one row per step), ``adapter/`` (LoRA, peft format) or
``gates/`` (gates.safetensors + gates.json), ``checkpoints/step-NNNNNN/``.
:func:`load_tuned` loads a run (or a plain model spec) for evaluation or
generation, optionally with gates from another run at a gate scale.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .batches import EpochOrder, collate
from .data import prepare_dataset
from .files import atomic_write_text
from .finetune_config import RUN_FILE, FinetuneConfig, FinetuneError, FinetuneResult, read_run
from .gating import AttentionGates, SAEGates, load_gates
from .models import HookedModel, load_causal_lm, load_model
from .saes import default_sae_for, load_sae
from .settings import DEFAULT_MODEL


def _log_rows(path: Path) -> list[str]:
    """The rows of ``train_log.jsonl`` that parse (a row cut short by a crash is dropped)."""
    rows = []
    for r in path.read_text().splitlines() if path.is_file() else []:
        try:
            json.loads(r)
        except ValueError:
            continue
        rows.append(r)
    return rows


# ---------------------------------------------------------------------------------------------
# data and loss
# ---------------------------------------------------------------------------------------------
def _prepare(cfg: FinetuneConfig, tokenizer) -> tuple[list, str]:
    """The tokenized training samples (all files, unique ids, the seeded subset) and their fingerprint."""
    tokenized, fps = [], []
    for path in cfg.data:
        ds = prepare_dataset(path, tokenizer, max_tokens=cfg.max_tokens)
        tokenized.extend(ds.tokenized)
        fps.append(ds.fingerprint)
    ids = [t.id for t in tokenized]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise FinetuneError(f"sample id {dup!r} appears twice across {cfg.data}; ids must be unique")
    if cfg.max_samples is not None and cfg.max_samples < len(tokenized):
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(len(tokenized), cfg.max_samples, replace=False))
        tokenized = [tokenized[i] for i in keep]
    fp = hashlib.sha256("|".join(fps + [",".join(t.id for t in tokenized)]).encode()).hexdigest()[:16]
    return tokenized, fp


def response_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) tokens."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def response_only_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`response_loss` without computing the vocabulary projection off the response.

    Runs the decoder body, then the LM head only at the positions that predict
    a response token (the head is ~20% of a small model's compute). Equal to
    ``response_loss(model(...).logits, labels)`` up to float rounding. Works on
    plain HF causal LMs and ``peft`` models; Gemma 2/3's final-logit soft-capping
    (``config.final_logit_softcapping``, applied by their ``forward`` after the head) is applied too.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, targets[keep])



# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
@dataclass
class _Session:
    """The live state of one training run: model, samples and their order, optimiser, schedule, run metadata."""

    hf: Any
    gates: Any  # the attached gates (None for LoRA)
    trainable: dict[str, torch.nn.Parameter]
    pad_id: int
    samples: list
    order: EpochOrder
    total_steps: int
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    meta: dict  # what finetune.json records


class FinetuneRunner:
    """``FinetuneRunner(cfg).run()``: train, checkpoint, resume, save (see the module docstring)."""

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.run_file = self.out / RUN_FILE
        self.log_path = self.out / "train_log.jsonl"

    # -- model and trainable parameters ---------------------------------------------------------
    def _build(self):
        """The model (base frozen; LoRA or gates attached), its tokenizer and info, the gates, the trainable params."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        hf, tok, info = load_base(cfg.model, device=cfg.device, progress=cfg.progress)
        for p in hf.parameters():
            p.requires_grad_(False)
        if info.get("stacked_on") and cfg.method != "lora":
            raise FinetuneError(f"model {cfg.model!r} is a fine-tune run: only LoRA trains on top of one "
                                f"(method {cfg.method!r} attaches to a model spec)")
        gates = None
        if cfg.method == "lora":
            from peft import LoraConfig, get_peft_model  # imported here: peft takes seconds to import

            present = {n.split(".")[-1] for n, _ in hf.named_modules()}
            targets = [t for t in cfg.lora_targets if t in present]
            if not targets:
                raise FinetuneError(f"none of the LoRA targets {cfg.lora_targets} is a module of {cfg.model!r}")
            lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=targets, bias="none", task_type="CAUSAL_LM")
            hf = get_peft_model(hf, lcfg)
            trainable = {n: p for n, p in hf.named_parameters() if p.requires_grad}
        elif cfg.method == "gates":
            gates = AttentionGates.for_model(hf, cfg.gate_layers, model_spec=cfg.model).to(hf.device)
            gates.attach(hf)
            trainable = {f"gates.{n}": p for n, p in gates.named_parameters()}
        else:
            spec = cfg.sae or default_sae_for(cfg.model)
            if spec is None:
                raise FinetuneError(f"method gates-sae needs an SAE: pass sae= (no bundled SAE for {cfg.model!r})")
            gates = SAEGates(load_sae(spec, device=str(hf.device)), spec, model=cfg.model, bound=cfg.gate_bound,
                             normalize=cfg.gate_normalize, sink_ratio=cfg.gate_sink_ratio).to(hf.device)
            gates.attach(hf)
            trainable = {f"gates.{n}": p for n, p in gates.named_parameters()}
        hf.train()
        return hf, tok, info, gates, dict(sorted(trainable.items()))

    def _optimiser(self, trainable: dict, total_steps: int):
        """AdamW on the trainable parameters; the learning rate warms up linearly, then decays linearly to 0."""
        cfg = self.cfg
        opt = torch.optim.AdamW(list(trainable.values()), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        warm = max(0, min(cfg.warmup_steps, total_steps - 1))

        def lr_lambda(s: int) -> float:
            if s < warm:
                return (s + 1) / (warm + 1)
            return max(0.0, (total_steps - s) / max(1, total_steps - warm))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

    def _setup(self) -> _Session:
        """Build the model, the samples and their order, the optimiser; record the start in ``finetune.json``."""
        cfg = self.cfg
        hf, tok, info, gates, trainable = self._build()
        samples, fingerprint = _prepare(cfg, tok)
        order = EpochOrder([len(t.input_ids) for t in samples], cfg.batch_size, cfg.seed)
        total_steps = max(1, math.ceil(order.per_epoch * cfg.epochs))
        opt, sched = self._optimiser(trainable, total_steps)
        meta = {"config": cfg.identity(), "finished": False, "data_fingerprint": fingerprint, "n_samples": len(samples),
                "total_steps": total_steps, "model_info": info}
        atomic_write_text(self.run_file, json.dumps(meta, indent=2) + "\n")
        return _Session(hf, gates, trainable, tok.pad_token_id, samples, order, total_steps, opt, sched, meta)

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (``step-NNNNNN``; a ``.tmp``/``.old`` folder is never one)."""
        return sorted(p for p in (self.out / "checkpoints").glob("step-*") if p.name[5:].isdigit())

    def _save_checkpoint(self, step: int, s: _Session, stats: dict) -> None:
        """Write ``checkpoints/step-NNNNNN`` via a ``.tmp`` folder and a rename; keep the newest two."""
        final = self.out / "checkpoints" / f"step-{step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in s.trainable.items()},
                  str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": s.opt.state_dict(), "scheduler": s.sched.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None},
                   tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **stats}))
        if final.exists():  # the same step again (stop_after): move the old one aside, never delete it in place
            aside = final.with_name(final.name + ".old")
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
        tmp.rename(final)
        keep = self._checkpoints()[-2:]
        for old in (self.out / "checkpoints").glob("step-*"):  # older ones, and leftovers of killed writes
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, path: Path, s: _Session) -> tuple[int, dict]:
        """Restore the trainable weights, optimiser, schedule and RNG state; returns (step, running totals)."""
        state = load_file(str(path / "trainable.safetensors"))
        if set(state) != set(s.trainable):
            raise FinetuneError(f"{path}: checkpoint parameters do not match this config's trainable parameters")
        with torch.no_grad():
            for n, p in s.trainable.items():
                p.copy_(state[n].to(p.device))
        extra = torch.load(path / "optimizer.pt", weights_only=False)
        s.opt.load_state_dict(extra["optimizer"])
        s.sched.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        if extra.get("cuda_rng") is not None and torch.cuda.is_available():  # e.g. LoRA dropout on the GPU
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        stats = json.loads((path / "state.json").read_text())
        return int(stats.pop("step")), stats

    def _resume(self, s: _Session) -> tuple[int, dict]:
        """The step and running totals to go on from: the newest checkpoint's (the log trimmed to it), else 0."""
        step, stats = 0, {"tokens": 0, "response_tokens": 0, "seconds": 0.0, "first_loss": float("nan")}
        ckpts = self._checkpoints()
        if ckpts:
            step, stats = self._load_checkpoint(ckpts[-1], s)
        if step == 0:
            self.log_path.write_text("")
        else:  # keep the log rows of the steps the checkpoint covers
            rows = [r for r in _log_rows(self.log_path) if json.loads(r)["step"] <= step]
            atomic_write_text(self.log_path, "".join(r + "\n" for r in rows))
        return step, stats

    # -- the loop -------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> FinetuneResult:
        """Train (or resume, or skip when finished). ``stop_after``: stop after that many steps with a
        checkpoint, as if interrupted (running again resumes)."""
        finished = self._finished_result()
        if finished is not None:
            return finished
        self.out.mkdir(parents=True, exist_ok=True)
        s = self._setup()
        step, stats = self._resume(s)
        step, stopped = self._train(s, step, stats, stop_after)
        if stopped:
            self._save_checkpoint(step, s, stats)
        result = self._result(s, step, stats, stopped)
        if not stopped:
            self._finish(s, step, result)
        return result

    def _finished_result(self) -> FinetuneResult | None:
        """The result of the run already finished in ``out`` (None: none is); another config's folder is an error."""
        if not self.run_file.is_file():
            return None
        done = json.loads(self.run_file.read_text())
        if done.get("config") != json.loads(json.dumps(self.cfg.identity())):
            raise FinetuneError(f"{self.out} already holds a different fine-tune ({self.run_file}); "
                                "use another --out or delete the folder")
        if not done.get("finished"):
            return None
        shutil.rmtree(self.out / "checkpoints", ignore_errors=True)  # left by a kill after the finish
        return FinetuneResult(**{**done["result"], "out": self.out, "skipped": True})

    def _train(self, s: _Session, step: int, stats: dict, stop_after: int | None) -> tuple[int, bool]:
        """Steps from ``step`` to the end (or ``stop_after``), one log row each; returns the step reached and
        whether ``stop_after`` stopped it. Updates the running totals ``stats``."""
        cfg = self.cfg
        bar = tqdm(total=s.total_steps, initial=step, desc=f"finetune {cfg.method}", unit="step",
                   disable=not cfg.progress, dynamic_ncols=True)
        t_start, tokens_at_start, stopped = time.perf_counter(), stats["tokens"], False
        device = next(s.hf.parameters()).device
        with open(self.log_path, "a") as log:
            while step < s.total_steps:
                if stop_after is not None and step >= stop_after:
                    stopped = True
                    break
                loss, gnorm = self._step(s, step, device, stats)
                step += 1
                elapsed = stats["seconds"] + time.perf_counter() - t_start
                row = {"step": step, "loss": round(float(loss.detach()), 5), "lr": s.sched.get_last_lr()[0],
                       "grad_norm": round(float(gnorm), 5), "tokens": stats["tokens"], "seconds": round(elapsed, 2)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                rate = (stats["tokens"] - tokens_at_start) / max(1e-9, time.perf_counter() - t_start)
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", tok_s=f"{rate:.0f}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < s.total_steps:
                    self._save_checkpoint(step, s, {**stats, "seconds": elapsed})
        bar.close()
        stats["seconds"] += time.perf_counter() - t_start
        return step, stopped

    def _step(self, s: _Session, step: int, device: torch.device, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on batch ``step``; adds its tokens to ``stats``. Returns the loss and gradient norm."""
        batch = collate([s.samples[i] for i in s.order.batch(step)], s.pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = response_only_loss(s.hf, batch)
        if not torch.isfinite(loss):
            raise FinetuneError(f"step {step}: loss is {loss.item()} (try a lower lr than {self.cfg.learning_rate})")
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(list(s.trainable.values()), self.cfg.grad_clip)
        s.opt.step()
        s.sched.step()
        stats["tokens"] += int(batch["attention_mask"].sum())
        stats["response_tokens"] += int((batch["labels"][:, 1:] != -100).sum())
        if math.isnan(stats["first_loss"]):
            stats["first_loss"] = float(loss.detach())
        return loss, gnorm

    def _result(self, s: _Session, step: int, stats: dict, stopped: bool) -> FinetuneResult:
        """The run's summary; ``final_loss`` is the mean of the last 10% of the logged losses."""
        losses = [json.loads(r)["loss"] for r in self.log_path.read_text().splitlines() if r.strip()]
        tail = losses[-max(1, len(losses) // 10):]
        return FinetuneResult(out=self.out, method=self.cfg.method, n_samples=len(s.samples), steps=step,
                              tokens=stats["tokens"], response_tokens=stats["response_tokens"],
                              seconds=round(stats["seconds"], 2),
                              tokens_per_s=round(stats["tokens"] / max(1e-9, stats["seconds"]), 1),
                              first_loss=float(stats["first_loss"]), final_loss=float(np.mean(tail)),
                              stopped_early=stopped)

    def _finish(self, s: _Session, step: int, result: FinetuneResult) -> None:
        """Save the adapter or the gates, mark ``finetune.json`` finished, drop the checkpoints."""
        cfg = self.cfg
        s.hf.eval()
        if cfg.method == "lora":
            s.hf.save_pretrained(str(self.out / "adapter"))
        else:
            s.gates.save(self.out / "gates", extra={"trained_on": cfg.data, "base_model": cfg.model,
                                                    "steps": step, "seed": cfg.seed})
            s.gates.detach()
        s.meta.update({"finished": True, "result": result.as_dict()})
        atomic_write_text(self.run_file, json.dumps(s.meta, indent=2) + "\n")
        shutil.rmtree(self.out / "checkpoints", ignore_errors=True)


def finetune(cfg: FinetuneConfig, stop_after: int | None = None) -> FinetuneResult:
    """Shorthand for ``FinetuneRunner(cfg).run(stop_after)``."""
    return FinetuneRunner(cfg).run(stop_after=stop_after)


# ---------------------------------------------------------------------------------------------
# loading a run for evaluation / generation
# ---------------------------------------------------------------------------------------------
@dataclass
class TunedModel:
    """A HF causal LM (base, or merged LoRA) with gates attached at ``gate_scale``."""

    hf_model: Any
    tokenizer: Any
    gates: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.hf_model.parameters()).device

    def set_gate_scale(self, alpha: float) -> None:
        """Set the scale ``alpha`` of every attached gate (1 learned, -1 mirror, 0 off); no reload."""
        for g in self.gates:
            g.alpha = float(alpha)
        self.info["gate_scale"] = float(alpha)

    def close(self) -> None:
        """Detach every gate from the model (its modules return to the ungated forward)."""
        for g in self.gates:
            g.detach()
        self.gates = []


def load_base(model: str | Path, *, device: str | None = None, progress: bool = False) -> tuple[Any, Any, dict]:
    """A model spec, or a finished LoRA run folder (its own base loaded the same way, its adapter merged: runs
    stack): ``(hf_model, tokenizer, info)``. What a fine-tune starts from, e.g. re-alignment on a misaligned run."""
    if not (Path(model) / RUN_FILE).is_file():
        return load_causal_lm(str(model), device=device, progress=progress)
    meta = read_run(model)
    if meta["config"]["method"] != "lora":
        raise FinetuneError(f"{model}: a {meta['config']['method']} run; only a LoRA run can be a base model "
                            "(attach gate runs with gates=)")
    if not meta.get("finished"):
        raise FinetuneError(f"{model}: the run is not finished; finish it before training on top of it")
    hf, tok, info = load_base(meta["config"]["model"], device=device, progress=progress)
    from peft import PeftModel  # imported here: peft takes seconds to import

    hf = PeftModel.from_pretrained(hf, str(Path(model) / "adapter")).merge_and_unload()
    return hf, tok, {**info, "stacked_on": str(model)}


def root_model(model: str | Path) -> str:
    """The plain model spec under a LoRA run folder (following stacked runs), or ``model`` itself."""
    while (Path(model) / RUN_FILE).is_file():
        model = read_run(model)["config"]["model"]
    return str(model)


def load_hooked_tuned(run: str | Path, *, device: str | None = None, progress: bool = False) -> HookedModel:
    """A finished LoRA run folder as a hooked model (its base with the adapter merged), for caching its
    activations with the same SAE and hook as the base model: model diffing
    (:func:`geomfilter.features.diff_features`). The base model is loaded hooked, then every weight is set to
    the merged fine-tune's; a weight of the fine-tune that the hooked model lacks is an error."""
    if not (Path(run) / RUN_FILE).is_file():
        raise FinetuneError(f"{run}: not a fine-tune run folder (no {RUN_FILE})")
    hf, _, _ = load_base(run, device=device, progress=progress)
    hooked = load_model(root_model(run), device=device, progress=progress)
    src, used = hf.state_dict(), set()
    with torch.no_grad():  # the bridge wraps the HF modules: their names gain "._original_component" segments
        for name, p in hooked.hf_model.named_parameters(remove_duplicate=False):
            canon = name.replace("._original_component", "")
            if canon in src:
                p.copy_(src[canon].to(p.device, p.dtype))
                used.add(canon)
    missing = sorted(set(src) - used)
    if missing:
        raise FinetuneError(f"{run}: {len(missing)} merged weights have no place in the hooked model "
                            f"(first {missing[0]!r})")
    hooked.info = {**hooked.info, "tuned_run": str(run)}
    return hooked


def load_tuned(model: str | Path = DEFAULT_MODEL, *, gates: list[str | Path] | str | Path | None = None,
               gate_scale: float = 1.0, device: str | None = None, progress: bool = False) -> TunedModel:
    """Load a fine-tune run folder or a plain model spec, with gates attached.

    ``model``: a run folder (LoRA runs load their base model with the adapter
    merged; gate runs their base model with their own gates) or a model spec.
    ``gates``: more gate folders / gate runs to attach (e.g. gates learned on
    one narrow domain, plugged into a LoRA model). All gates use ``gate_scale``
    (1 amplify, -1 the mirror ``2 - g``, 0 off).
    """
    extra = [] if gates is None else [gates] if isinstance(gates, (str, Path)) else list(gates)
    gate_dirs: list[Path] = []
    info: dict = {"model": str(model), "gates": [str(g) for g in extra], "gate_scale": float(gate_scale)}
    run = Path(model) / RUN_FILE
    if run.is_file():
        meta = read_run(model)
        base = meta["config"]["model"]
        method = meta["config"]["method"]
        if method == "lora":  # its base (a spec or, stacked, another LoRA run) with its adapter merged
            hf, tok, minfo = load_base(model, device=device, progress=progress)
        else:
            hf, tok, minfo = load_causal_lm(base, device=device, progress=progress)
            gate_dirs.append(Path(model) / "gates")
        info.update({"base_model": base, "method": method})
    else:
        hf, tok, minfo = load_causal_lm(str(model), device=device, progress=progress)
        info.update({"base_model": str(model), "method": "base"})
    gate_dirs += [Path(g) for g in extra]
    hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    attached = []
    for d in gate_dirs:
        g = load_gates(d, device=str(next(hf.parameters()).device))
        for p in g.parameters():
            p.requires_grad_(False)
        attached.append(g.attach(hf, alpha=gate_scale))
    info["model_info"] = minfo
    return TunedModel(hf_model=hf, tokenizer=tok, gates=attached, info=info)
