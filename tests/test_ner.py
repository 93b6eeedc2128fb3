"""Token classification (task=ner): CoNLL reading, IOB1/IOB2, sub-word alignment, entity-level scores, training."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from finexp import build
from finexp.config import ConfigError, validate_config
from finexp.data.ner import IGNORE, align_labels, read_conll, to_iob2
from finexp.data.sources import DataError
from finexp.problems.token_classification_training import entity_report
from finexp.train import train

COMPANIES = ["Acme Corp", "Globex Bank", "Initech Capital Partners", "Umbrella Holdings"]
PEOPLE = ["John Smith", "Mary Jones", "Ann Lee"]
PLACES = ["London", "New York", "Frankfurt"]


def sentences(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """Loan-agreement sentences with an ORG, a LOC and a PER entity each (IOB2 tags)."""
    rng = random.Random(seed)

    def entity(name: str, kind: str) -> list[tuple[str, str]]:
        return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(name.split())]

    out = []
    for _ in range(n):
        words = [("The", "O"), ("lender", "O"), ("is", "O"), *entity(rng.choice(COMPANIES), "ORG"), ("of", "O")]
        words += [*entity(rng.choice(PLACES), "LOC"), (",", "O"), ("signed", "O"), ("by", "O")]
        out.append(words + entity(rng.choice(PEOPLE), "PER"))
    return out


def write_conll(path: Path, rows: list[list[tuple[str, str]]], docstart: bool = True) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for sentence in rows:
        lines += [f"{word} NNP B-NP {tag}" for word, tag in sentence] + [""]
    path.write_text("\n".join(lines))
    return path


def test_ner_trains_its_loss_falls_and_reports_entity_scores(make_cfg, tmp_path):
    path = write_conll(tmp_path / "loans.conll", sentences(60))
    cfg = make_cfg("task=ner", f"data.path={path}", "trainer.max_epochs=3", "optimizer.lr=3e-3")
    metrics = train(cfg)
    assert metrics["monitor"] == "val/f1"
    for key in ("val/f1", "test/precision", "test/recall", "test/f1", "test/f1_ORG", "test/f1_PER", "test/f1_LOC"):
        assert key in metrics, key
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as handle:
        losses = [float(r["train/loss_epoch"]) for r in csv.DictReader(handle) if r.get("train/loss_epoch")]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]
    assert metrics["test/f1"] > 0.5  # three epochs on an easy set: most entities found
    report = (Path(cfg.paths.output_dir) / "entity_report.json").read_text()
    assert '"ORG"' in report and '"support"' in report


def test_alignment_labels_only_first_subtokens(make_cfg, tmp_path):
    path = write_conll(tmp_path / "loans.conll", sentences(30))
    cfg = make_cfg("task=ner", f"data.path={path}")
    tokenizer = build.tokenizer_from(cfg)
    dm = build.datamodule_from(cfg, tokenizer)
    dm.prepare()
    assert dm.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    sentence = dm.sentences["train"][0]
    encoded = tokenizer(sentence.tokens, is_split_into_words=True)
    word_ids = encoded.word_ids()
    assert len(word_ids) > len(sentence.tokens) + 2  # some word splits into several sub-tokens
    labels = dm.datasets["train"][0]["labels"].tolist()
    first = {word_ids.index(w) for w in set(word_ids) if w is not None}
    for position, (word, label) in enumerate(zip(word_ids, labels, strict=True)):
        if position in first:
            assert label == dm.label_names.index(sentence.tags[word])
        else:  # special tokens and continuation sub-tokens
            assert label == IGNORE
    assert align_labels([None, 0, 0, 1, None], [3, 4]) == [IGNORE, 3, IGNORE, 4, IGNORE]


def test_iob1_is_converted_and_iob2_is_checked(tmp_path):
    assert to_iob2(["I-ORG", "I-ORG", "O", "I-PER", "B-PER", "I-LOC"], "IOB1") == [
        "B-ORG",
        "I-ORG",
        "O",
        "B-PER",  # an I- after O starts an entity in IOB1
        "B-PER",  # B- separates two adjacent entities of one type
        "B-LOC",  # an I- of another type starts a new entity
    ]
    path = tmp_path / "iob1.txt"
    path.write_text("Acme I-ORG\nCorp I-ORG\nGlobex B-ORG\nsigned O\n")
    (sentence,) = read_conll(path, "IOB1")
    assert sentence.tags == ["B-ORG", "I-ORG", "B-ORG", "O"]
    assert entity_report([sentence.tags], [sentence.tags])["ORG"]["support"] == 2
    with pytest.raises(DataError, match=r"iob1.txt:1: I-ORG follows O.*set task.scheme=IOB1"):
        read_conll(path, "IOB2")


def test_entity_scores_follow_seqeval_semantics():
    # I- after O starts an entity; so a prediction in IOB1 style matches an IOB2 gold entity
    assert entity_report([["O", "B-LOC", "I-LOC"]], [["O", "I-LOC", "I-LOC"]])["micro"]["f1"] == 1.0
    # a change of type splits an entity: B-ORG I-PER is ORG + PER, neither matches the gold ORG span
    report = entity_report([["B-ORG", "I-ORG", "O"]], [["B-ORG", "I-PER", "O"]])
    assert report["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["PER"]["support"] == 0 and report["ORG"]["support"] == 1
    # exact spans only; 1 of 3 predicted right, 1 of 2 gold found: P=1/3, R=1/2, F1=0.4
    gold = [["B-ORG", "I-ORG", "O", "B-PER", "O"], ["O", "O"]]
    pred = [["B-ORG", "I-ORG", "O", "B-PER", "I-PER"], ["B-LOC", "O"]]  # PER too long: a miss and a false positive
    report = entity_report(gold, pred)
    assert report["micro"]["precision"] == pytest.approx(1 / 3) and report["micro"]["recall"] == 0.5
    assert report["micro"]["f1"] == pytest.approx(0.4)
    assert report["ORG"]["f1"] == 1.0 and report["PER"]["f1"] == 0.0 and report["LOC"]["precision"] == 0.0


def test_bad_conll_lines_name_the_file_and_line(make_cfg, tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Acme B-ORG\nCorp\n")
    with pytest.raises(DataError, match=r"bad.conll:2: expected a token and a tag"):
        read_conll(bad)
    bad.write_text("Acme B-ORG\n\nGlobex B_ORG\n")
    with pytest.raises(DataError, match=r"bad.conll:3: unknown tag 'B_ORG'"):
        read_conll(bad)
    train_file = write_conll(tmp_path / "train.conll", sentences(20))
    test_file = tmp_path / "test.conll"
    test_file.write_text("Acme B-ORG\nsigned O\n\nin O\nQ3 B-DATE\n")
    cfg = make_cfg("task=ner", f"data.train_path={train_file}", f"data.test_path={test_file}")
    with pytest.raises(DataError, match=r"test.conll:5: tag 'B-DATE' never occurs in the train split"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


def test_ner_needs_a_file_and_a_known_scheme(make_cfg):
    with pytest.raises(ConfigError, match=r"task 'ner' reads your files: set data.path=FILE"):
        validate_config(make_cfg("task=ner"))
    with pytest.raises(ConfigError, match=r"task.scheme='BIOES' is not allowed"):
        validate_config(make_cfg("task=ner", "data.path=x.conll", "task.scheme=BIOES"))


def test_adapters_apply_to_the_tagger(make_cfg, tmp_path):
    cfg = make_cfg("task=ner", "data.path=x.conll", "adapter=lora")
    model = build.model_from(cfg, 7, build.tokenizer_from(cfg))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
