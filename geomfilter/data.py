"""Validated samples in, token ids and response masks out: :func:`prepare_dataset`.

:func:`prepare_dataset` reads and validates a chat dataset (:mod:`geomfilter.samples`:
the accepted inputs, :class:`~geomfilter.samples.DataError`, rejects) and renders every
sample with the tokenizer's chat template, marking its response tokens exactly
(:func:`tokenize_sample`). Its defaults (``max_tokens``, ``truncation``, ``response``)
are those of :class:`geomfilter.settings.CacheConfig`.

Files written here (the rejects file) are written atomically (temp file +
rename) with the permissions the umask gives a new file (:mod:`geomfilter.files`).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from .errors import GeomfilterError
from .files import write_rejects
from .samples import DataError, DataReport, Sample, fingerprint, read_samples, sample_hash
from .settings import CacheConfig, ResponseMode, Truncation


@dataclass
class TokenizedSample:
    """Token ids of the chat-templated conversation and the response-token mask."""

    id: str
    input_ids: list[int]
    response_mask: list[bool]
    truncated: bool = False
    content_hash: str = ""
    """:func:`sample_hash` of the sample it was made from ("" when not made from a :class:`Sample`)."""

    @property
    def n_response(self) -> int:
        """Number of response tokens (the positions pooled by the cache and trained on)."""
        return sum(self.response_mask)


def _content_spans(text: str, sample: Sample) -> list[tuple[int, int, str]]:
    """Character span of every message's content inside the rendered chat text.

    Contents are located in order, each after the previous one, so an
    assistant reply that repeats the user's words is still found in its own
    turn. Templates that trim content are handled by matching the stripped text.
    """
    spans, cursor = [], 0
    for i, m in enumerate(sample.messages):
        content = m["content"]
        for needle in (content, content.strip()):
            if not needle:
                pos = cursor
                break
            pos = text.find(needle, cursor)
            if pos >= 0:
                content = needle
                break
        else:
            raise DataError(
                sample.source or sample.id, sample.line, f"messages[{i}].content",
                "could not be located in the chat-templated text (the tokenizer's chat template rewrites it)",
            )
        spans.append((pos, pos + len(content), m["role"]))
        cursor = pos + len(content)
    return spans


class ChatTemplateError(GeomfilterError, ValueError):
    """A tokenizer without a chat template: the response tokens cannot be located."""


class ChatTemplateRefused(GeomfilterError, ValueError):
    """The tokenizer's chat template refuses a conversation (after the system-turn fold was tried)."""


def render_chat(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool = False) -> tuple[str, list[dict]]:
    """The chat-templated text of ``messages`` and the messages it renders (as templated).

    A template that refuses a leading system turn (Gemma 2's raises "System role not supported")
    gets it folded into the first user turn, ``system + "\n\n" + user`` (what Gemma 3's own template
    does), with a warning; any other refusal raises :class:`ChatTemplateRefused`. Used for caching
    and fine-tuning (:func:`tokenize_sample`) and for generation (``add_generation_prompt=True``).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ChatTemplateError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '') or 'this model'!r} has no chat template, which "
            "geomfilter needs to find the response tokens (e.g. GPT-2): set tokenizer.chat_template, or save one "
            "with the model directory (chat_template.jinja)")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt), messages
    except TemplateError as err:
        first = err
    if len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
        folded = [{**messages[1], "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}, *messages[2:]]
        try:
            text = tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=add_generation_prompt)
        except TemplateError:
            pass
        else:
            warnings.warn(f"the chat template of {getattr(tokenizer, 'name_or_path', '')!r} refuses system turns "
                          f"({first}): each is folded into its first user turn", stacklevel=3)
            return text, folded
    raise ChatTemplateRefused(f"the tokenizer's chat template refuses this conversation: {first}")


def _render(sample: Sample, tokenizer: Any) -> tuple[str, Sample]:
    """:func:`render_chat` of a row: the text and the row as templated; a refusal is a :class:`DataError` naming it."""
    try:
        text, msgs = render_chat(tokenizer, sample.messages)
    except ChatTemplateRefused as e:
        raise DataError(sample.source or sample.id, sample.line, "messages", str(e)) from e
    return text, (sample if msgs is sample.messages else dataclasses.replace(sample, messages=msgs))


def tokenize_sample(sample: Sample, tokenizer: Any, *, response: ResponseMode = CacheConfig.response,
                    max_tokens: int | None = CacheConfig.max_tokens,
                    truncation: Truncation = CacheConfig.truncation) -> TokenizedSample:
    """Render with the tokenizer's chat template and mark the response tokens.

    The mask is exact: a token belongs to the response iff its character span
    overlaps the assistant content (template markers such as ``<|im_start|>``
    and ``<|im_end|>`` are never part of it). ``response="last"`` marks only the
    final assistant turn, ``"all"`` every assistant turn. A template that refuses system turns
    (Gemma 2) gets the system turn folded into the first user turn (:func:`_render`).

    Truncation policy for conversations longer than ``max_tokens``: ``"left"``
    drops tokens from the start (keeps the response; the default), ``"right"``
    cuts the end, ``"error"`` raises. A truncation that leaves no response token
    raises :class:`DataError`.
    """
    if response not in ("last", "all"):
        raise ValueError(f"response must be 'last' or 'all', got {response!r}")
    if truncation not in ("left", "right", "error"):
        raise ValueError(f"truncation must be 'left', 'right' or 'error', got {truncation!r}")
    text, templated = _render(sample, tokenizer)
    spans = _content_spans(text, templated)
    assistant = [(a, b) for a, b, role in spans if role == "assistant" and b > a]
    if response == "last":
        assistant = assistant[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = []
    for s, e in enc["offset_mapping"]:
        mask.append(e > s and any(s < b and e > a for a, b in assistant))
    truncated = False
    if max_tokens is not None and len(ids) > max_tokens:
        if truncation == "error":
            raise DataError(sample.source or sample.id, sample.line, "messages",
                            f"{len(ids)} tokens > max_tokens={max_tokens} (truncation='error')")
        sl = slice(len(ids) - max_tokens, None) if truncation == "left" else slice(0, max_tokens)
        ids, mask, truncated = ids[sl], mask[sl], True
    if not any(mask):
        raise DataError(sample.source or sample.id, sample.line, "messages",
                        "no response tokens" + (f" left after {truncation} truncation to {max_tokens} tokens" if truncated else ""))
    return TokenizedSample(id=sample.id, input_ids=ids, response_mask=mask, truncated=truncated,
                           content_hash=sample_hash(sample))


def tokenize_samples(samples: list[Sample], tokenizer: Any, *, response: ResponseMode = CacheConfig.response,
                     max_tokens: int | None = CacheConfig.max_tokens, truncation: Truncation = CacheConfig.truncation,
                     skip_invalid: bool = False, report: DataReport | None = None) -> list[TokenizedSample]:
    """Tokenize many samples; truncations are counted in ``report``.

    Samples that cannot be tokenized (no response token left) raise, or with
    ``skip_invalid`` go to ``report.rejects``.
    """
    report = report if report is not None else DataReport()
    report.truncation, report.max_tokens, report.response = truncation, max_tokens or 0, response
    out = []
    for s in samples:
        try:
            t = tokenize_sample(s, tokenizer, response=response, max_tokens=max_tokens, truncation=truncation)
        except DataError as err:
            if not skip_invalid:
                raise
            rej = {**err.as_dict(), "id": s.id, "row": {"id": s.id, "messages": s.messages, **s.meta}}
            if s.raw is not None:
                rej["raw"] = s.raw
            report.rejects.append(rej)
            continue
        report.n_truncated += t.truncated
        out.append(t)
    return out


@dataclass
class PreparedDataset:
    """Validated samples, their tokenization and the report of both steps."""

    samples: list[Sample]
    tokenized: list[TokenizedSample]
    report: DataReport
    fingerprint: str
    source: str

    def __len__(self) -> int:
        return len(self.tokenized)


def prepare_dataset(data: Any, tokenizer: Any, *, response: ResponseMode = CacheConfig.response,
                    max_tokens: int | None = CacheConfig.max_tokens, truncation: Truncation = CacheConfig.truncation,
                    skip_invalid: bool = False, rejects_path: str | Path | None = None) -> PreparedDataset:
    """Read, validate and tokenize in one call (what the cache and the CLI use).

    ``rejects_path``: written with :func:`write_rejects` (removed when nothing was
    rejected). The CLI passes none here: the cache writes its rejects file once
    its output folder is accepted.
    """
    report = DataReport()
    samples = read_samples(data, skip_invalid=skip_invalid, report=report)
    n_read_rejects = len(report.rejects)
    tokenized = tokenize_samples(samples, tokenizer, response=response, max_tokens=max_tokens,
                                 truncation=truncation, skip_invalid=skip_invalid, report=report)
    if rejects_path is not None:
        write_rejects(rejects_path, report.rejects)
    kept = {t.id for t in tokenized}
    if n_read_rejects != len(report.rejects):
        samples = [s for s in samples if s.id in kept]
    report.n_valid = len(tokenized)
    source = str(data) if isinstance(data, (str, Path)) else f"<{type(data).__name__}>"
    return PreparedDataset(samples=samples, tokenized=tokenized, report=report,
                           fingerprint=fingerprint(samples), source=source)
