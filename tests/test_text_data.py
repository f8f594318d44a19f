"""Text pipeline: synthetic corpus, BPE tokenizer, shard building and batch sampling."""

import collections
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trmlab.data import corpus
from trmlab.data.corpus import (corpus_entropy_bits_per_byte, generate_corpus, generate_corpus_with_nll,
                                iter_documents)
from trmlab.data.text import TextDataConfig, TokenStream, bits_per_byte, build_text, load_text_meta
from trmlab.data.tokenizer import EOT, load_tokenizer, train_tokenizer
from trmlab.errors import TrmError


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    cfg = TextDataConfig(n_docs=300, vocab_size=512, val_fraction=0.1, seed=3)
    return build_text(cfg, out_root=tmp_path_factory.mktemp("data"))


def _split_text(data_dir, split):
    meta = load_text_meta(data_dir)
    tok = load_tokenizer(data_dir / "tokenizer.json")
    ids = np.concatenate([np.fromfile(data_dir / n, dtype=meta["dtype"]) for n in meta["shards"][split]])
    return tok.decode(ids.tolist()), meta


def _docs_in_shards(data_dir, split):
    text, _ = _split_text(data_dir, split)
    assert text.startswith(EOT)          # every document is preceded by the separator
    return text.split(EOT)[1:]


# --- synthetic corpus ------------------------------------------------------------------------------------------

def test_synthetic_corpus_is_deterministic_and_prefix_stable():
    a = generate_corpus(40, seed=1)
    assert a == generate_corpus(40, seed=1)
    assert a != generate_corpus(40, seed=2)
    assert generate_corpus(10, seed=1) == a[:10]
    assert all(d.startswith("A story about the ") and d.isascii() for d in a)


def test_synthetic_entropy_is_below_simple_models():
    docs, nll = generate_corpus_with_nll(2000, seed=0)
    bpb = corpus_entropy_bits_per_byte(docs, nll)
    assert 0 < bpb < 8
    # the exact source entropy must beat a unigram character model fitted to the very same text
    counts = collections.Counter("".join(docs))
    n = sum(counts.values())
    unigram = -sum(c / n * math.log2(c / n) for c in counts.values())
    assert bpb < unigram
    assert all(b > 0 for b in nll)


def test_synthetic_rules_hold():
    # deterministic parts of the language really are deterministic (a model can learn them for 0 bits)
    import re
    text = "".join(generate_corpus(300, seed=5))
    for a, op, b, c in re.findall(r"(\d+) (plus|minus|times) (\d+) is (\d+)\.", text):
        a, b, c = int(a), int(b), int(c)
        assert c == {"plus": a + b, "minus": a - b, "times": a * b}[op]
    for doc in generate_corpus(300, seed=5):
        facts = dict(re.findall(r"(?<!\? )\b([A-Z][a-z]+) lives in ([A-Z][a-z]+)\.", doc))
        for name, place in re.findall(r"Where does ([A-Z][a-z]+) live\? \1 lives in ([A-Z][a-z]+)\.", doc):
            assert facts[name] == place


def test_lexicon_classes_are_disjoint():
    corpus._check_lexicon()        # raises if a word could come from two choices (NLL would not be exact)


# --- tokenizer -------------------------------------------------------------------------------------------------

def test_tokenizer_round_trip_and_vocab_size(tmp_path):
    docs = generate_corpus(200, seed=0)
    tok = train_tokenizer(docs, 400, tmp_path / "tok.json")
    assert tok.vocab_size <= 400
    assert tok.decode([tok.eot_id]) == EOT
    for text in docs[:20] + ["Héllo  wörld\n\n\t 🙂 x", "  leading spaces", "", "tabs\tand\r\nCRLF"]:
        assert tok.decode(tok.encode(text)) == text
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.encode(docs[0]) == tok.encode(docs[0]) and again.vocab_size == tok.vocab_size
    assert max(max(tok.encode(d)) for d in docs) < tok.vocab_size


def test_tokenizer_errors(tmp_path):
    with pytest.raises(TrmError, match="vocab_size"):
        train_tokenizer(["abc"], 100)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TrmError, match="tokenizer.json"):
        load_tokenizer(bad)
    with pytest.raises(TrmError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")


# --- building shards -------------------------------------------------------------------------------------------

def test_build_synthetic_shards(synth_dir):
    meta = load_text_meta(synth_dir)
    docs = set(generate_corpus(300, seed=3))
    val = _docs_in_shards(synth_dir, "val")
    train = _docs_in_shards(synth_dir, "train")
    assert len(val) == meta["n_docs"]["val"] == 30 and len(train) == 270
    assert set(val) <= docs and set(train) <= docs and not set(val) & set(train)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] <= 512
    assert meta["n_bytes"]["val"] == sum(len(d) for d in val)
    bpb = meta["entropy_bits_per_byte"]["val"]
    assert 0 < bpb < 8
    # converting the floor to nats/token and back through the helper must give the same bits/byte
    assert bits_per_byte(meta["entropy_nats_per_token_val"], meta["tokens_per_byte"]["val"]) == pytest.approx(bpb)


def test_build_reuses_existing_directory(synth_dir):
    cfg = TextDataConfig(n_docs=300, vocab_size=512, val_fraction=0.1, seed=3)
    stamp = (synth_dir / "metadata.json").stat().st_mtime_ns
    assert build_text(cfg, out_root=synth_dir.parent) == synth_dir
    assert (synth_dir / "metadata.json").stat().st_mtime_ns == stamp
    other = build_text(TextDataConfig(n_docs=300, vocab_size=512, val_fraction=0.1, seed=4), synth_dir.parent)
    assert other != synth_dir


def test_build_from_local_files(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    docs = generate_corpus(60, seed=9)
    for i, d in enumerate(docs[:20]):
        (src / f"doc{i:02d}.txt").write_text(d)
    (src / "sub" / "rows.jsonl").write_text("".join(json.dumps({"body": d, "id": i}) + "\n"
                                                   for i, d in enumerate(docs[20:40])))
    pq.write_table(pa.table({"body": docs[40:], "n": list(range(20))}), src / "sub" / "rows.parquet")
    (src / "notes.csv").write_text("ignored")
    cfg = TextDataConfig(source=str(src), text_field="body", n_docs=0, vocab_size=300, val_fraction=0.2)
    out = build_text(cfg, out_root=tmp_path / "data")
    meta = load_text_meta(out)
    assert meta["n_docs"] == {"train": 48, "val": 12}
    assert "entropy_bits_per_byte" not in meta
    val_text, _ = _split_text(out, "val")
    joined = "\n".join(docs)
    for piece in val_text.split(EOT)[1:]:
        assert piece in docs and piece in joined


def test_txt_paragraph_mode_and_n_docs_cap(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("first para\nline two\n\n  \nsecond para\n\n\nthird\n")
    assert list(iter_documents(str(f), paragraphs=True)) == ["first para\nline two", "second para", "third"]
    out = build_text(TextDataConfig(source=str(f), txt_docs="paragraph", n_docs=2, vocab_size=260), tmp_path / "d")
    assert sum(load_text_meta(out)["n_docs"].values()) == 2


# --- batches ---------------------------------------------------------------------------------------------------

def test_batch_is_deterministic_and_shifted(synth_dir):
    ts = TokenStream(synth_dir, seed=7)
    x, y = ts.batch(step=3, batch_size=4, seq_len=32)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = TokenStream(synth_dir, seed=7).batch(step=3, batch_size=4, seq_len=32)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, ts.batch(step=4, batch_size=4, seq_len=32)[0])
    assert not torch.equal(x, TokenStream(synth_dir, seed=8).batch(step=3, batch_size=4, seq_len=32)[0])
    assert int(x.max()) < ts.vocab_size


def test_ranks_take_disjoint_slices_of_the_global_batch(synth_dir):
    ts = TokenStream(synth_dir)
    r0 = ts.batch(5, 4, 16, rank=0, world_size=2)[0]
    r1 = ts.batch(5, 4, 16, rank=1, world_size=2)[0]
    assert not torch.equal(r0, r1)
    assert torch.equal(torch.cat([r0, r1]), ts.batch(5, 8, 16)[0])


def test_val_batches_are_fixed_windows(synth_dir):
    ts = TokenStream(synth_dir)
    a = list(ts.val_batches(4, 16, max_batches=3))
    b = list(ts.val_batches(4, 16, max_batches=3))
    assert len(a) == 3 and all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    val = np.fromfile(synth_dir / "val_000.bin", dtype=np.uint16).astype(np.int64)
    assert torch.equal(a[0][0][1], torch.from_numpy(val[16:32]))       # consecutive, non-overlapping
    everything = list(ts.val_batches(4, 16))
    assert sum(len(x) for x, _ in everything) == (len(val) - 1) // 16
    shared = list(ts.val_batches(4, 16, rank=0, world_size=2)) + list(ts.val_batches(4, 16, rank=1, world_size=2))
    assert len(shared) == len(everything)


def test_batch_errors(synth_dir):
    ts = TokenStream(synth_dir)
    with pytest.raises(TrmError, match="too few"):
        ts.batch(0, 2, 10**7)
    with pytest.raises(TrmError, match="rank"):
        ts.batch(0, 2, 8, rank=2, world_size=2)
    with pytest.raises(TrmError, match="split"):
        ts.batch(0, 2, 8, split="test")


# --- bad input -------------------------------------------------------------------------------------------------

def test_source_errors(tmp_path, monkeypatch):
    with pytest.raises(TrmError, match="does not exist"):
        list(iter_documents(str(tmp_path / "nope.txt")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrmError, match="no .*files under"):
        list(iter_documents(str(empty)))
    (empty / "blank.txt").write_text("  \n")
    with pytest.raises(TrmError, match="no documents"):
        list(iter_documents(str(empty)))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "ok"}\n{"content": "x"}\n')
    with pytest.raises(TrmError, match=r"rows.jsonl:2.*'text'"):
        list(iter_documents(str(rows)))
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["a"]}), table)
    with pytest.raises(TrmError, match="t.parquet.*'text'"):
        list(iter_documents(str(table)))

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TrmError, match="cannot load dataset someone/corpus .*no network"):
        list(iter_documents("someone/corpus"))


def test_build_errors(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(TrmError, match="tokenizer.json"):
        build_text(TextDataConfig(n_docs=20, tokenizer=str(bad)), tmp_path / "d")
    with pytest.raises(TrmError, match="data.tokenizer: .*missing.json is not an existing tokenizer.json"):
        build_text(TextDataConfig(n_docs=20, tokenizer=str(tmp_path / "missing.json")), tmp_path / "d")
    one = tmp_path / "one.txt"
    one.write_text("a single document")
    with pytest.raises(TrmError, match="at least 2 documents"):
        build_text(TextDataConfig(source=str(one), vocab_size=300), tmp_path / "d")
    assert not list((tmp_path / "d").glob(".*tmp*"))       # failed builds leave no temp directory behind


@pytest.mark.parametrize("field,value", [("val_fraction", 0.0), ("vocab_size", 100), ("n_docs", -1),
                                         ("shard_tokens", 10),  # a missing data.tokenizer: at build (test_build_errors)
                                         ("txt_docs", "lines"), ("source", "")])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(TrmError, match=f"data.{field}"):
        TextDataConfig(**{field: value})


def test_non_utf8_sources_are_one_line_errors_naming_file_line_and_offset(tmp_path, capsys):
    good = "naïve café\n\n"                     # multi-byte UTF-8 before the bad byte: the offset counts bytes
    txt = tmp_path / "bad.txt"
    txt.write_bytes(good.encode() + b"second \xe9t\xe9 para\n")
    offset = len(good.encode()) + len(b"second ")
    for paragraphs in (False, True):        # never mangled into U+FFFD tokens, in either reading
        with pytest.raises(TrmError, match=rf"bad.txt:3: not UTF-8 .*byte offset {offset}\b"):
            list(iter_documents(str(txt), paragraphs=paragraphs))
    rows = tmp_path / "bad.jsonl"
    first = json.dumps({"text": "ok ü"}, ensure_ascii=False).encode() + b"\n"
    rows.write_bytes(first + b'{"text": "caf\xe9"}\n')
    with pytest.raises(TrmError, match=rf"bad.jsonl:2: not UTF-8 .*byte offset {len(first) + 13}\b"):
        list(iter_documents(str(rows)))
    txt.write_bytes(good.encode())
    assert list(iter_documents(str(txt), paragraphs=True)) == ["naïve café"]

    from trmlab.cli import main
    rc = main(["train", "lm-tiny", f"data.source={rows}", "--runs-dir", str(tmp_path / "runs"),
               "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("trm: error:") and "bad.jsonl:2" in err and "\n" not in err


def test_a_utf8_byte_order_mark_is_not_part_of_the_text(tmp_path):
    from trmlab.data.corpus import iter_documents
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert list(iter_documents(str(tmp_path / "bom.jsonl"))) == ["first", "second"]
    assert list(iter_documents(str(tmp_path / "bom.txt"))) == ["hello"]


def test_pydoc_text_source_gives_long_paragraphs_of_pythons_documentation():
    from pydoc_data.topics import topics

    from trmlab.data.hidden_states import iter_texts
    texts = list(iter_texts("pydoc", "1a", num_samples=40, log=lambda m: None))
    assert len(texts) == 40 and len(set(texts)) == 40
    assert all(len(t) > 200 and t == t.strip() for t in texts)
    first_topic = topics[sorted(topics)[0]]
    assert texts[0] in first_topic                      # in key order, each a paragraph of its topic
    assert all(any(t in doc for doc in topics.values()) for t in texts)
    assert len(list(iter_texts("pydoc", "1a", num_samples=10_000, log=lambda m: None))) == len(
        corpus.pydoc_paragraphs())                      # the source ends where the documentation does
