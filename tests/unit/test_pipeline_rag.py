"""The RAG example's pure parts on the committed corpus: sections, the held-out question rule, chunks, metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

RAG = Path(__file__).resolve().parents[2] / "examples" / "rag"
sys.path.insert(0, str(RAG))
import chunking  # noqa: E402
import evaluate  # noqa: E402

DATA = RAG / "data" / "python3.11-doc"


def _corpus(subset: str) -> tuple[list[chunking.Chunk], list[chunking.Question]]:
    paths = [str(p.relative_to(DATA)) for p in DATA.rglob("*.rst.txt")]
    return chunking.parse_corpus((p, (DATA / p).read_text()) for p in chunking.select(paths, subset))


def test_the_question_rule_gives_171_faq_headings_and_the_tiny_subset_32() -> None:
    _, questions = _corpus("default")
    assert len(questions) == 171
    assert all(q.question.endswith("?") and q.doc.startswith("faq/") for q in questions)
    assert len({q.section_id for q in questions}) == 171
    tiny_chunks, tiny_questions = _corpus("tiny")
    assert (len(tiny_chunks), len(tiny_questions)) == (62, 32)  # the integration test relies on these


def test_question_headings_are_held_out_of_the_indexed_text_but_their_answers_are_in() -> None:
    chunks, questions = _corpus("default")
    texts = [c.text for c in chunks]
    for q in questions:
        assert not any(q.question in t for t in texts), q.question
    answered = {c.section_id for c in chunks if c.held_out}
    assert {q.section_id for q in questions} <= answered  # every question's answer is indexed
    assert all(len(c.text) <= chunking.CHUNK_CHARS + 120 for c in chunks)  # + the title line


def test_a_one_line_answer_is_not_a_question() -> None:
    text = "FAQ\n===\n\nWhy?\n----\n\nSee the next question.\n\nHow do I do it well?\n--------------------\n\n" + (
        "You do it with care and with a great deal of patience, every time.\n"
    )
    sections = chunking.sections("faq/x.rst.txt", text)
    assert [s.title for s in sections if chunking.is_question(s)] == ["How do I do it well?"]


def test_rest_markup_becomes_plain_text() -> None:
    text = (
        ".. _label:\n\nUse :func:`breakpoint` or :mod:`the debugger <pdb>`, see `the wiki\n<https://x.org/a>`_ "
        "and ``x = 1``.\n\n.. index:: single: thing\n.. XXX a comment\n"
    )
    assert chunking.clean(text) == "Use breakpoint or the debugger, see the wiki and x = 1."


def test_unknown_subset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown subset"):
        chunking.select(["a.rst.txt"], "huge")


def test_metrics_count_hits_at_k_and_citations() -> None:
    answers = [
        {"section_id": "a", "retrieved": ["a", "b", "c", "d", "e"], "cited_section": "a"},
        {"section_id": "b", "retrieved": ["x", "y", "b", "d", "e"], "cited_section": "x"},
        {"section_id": "c", "retrieved": ["x", "y", "z", "w", "c"], "cited_section": "c"},
        {"section_id": "d", "retrieved": ["x", "y", "z", "w", "v"], "cited_section": "x"},
    ]
    assert evaluate.metrics(answers) == {
        "questions": 4,
        "hit@1": 0.25,
        "hit@3": 0.5,
        "hit@5": 0.75,
        "citation_accuracy": 0.5,
    }


def test_the_rag_templates_render_to_a_fixed_cpu_raycluster_and_a_gpu_one_that_autoscales_from_zero() -> None:
    import rag_pipeline

    from rayfleet.templates import render

    cpu, gpu = rag_pipeline.templates(gpu_workers=3)
    kw = {"namespace": "ml", "fleet": "f", "created_by": "me"}
    static = render(cpu, name="rag-cpu-1", **kw)["spec"]
    assert "enableInTreeAutoscaling" not in static
    assert [(g["replicas"], g["minReplicas"], g["maxReplicas"]) for g in static["workerGroupSpecs"]] == [(1, 1, 1)]
    scaled = render(gpu, name="rag-gpu-1", **kw)["spec"]
    assert scaled["enableInTreeAutoscaling"] is True
    assert scaled["autoscalerOptions"]["idleTimeoutSeconds"] == rag_pipeline.IDLE_TIMEOUT_S
    (group,) = scaled["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"], group["rayStartParams"]["num-gpus"]) == (0, 3, "1")
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
