"""Text sources: the offline synthetic corpus (with an exact entropy figure) and readers for local files / HF datasets.

The synthetic corpus is a small English-like language produced by a stochastic grammar. Every random choice the
generator makes is visible in the text it writes (word classes are disjoint, the topic is written in the title,
numbers are written out), so each document has exactly one derivation and the sum of the log-probabilities of
the sampled choices is the exact negative log-likelihood of the document under the true source. Summed over a
split and divided by its byte count, that is the best bits/byte any model can reach on it in expectation: a
known floor for validation loss, which a real-text corpus never gives you.

A document looks like::

    A story about the sea.

    Some silver crabs chase the anchor quietly. 57 plus 38 is 95. Mira lives in Tolvane.
    Is 12 more than 40? No. Where does Mira live? Mira lives in Tolvane.

Some parts carry information (topic, words, operands, names), others are fully determined by what came before
(verb agreement, a/an, sums and comparisons, recalled facts) and cost 0 bits for a model that learned the rule.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Iterator

from trmlab.errors import TrmError

# ---------------------------------------------------------------------------------------------------------------
# Lexicon. Word classes must be pairwise disjoint (checked below): that is what makes every derivation unique.

TOPICS = {
    "farm": "cow barn goat horse tractor farmer hen pig field fence lamb plow silo rooster donkey haystack",
    "sea": "boat wave crab sailor anchor whale shell island harbor gull lighthouse reef dolphin oar net captain",
    "city": "street tower bus taxi bridge mayor office subway lamp crowd cafe museum park alley clerk banker",
    "forest": "tree fox owl hare mushroom bear wolf river stone hunter squirrel fern trail cabin badger moth",
    "kitchen": "cook pot spoon oven kettle plate cup knife bowl apron recipe stove baker loaf pan jar",
    "school": "teacher pupil desk book pencil lesson classroom map chalkboard ruler notebook library bell student "
              "tutor scholar",
    "space": "rocket planet star moon comet astronaut orbit satellite galaxy crater probe telescope pilot asteroid "
             "station engineer",
    "market": "merchant stall coin basket melon fig buyer seller scale cart lemon carpet spice vendor tent onion",
}
GENERAL_NOUNS = "child friend stranger visitor doctor king queen robot dragon giant bird dog cat mouse singer painter"
# Irregular plurals; everything else takes -s / -es (see _plural).
IRREGULAR_PLURALS = {"child": "children", "mouse": "mice", "loaf": "loaves", "knife": "knives", "wolf": "wolves"}
ADJECTIVES = ("big small old young red blue green silver golden quiet loud happy sad clever brave tired hungry "
              "shiny dusty tiny heavy gentle strange calm wild sleepy proud curious humble lazy busy bright dark "
              "friendly lonely careful polite patient nervous noisy").split()
# Transitive verbs: (base form used with plural subjects, 3rd-person singular form).
VERBS_T = [
    ("see", "sees"), ("find", "finds"), ("follow", "follows"), ("help", "helps"), ("watch", "watches"),
    ("carry", "carries"), ("push", "pushes"), ("pull", "pulls"), ("like", "likes"), ("visit", "visits"),
    ("paint", "paints"), ("chase", "chases"), ("greet", "greets"), ("lift", "lifts"), ("wash", "washes"),
    ("fix", "fixes"), ("count", "counts"), ("hide", "hides"), ("admire", "admires"), ("remember", "remembers"),
    ("draw", "draws"), ("build", "builds"), ("hold", "holds"), ("call", "calls"), ("touch", "touches"),
    ("ignore", "ignores"), ("trust", "trusts"), ("teach", "teaches"), ("catch", "catches"), ("bring", "brings"),
]
VERBS_I = [
    ("sleep", "sleeps"), ("sing", "sings"), ("wait", "waits"), ("run", "runs"), ("laugh", "laughs"),
    ("dance", "dances"), ("rest", "rests"), ("shine", "shines"), ("wander", "wanders"), ("listen", "listens"),
    ("smile", "smiles"), ("work", "works"), ("jump", "jumps"), ("sit", "sits"), ("glow", "glows"),
    ("arrive", "arrives"),
]
ADVERBS = "quietly slowly quickly happily sadly loudly carefully gently bravely often again today".split()
NAMES = ("Mira Tomas Ilse Bruno Kaya Oren Lena Pavel Runa Sami Vera Hugo Nadia Felix Wren Otto Zora Emil Ines "
         "Arlo Dagny Leif Tessa Milo Yara Jonas Freya Anton Cleo Ravi Selma Ivo Greta Nils Asha Teo Lotte Bo "
         "Elin Koa").split()
PLACES = ("Tolvane Brask Umberfell Quillon Dorrow Averly Kestmoor Pellin Harrowgate Sunmere Ostrava Velden "
          "Cobbleton Marisk Ferngate Lunhollow Greystead Zanthe Ebbwick Norvale Rimeford Saltmarch Thistlebury "
          "Wyncombe").split()
SINGULAR_DETS = ("the", "a", "this", "every")   # "a" becomes "an" before a vowel: determined, so 0 bits
PLURAL_DETS = ("the", "some", "these", "many")

# Sentence kinds and their weights. "question" needs an earlier fact in the document; when there is none its
# weight is dropped and the rest renormalised (the document so far shows whether a fact exists, so the
# derivation stays unique).
SENTENCE_WEIGHTS = {"transitive": 0.40, "intransitive": 0.14, "arithmetic": 0.14, "compare": 0.06,
                    "fact": 0.14, "question": 0.12}
P_PLURAL = 0.4
P_ADJECTIVE = 0.4
P_ADVERB = 0.25
P_TOPIC_NOUN = 0.8        # else a general noun
P_PARAGRAPH = 0.15        # paragraph break instead of a space between sentences
MIN_SENTENCES, MAX_SENTENCES, P_STOP = 3, 32, 0.08


def _plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


TOPIC_NOUNS = {topic: words.split() for topic, words in TOPICS.items()}
GENERAL = GENERAL_NOUNS.split()


def _check_lexicon() -> None:
    """Every surface word must identify its class and value, or the NLL would not be exact."""
    classes = {f"topic:{t}": set(ws) for t, ws in TOPIC_NOUNS.items()}
    classes["general"] = set(GENERAL)
    nouns = [w for ws in classes.values() for w in ws]
    surface = {
        "noun": nouns + [_plural(n) for n in nouns],
        "adjective": ADJECTIVES,
        "verb": [f for pair in VERBS_T + VERBS_I for f in pair],
        "adverb": ADVERBS,
        "det": list(set(SINGULAR_DETS + PLURAL_DETS)) + ["an"],
        "name": [n.lower() for n in NAMES],
        "place": [p.lower() for p in PLACES],
        "keyword": ["plus", "minus", "times", "is", "more", "than", "yes", "no", "where", "does", "live",
                    "lives", "in", "story", "about"],
    }
    seen: dict[str, str] = {}
    for cls, words in surface.items():
        if len(set(words)) != len(words):
            raise AssertionError(f"duplicate word in lexicon class {cls}")
        for w in words:
            if w in seen:
                raise AssertionError(f"word {w!r} is in both {seen[w]} and {cls}")
            seen[w] = cls
    if len(NAMES) <= MAX_SENTENCES:
        raise AssertionError("need more names than sentences so a fresh name is always available")


_check_lexicon()


# ---------------------------------------------------------------------------------------------------------------
# Generator: every random choice goes through _Source, which adds -log2 p(choice) to a running total.

class _Source:
    """A seeded random source that keeps the exact log-probability of the choices it made."""

    def __init__(self, seed: str):
        self.rng = random.Random(seed)     # str seeds hash through sha512: stable across Python versions
        self.bits = 0.0

    def uniform(self, options):
        # int(random() * n) only uses random(), whose stream Python keeps reproducible across versions
        i = min(int(self.rng.random() * len(options)), len(options) - 1)
        self.bits += math.log2(len(options))
        return options[i]

    def coin(self, p: float) -> bool:
        hit = self.rng.random() < p
        self.bits -= math.log2(p if hit else 1.0 - p)
        return hit

    def weighted(self, weights: dict):
        total = sum(weights.values())
        r, acc = self.rng.random() * total, 0.0
        for key, w in weights.items():
            acc += w
            if r < acc:
                break
        self.bits -= math.log2(weights[key] / total)
        return key


def _noun_phrase(src: _Source, topic: str) -> tuple[str, bool]:
    plural = src.coin(P_PLURAL)
    det = src.uniform(PLURAL_DETS if plural else SINGULAR_DETS)
    pool = TOPIC_NOUNS[topic] if src.coin(P_TOPIC_NOUN) else GENERAL
    noun = src.uniform(pool)
    words = [src.uniform(ADJECTIVES)] if src.coin(P_ADJECTIVE) else []
    words.append(_plural(noun) if plural else noun)
    if det == "a" and words[0][0] in "aeiou":
        det = "an"
    return " ".join([det] + words), plural


def _verb(src: _Source, verbs, plural: bool) -> str:
    base, third = src.uniform(verbs)
    return base if plural else third     # agreement: determined by the subject, 0 bits


def _adverb(src: _Source) -> str:
    return " " + src.uniform(ADVERBS) if src.coin(P_ADVERB) else ""


def _sentence(src: _Source, topic: str, facts: dict[str, str]) -> str:
    weights = dict(SENTENCE_WEIGHTS)
    if not facts:
        del weights["question"]
    kind = src.weighted(weights)
    if kind == "transitive":
        subj, plural = _noun_phrase(src, topic)
        verb = _verb(src, VERBS_T, plural)
        obj, _ = _noun_phrase(src, topic)
        return f"{subj} {verb} {obj}{_adverb(src)}."
    if kind == "intransitive":
        subj, plural = _noun_phrase(src, topic)
        return f"{subj} {_verb(src, VERBS_I, plural)}{_adverb(src)}."
    if kind == "arithmetic":
        op = src.weighted({"plus": 0.5, "minus": 0.25, "times": 0.25})
        if op == "plus":
            a, b = src.uniform(range(100)), src.uniform(range(100))
            return f"{a} plus {b} is {a + b}."
        if op == "minus":
            a = src.uniform(range(100))
            b = src.uniform(range(a + 1))          # b <= a keeps results non-negative
            return f"{a} minus {b} is {a - b}."
        a, b = src.uniform(range(2, 13)), src.uniform(range(2, 13))
        return f"{a} times {b} is {a * b}."
    if kind == "compare":
        a, b = src.uniform(range(100)), src.uniform(range(100))
        return f"Is {a} more than {b}? {'Yes' if a > b else 'No'}."
    if kind == "fact":
        name = src.uniform([n for n in NAMES if n not in facts])   # fresh name: a fact is never contradicted
        facts[name] = src.uniform(PLACES)
        return f"{name} lives in {facts[name]}."
    name = src.uniform(list(facts))                                 # question: recall, answer costs 0 bits
    return f"Where does {name} live? {name} lives in {facts[name]}."


def synthetic_document(index: int, seed: int = 0) -> tuple[str, float]:
    """Document ``index`` of the corpus for ``seed``, and its exact negative log-likelihood in bits.

    Each document has its own random stream, so the corpus for n documents is a prefix of the one for more.
    The NLL includes the decision to stop, which a language model pays for when it predicts ``<|endoftext|>``.
    """
    src = _Source(f"trmlab-synthetic:{seed}:{index}")
    topic = src.uniform(list(TOPIC_NOUNS))
    parts, facts = [f"A story about the {topic}.\n\n"], {}
    for i in range(MAX_SENTENCES):
        if i:
            parts.append("\n\n" if src.coin(P_PARAGRAPH) else " ")
        s = _sentence(src, topic, facts)
        parts.append(s[0].upper() + s[1:])
        if i + 1 >= MIN_SENTENCES and (i + 1 == MAX_SENTENCES or src.coin(P_STOP)):
            break                                   # at MAX_SENTENCES the stop is forced: no coin, 0 bits
    parts.append("\n")
    return "".join(parts), src.bits


def generate_corpus_with_nll(n_docs: int, seed: int = 0) -> tuple[list[str], list[float]]:
    """``n_docs`` synthetic documents and, for each, its exact NLL in bits under the generator."""
    if n_docs < 1:
        raise TrmError(f"synthetic corpus needs n_docs >= 1, got {n_docs}")
    pairs = [synthetic_document(i, seed) for i in range(n_docs)]
    return [t for t, _ in pairs], [b for _, b in pairs]


def generate_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """``n_docs`` deterministic synthetic documents (ASCII, so one byte per character)."""
    return generate_corpus_with_nll(n_docs, seed)[0]


def corpus_entropy_bits_per_byte(docs: list[str], nll_bits: list[float]) -> float:
    """Exact NLL of ``docs`` under the generator divided by their UTF-8 byte count: the bits/byte floor."""
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    if n_bytes == 0:
        raise TrmError("cannot compute the entropy of an empty corpus")
    return sum(nll_bits) / n_bytes


# ---------------------------------------------------------------------------------------------------------------
# Readers for real text: local .txt / .jsonl / .parquet files, directories of them, or a HF dataset name.

SUFFIXES = (".txt", ".jsonl", ".parquet")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.endswith(SUFFIXES) or "\\" in source


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark


def decode_utf8(data: bytes, path: Path | str, offset: int = 0, lineno: int | None = None) -> str:
    """Strict UTF-8: replacing bad bytes would make U+FFFD a token and inflate the byte count bits/byte divides
    by, so a bad file is a one-line error naming it, the line and the byte offset (``offset`` = where ``data``
    starts in the file)."""
    if offset == 0 and data.startswith(BOM):  # Windows editors start files with one; it is not text
        data, offset = data[len(BOM):], len(BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lineno if lineno is not None else data.count(b"\n", 0, e.start) + 1
        raise TrmError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at byte offset {offset + e.start}); "
                       f"re-encode it, e.g. iconv -f latin1 -t utf-8") from None


def _read_txt(path: Path, paragraphs: bool) -> Iterator[str]:
    text = decode_utf8(path.read_bytes(), path)
    if not paragraphs:
        yield text
        return
    # a paragraph is a run of non-blank lines; blank lines (maybe with spaces) separate documents
    para: list[str] = []
    for line in text.splitlines():
        if line.strip():
            para.append(line)
        elif para:
            yield "\n".join(para)
            para = []
    if para:
        yield "\n".join(para)


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with path.open("rb") as f:   # bytes, so a bad line is reported with its line number and offset
        offset = 0
        for lineno, raw in enumerate(f, 1):
            line = decode_utf8(raw, path, offset, lineno)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrmError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or text_field not in row:
                raise TrmError(f"{path}:{lineno}: no {text_field!r} field (set data.text_field)")
            if not isinstance(row[text_field], str):
                raise TrmError(f"{path}:{lineno}: field {text_field!r} is not a string")
            yield row[text_field]


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise TrmError(f"{path}: cannot read parquet file ({e})") from None
    if text_field not in pf.schema_arrow.names:
        raise TrmError(f"{path}: no {text_field!r} column (has {pf.schema_arrow.names}; set data.text_field)")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield str(text)


def _read_file(path: Path, text_field: str, paragraphs: bool) -> Iterator[str]:
    if path.suffix == ".txt":
        return _read_txt(path, paragraphs)
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text_field)
    if path.suffix == ".parquet":
        return _read_parquet(path, text_field)
    raise TrmError(f"{path}: unsupported file type (use {', '.join(SUFFIXES)} or a directory of them)")


def _local_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise TrmError(f"no {'/'.join(SUFFIXES)} files under {root}")
    return files


def _iter_hf(source: str, text_field: str, split: str) -> Iterator[str]:
    name, _, config = source.partition(":")      # "wikitext:wikitext-103-raw-v1" picks a config
    try:
        import datasets
        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
        rows = iter(ds)
        first = next(rows, None)
    except TrmError:
        raise
    except Exception:  # network, auth, missing dataset or split: all look the same to the user
        raise TrmError(f"cannot load dataset {source} (no network?); point data.source at local files") from None
    if first is None:
        return
    if text_field not in first:
        raise TrmError(f"dataset {source}: no {text_field!r} column (has {sorted(first)}; set data.text_field)")
    yield first[text_field]
    for row in rows:
        yield row[text_field]


PYDOC_SOURCE = "pydoc"  # Python's own documentation: real English that ships with every Python, offline


def pydoc_documents() -> list[str]:
    """The help topics of ``pydoc_data.topics`` (79 documents, ~465 KB of the language reference), in key order."""
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def pydoc_paragraphs(min_chars: int = 200) -> list[str]:
    """The paragraphs of ``pydoc_data.topics`` longer than ``min_chars`` (783 at 200), in key order: short prose
    samples for phase-1 extraction, where a whole topic would be cut at max_seq_length anyway."""
    return [p.strip() for doc in pydoc_documents() for p in doc.split("\n\n") if len(p.strip()) > min_chars]


def iter_documents(source: str, text_field: str = "text", split: str = "train",
                   paragraphs: bool = False) -> Iterator[str]:
    """Yield non-empty documents from a file, a directory (recursive, sorted), ``pydoc`` (Python's documentation
    text, pydoc_data.topics) or a Hugging Face dataset name.

    .txt files give one document per file, or one per blank-line-separated paragraph with ``paragraphs``;
    .jsonl and .parquet give one per row (``text_field``). A name that is not an existing path is a HF dataset
    (``name`` or ``name:config``), streamed from ``split``.
    """
    path = Path(source).expanduser()
    if source == PYDOC_SOURCE:
        docs = pydoc_documents()
    elif path.exists():
        files = _local_files(path)
        docs = (d for f in files for d in _read_file(f, text_field, paragraphs))
    elif _looks_like_path(source):
        raise TrmError(f"data.source {source} does not exist")
    else:
        docs = _iter_hf(source, text_field, split)
    n = 0
    for doc in docs:
        if doc.strip():
            n += 1
            yield doc
    if n == 0:
        raise TrmError(f"no documents in {source} (all files empty?)")
