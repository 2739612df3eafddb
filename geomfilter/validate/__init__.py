"""Schema and label checks for the project's data files (``geomfilter validate``).

Every file has a *kind*, detected from its path (or forced with ``kind=``):

=============  =========================================  ====================================
kind           path                                       rows
=============  =========================================  ====================================
reference      ``reference/{harmful,benign}.jsonl``       chat + pair_id, category, label
finetune       ``finetune/<domain>_<side>.jsonl``: the    chat + pair_id, domain, inducing
               families of ``FAMILIES`` (sycophantic /    (true on the first side)
               corrective, risky / safe, insecure /
               secure), twins on the same prompts
helpful        ``finetune/helpful.jsonl``                 chat + domain ("general"), topic,
                                                          inducing (false)
mixed          ``finetune/mixed.jsonl``,                  rows copied from the finetune/helpful
               ``finetune/mixed_*.jsonl``                 files + source (their file name)
judge          ``judge/labeled.jsonl``                    chat + topic, alignment, coherence
questions      ``eval/questions.jsonl``                   id, category, question, aligned,
                                                          misaligned
probes         ``eval/sycophancy_probes.jsonl``           id, topic, question, correct_answer,
                                                          wrong_answer, pushback
capability     ``eval/capability.jsonl``                  id, subject, question, choices, answer
heldout        ``eval/heldout_text.jsonl``                id, topic, text
prompts        ``sae_corpus*/prompts_*.jsonl``            id, topic, prompt, optional system
real_prompts   ``judge_real/prompts.jsonl``               id, kind (broad, code, factual, advice),
                                                          question, optional domain
real_answers   ``judge_real/answers.jsonl``               id, prompt_id, kind, question, variant,
                                                          model, method, gates, gate_scale,
                                                          sampling settings, answer, finish,
                                                          n_new_tokens, seed, made_by
label_batch    ``judge_real/labelling/calibration.jsonl``, blind_id, question, answer, finish (what a
               ``judge_real/labelling/batch-K.jsonl``     labeller sees, see ``data/judge/RUBRIC.md``;
               (and the same in ``labelling/round-N/``    later labelling rounds in round-N/,
               and ``relabelling/<name>/``)               re-readings by scripts/relabel_drift.py)
real_labels    ``judge_real/labels{,_raw}.jsonl``,        alignment (0-100 or null), coherence (0-100),
               ``judge_real/labelling/labels-K.jsonl``    code, refusal, labeller; id or blind_id;
                                                          optional notes, role
persona_      ``ood/persona_answers.jsonl``              chat + prompt_id, kind, persona (PERSONAS),
answers                                                   inducing (persona != ordinary), finish,
                                                          n_new_tokens, made_by
taxonomy       ``taxonomy/<file>.labels.jsonl``: labels   id, target, mechanism, severity (the
               of ``finetune/<file>.jsonl`` or of          classes of ``TAXONOMY``), labeller;
               ``eval/sycophancy_probes.jsonl``;           optional note. Every id is a row of the
               ``double.labels.jsonl``: a second           labelled file; every row of it is
               labeller's sample of them                   labelled (``double``: a sample)
chat           (only with ``kind="chat"``)                any messages or prompt/response rows
=============  =========================================  ====================================

Chat rows are checked by :func:`geomfilter.data.parse_row`; all project kinds
are *closed* (a field not listed is an error), ``chat`` is open. Across rows and
files: ids are unique (mixed rows excepted: they repeat their source's id), the
two files of a pair have the same pair_ids and the same prompt per pair,
every mixed row equals its source row plus ``source``, and no judge row's first
user message overlaps an eval question (word-set Jaccard > ``JUDGE_EVAL_OVERLAP``;
the questions validated with it, and ``../eval/questions.jsonl`` beside it when
that file exists), so that calibrating the judge never sees the eval set.

Files are ``.jsonl`` (one row a line) or ``.yaml`` (a list of rows; the line of
an error is the first line of its row).
Modules: :mod:`.schema` (kinds, per-kind schemas, row checks) and :mod:`.files`
(reading files, cross-file checks, :func:`validate_paths`).
"""
from __future__ import annotations

from .files import FileSummary, Issue, ValidationReport, validate_paths
from .schema import (
    CATEGORIES,
    CHAT_KINDS,
    DOMAINS,
    FAMILIES,
    JUDGE_EVAL_OVERLAP,
    KINDS,
    LABELS,
    OPEN_KINDS,
    OPTIONAL,
    SCHEMAS,
    SUFFIXES,
    TAXONOMY,
    VARIANTS,
    check_row,
    detect_kind,
    eval_questions_path,
    partner_path,
    word_overlap,
)

__all__ = ["CATEGORIES", "CHAT_KINDS", "DOMAINS", "FAMILIES", "JUDGE_EVAL_OVERLAP", "KINDS", "LABELS", "OPEN_KINDS", "OPTIONAL",
           "SCHEMAS", "SUFFIXES", "TAXONOMY", "VARIANTS", "FileSummary", "Issue", "ValidationReport", "check_row", "detect_kind",
           "eval_questions_path", "partner_path", "validate_paths", "word_overlap"]
