"""Knowledge distillation: the loss is the formula, the teacher runs once per train row, a student trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

import finexp.training
from conftest import text_task
from finexp import FinexpError, build
from finexp.config import ConfigError, validate_config
from finexp.evaluate import load_run
from finexp.problems.classification_training import ClassificationObjective
from finexp.problems.distillation import distillation_loss, distillation_module
from finexp.runs import Teacher, open_teacher
from finexp.train import train


def test_loss_equals_the_formula_on_a_hand_made_example():
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 1.0], [-1.0, 3.0]])
    labels = torch.tensor([0, 1])
    t, alpha = 2.0, 0.3

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p_s, p_t = softmax(s_row), softmax(t_row)
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))  # KL(teacher || student)
    kl = kl / 2 * t**2  # batch mean, times T^2
    ce = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.exp(1) / (1 + math.exp(1)))) / 2

    loss, soft, hard = distillation_loss(student, teacher, labels, temperature=t, alpha=alpha)
    assert soft.item() == pytest.approx(kl, rel=1e-6)
    assert hard.item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(alpha * kl + (1 - alpha) * ce, rel=1e-6)
    same, soft_same, _ = distillation_loss(teacher, teacher, labels, temperature=t, alpha=1.0)
    assert soft_same.item() == pytest.approx(0.0, abs=1e-7) and same.item() == pytest.approx(0.0, abs=1e-7)


def test_soft_targets_are_looked_up_by_row_index():
    teacher_logits = torch.tensor([[float(i), -float(i)] for i in range(6)])
    module = distillation_module(torch.nn.Linear(2, 2), ["no", "yes"], teacher_logits, temperature=1.0, alpha=0.5)
    soft = module.objective.soft_targets(module, torch.tensor([4, 1]))
    torch.testing.assert_close(soft, torch.tensor([[4.0, -4.0], [1.0, -1.0]]))
    with pytest.raises(FinexpError, match="3 classes"):
        distillation_module(torch.nn.Linear(2, 3), ["a", "b", "c"], teacher_logits)


def test_bad_distillation_settings_are_rejected(make_cfg, sentiment_csv):
    base = [*text_task(sentiment_csv), "experiment=distill", "distill.teacher=t.ckpt", "model=tiny_bert"]
    with pytest.raises(ConfigError, match=r"distill\.alpha=1\.5"):
        validate_config(make_cfg(*base, "distill.alpha=1.5"))
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        validate_config(make_cfg(*base, "distill.temperature=0"))
    with pytest.raises(ConfigError, match=r"privacy\.name='label_dp'"):
        validate_config(make_cfg(*base, "privacy=label_dp"))
    validate_config(make_cfg(*base))


def test_teacher_runs_once_per_train_row_and_the_student_trains(make_cfg, sentiment_csv, monkeypatch):
    quick = ["trainer.max_epochs=2", "optimizer.lr=3e-3", "data.batch_size=16"]
    teacher_metrics = train(make_cfg(*text_task(sentiment_csv), *quick))
    teacher_ckpt = teacher_metrics["best_checkpoint"]

    rows_seen = []

    def counting_teacher(ckpt):
        teacher = open_teacher(ckpt)
        teacher.model.register_forward_hook(lambda _m, args, kwargs, out: rows_seen.append(len(out)), with_kwargs=True)
        return teacher

    monkeypatch.setattr(finexp.training, "open_teacher", counting_teacher)
    cfg = make_cfg(
        *text_task(sentiment_csv),
        "experiment=distill",
        f"distill.teacher={teacher_ckpt}",
        *quick,
        "trainer.max_epochs=2",
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    train_rows = json.loads((run / "run_info.json").read_text())["rows"]["train"]
    assert sum(rows_seen) == train_rows  # once per row over 2 epochs: the logits came from the cache

    cached = torch.load(run / "teacher_logits.pt", weights_only=True)
    assert cached["logits"].shape == (train_rows, 2)
    teacher = load_run(teacher_ckpt)  # its own train split = the student's (same data, same split seed)
    teacher.module.eval()
    with torch.no_grad():
        first = teacher.datamodule.datasets["train"][0]
        expected = teacher.module(first["input_ids"][None], torch.ones(1, len(first["input_ids"]), dtype=torch.long))
    torch.testing.assert_close(cached["logits"][0], expected[0], atol=1e-5, rtol=1e-4)  # row 0 is train row 0

    history = pd.read_csv(run / "csv" / "metrics.csv")
    assert history["train/soft_loss"].notna().any() and history["train/hard_loss"].notna().any()
    losses = history["train/loss_epoch"].dropna().tolist()
    assert losses[-1] < losses[0]
    assert metrics["test/auroc"] > 0.8  # an easy task: the student learns (chance is 0.5)
    student = load_run(metrics["best_checkpoint"])  # a plain classifier checkpoint: finexp-eval/export load it
    assert type(student.module.objective) is ClassificationObjective  # not the distillation objective

    # A rerun into the same directory reads the cache: the teacher is not even loaded.
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    never = lambda: pytest.fail("teacher loaded again")  # noqa: E731
    module = build.module_from(cfg, build.model_from(cfg, 2, build.tokenizer_from(cfg)), datamodule, never)
    torch.testing.assert_close(module.teacher_logits, cached["logits"])

    # A teacher of other labels is refused, naming the key.
    other = lambda: Teacher(None, None, ["down", "up"], 32)  # noqa: E731
    with open_dict(cfg):
        cfg.distill.cache = False
    with pytest.raises(FinexpError, match=r"distill\.teacher=.*predicts \['down', 'up'\]"):
        build.module_from(cfg, build.model_from(cfg, 2, build.tokenizer_from(cfg)), datamodule, other)
