"""The corpus as text (pure, no model): reST sections, chunks for the index, and the FAQ's held-out questions.

The known answers come from the Python FAQ: **every section heading of ``faq/*.rst.txt`` that ends in "?" and whose
answer (the section's text up to the next heading) has at least `MIN_ANSWER_WORDS` words is a question**; its answer
section is the right citation. Those headings are held out of the index: the chunks of such a section carry no
heading text, only the section's id as metadata (for scoring). On python3.11-doc 3.11.2-6+deb12u9 the rule gives 171
questions (175 headings end in "?"; 4 have a one-line answer such as "See the next question.").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

ADORNMENTS = set("=-~^*#\"+`:._'")
MIN_ANSWER_WORDS = 10
CHUNK_CHARS = 900  # a chunk is at most this long (a longer paragraph is cut at sentence ends), ~220 tokens for MiniLM

# Subsets of the corpus by relative path. "tiny" is what CI runs; "default" is everything committed under data/.
SUBSETS: dict[str, tuple[str, ...]] = {
    "tiny": (
        "faq/extending.rst.txt",
        "faq/gui.rst.txt",
        "faq/installed.rst.txt",
        "faq/windows.rst.txt",
        "tutorial/appetite.rst.txt",
        "tutorial/interpreter.rst.txt",
    ),
    "default": ("faq/", "tutorial/", "howto/"),
    "full": ("",),
}


@dataclass(frozen=True)
class Section:
    """A titled part of a document, with its body text (the heading not included)."""

    doc: str
    title: str
    anchor: str
    body: str

    @property
    def id(self) -> str:
        return f"{self.doc}#{self.anchor}"


@dataclass(frozen=True)
class Chunk:
    """A piece of text for the index, and where it comes from."""

    id: str
    doc: str
    section_id: str
    section: str
    text: str
    held_out: bool  # its section heading is a question: the heading is not in the text

    def to_row(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Question:
    """A known answer: an FAQ heading and the section that answers it."""

    id: str
    question: str
    section_id: str
    doc: str


def select(paths: Iterable[str], subset: str) -> list[str]:
    """The relative paths of ``subset`` (by prefix) among ``paths``, sorted.

    Raises:
        ValueError: an unknown subset name.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    prefixes = SUBSETS[subset]
    return sorted(p for p in paths if p.endswith(".rst.txt") and any(p == x or p.startswith(x) for x in prefixes))


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80] or "section"


def _is_underline(line: str, title: str) -> bool:
    line = line.rstrip()
    return bool(line) and len(set(line)) == 1 and line[0] in ADORNMENTS and len(line) >= len(title.strip()) >= 1


def sections(doc: str, text: str) -> list[Section]:
    """Split a reST document into sections at its headings (underlined, optionally overlined, titles).

    Text before the first heading becomes a section titled with the document's name.
    """
    lines = text.splitlines()
    heads: list[tuple[int, int, str]] = []  # (first line of the heading, first line of the body, title)
    i = 0
    while i < len(lines) - 1:
        title = lines[i]
        heading = title.strip() and not title.startswith((" ", "\t", "..")) and _is_underline(lines[i + 1], title)
        if heading and not _is_underline(title, "x"):  # an overline is not a title
            start = i - 1 if i > 0 and _is_underline(lines[i - 1], title) else i
            heads.append((start, i + 2, title.strip()))
            i += 2
            continue
        i += 1
    out: list[Section] = []
    seen: dict[str, int] = {}

    def add(title: str, body: list[str]) -> None:
        anchor = slug(title)
        seen[anchor] = seen.get(anchor, 0) + 1
        if seen[anchor] > 1:
            anchor = f"{anchor}-{seen[anchor]}"
        out.append(Section(doc, title, anchor, clean("\n".join(body))))

    first = heads[0][0] if heads else len(lines)
    if any(line.strip() for line in lines[:first]):
        add(PurePosixPath(doc).name.removesuffix(".rst.txt"), lines[:first])
    for n, (_, body_start, title) in enumerate(heads):
        end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        add(title, lines[body_start:end])
    return out


_ROLE = re.compile(r":[a-zA-Z:+-]+:`~?!?([^`<]*?)\s*(?:<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")
_LITERAL = re.compile(r"``([^`]+)``")
_COMMENT = re.compile(r"^\.\. (?!.*::)")  # ".. text" without "::" is a reST comment
_FIELD = re.compile(r"^:(tocdepth|orphan|nosearch|hide-toc):")
_DIRECTIVE_DROP = re.compile(
    r"^\s*\.\. (_[^:]*:|index::|only::|contents::|highlight::|versionadded::|versionchanged::|seealso::|"
    r"sectionauthor::|moduleauthor::|toctree::|tabularcolumns::|testsetup::|\|)"
)


def clean(text: str) -> str:
    """reST markup reduced to plain text: roles, links and literals to their text; labels and index entries dropped."""
    kept = [line.rstrip() for line in text.splitlines()
            if not (_DIRECTIVE_DROP.match(line) or _COMMENT.match(line) or _FIELD.match(line))]  # fmt: skip
    text = "\n".join(kept)
    text = _ROLE.sub(r"\1", text)  # roles and links may span lines
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def is_question(section: Section) -> bool:
    """The rule for known answers: an FAQ heading ending in "?" with an answer of at least `MIN_ANSWER_WORDS` words."""
    return (
        section.doc.startswith("faq/") and section.title.endswith("?") and len(section.body.split()) >= MIN_ANSWER_WORDS
    )


def _pieces(text: str, limit: int) -> Iterator[str]:
    """Paragraphs of ``text``, each at most ``limit`` characters (long ones cut at sentence ends, else hard)."""
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        while len(paragraph) > limit:
            cut = max(paragraph.rfind(". ", 0, limit), paragraph.rfind("\n", 0, limit))
            cut = cut + 1 if cut > limit // 3 else limit
            yield paragraph[:cut].rstrip()
            paragraph = paragraph[cut:].lstrip()
        if paragraph.strip():
            yield paragraph


def chunks(sections_: Iterable[Section], doc_titles: dict[str, str], limit: int = CHUNK_CHARS) -> list[Chunk]:
    """The index's chunks: each section's paragraphs packed up to ``limit`` characters; no chunk spans sections.

    A chunk's text starts with its document's title, and its section's title unless that title is a held-out
    question.
    """
    out = []
    for section in sections_:
        held_out = is_question(section)
        head = doc_titles.get(section.doc, section.doc)
        if not held_out and section.title != head:
            head = f"{head}: {section.title}"
        parts: list[str] = []
        size = 0
        texts = []
        for piece in _pieces(section.body, limit):
            if parts and size + len(piece) > limit:
                texts.append("\n\n".join(parts))
                parts, size = [], 0
            parts.append(piece)
            size += len(piece) + 2
        if parts:
            texts.append("\n\n".join(parts))
        for n, text in enumerate(texts):
            out.append(Chunk(f"{section.id}:{n}", section.doc, section.id, section.title, f"{head}\n{text}", held_out))
    return out


def questions(sections_: Iterable[Section]) -> list[Question]:
    """The known answers: held-out FAQ headings and their sections, in corpus order."""
    out = []
    for section in sections_:
        if is_question(section):
            qid = hashlib.sha1(section.id.encode()).hexdigest()[:10]
            out.append(Question(qid, section.title, section.id, section.doc))
    return out


def parse_corpus(files: Iterable[tuple[str, str]]) -> tuple[list[Chunk], list[Question]]:
    """``(relative path, text)`` pairs -> the index's chunks and the held-out questions."""
    all_sections: list[Section] = []
    titles = {}
    for doc, text in files:
        found = sections(doc, text)
        pseudo = PurePosixPath(doc).name.removesuffix(".rst.txt")
        headed = [s for s in found if s.title != pseudo]
        titles[doc] = headed[0].title if headed else pseudo
        all_sections.extend(found)
    return chunks(all_sections, titles), questions(all_sections)


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`\"'])|\n\s*\n")


def sentences(text: str, min_words: int = 4) -> list[str]:
    """Sentences of a chunk's body (its first line, the title, left out), for extractive answers."""
    body = text.split("\n", 1)[1] if "\n" in text else text
    out = []
    for sentence in _SENTENCE.split(body):
        sentence = " ".join(sentence.split())
        if len(sentence.split()) >= min_words:
            out.append(sentence)
    return out
