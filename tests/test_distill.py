"""Distillation on tiny models: the student learns the teacher's answers (and its distributions), the
teacher's answers are cached and an interrupted run resumes them, the teacher is scored beside the
student, and every misuse of a teacher is refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from objective_helpers import chat_rows, tiny_run_config, write_jsonl

from hone import objectives
from hone.data.load import load_chat_records
from hone.data.render import tokenize_chat
from hone.data.split import hold_out
from hone.errors import ConfigError, Interrupted
from hone.models.load import load_causal_lm, load_tokenizer
from hone.objectives import distill


def tiny_llama(folder: Path, tokenizer_from: Path, layers: int, seed: int) -> Path:
    """A random Llama with `layers` layers and the tokenizer of `tokenizer_from`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reversed_rows(n: int, seed: int = 0) -> list[dict]:
    """The teacher's lesson: asked to say a word, it answers the word reversed (the data says the word)."""
    return [{**row, "messages": [row["messages"][0], {"role": "assistant", "content": row["messages"][0]["content"][4:][::-1]}]}
            for row in chat_rows(n, seed)]


@pytest.fixture(scope="module")
def teacher(tiny_model, tmp_path_factory) -> Path:
    """A run: a deeper, differently seeded tiny Llama taught to answer words reversed, so that its answers are
    real text that differs from the training data's answers."""
    folder = tmp_path_factory.mktemp("teacher")
    model = tiny_llama(folder / "base", tiny_model, layers=3, seed=1)
    train = write_jsonl(folder / "reversed.jsonl", reversed_rows(32))
    config = tiny_run_config(model, folder, "sft", train, method={"name": "full"},
                             train={"lr": 1e-2, "max_steps": 60, "batch_size": 8, "micro_batch_size": 8,
                                    "eval_every": 100, "warmup_ratio": 0.0})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HONE_HOME", str(folder / "home"))  # a module fixture runs before the per-test home
        return objectives.run(config).run_dir


def distill_config(tiny_model, teacher, tmp_path, **sections):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(16))
    test = write_jsonl(tmp_path / "test.jsonl", chat_rows(4, seed=1))
    return tiny_run_config(
        tiny_model, tmp_path, "distill", train,
        data={"test": str(test), "validation_fraction": 0.25, **sections.pop("data", {})},
        distill={"teacher": str(teacher), "max_new_tokens": 6, **sections.pop("distill", {})},
        eval={"batch_size": 4, "max_new_tokens": 6},
        train={"max_steps": 8, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-2, **sections.pop("train", {})},
        method={"name": "full"}, **sections)  # a LoRA on a random 2-layer model barely moves in 8 steps


@torch.no_grad()
def answer_loss(model_path, run_dir: Path | None, examples) -> float:
    """Mean cross-entropy per answer token of `examples` under the student base or (with `run_dir`) the tuned student."""
    from hone.methods.artifact import load_run_model

    model = load_run_model(run_dir)[0] if run_dir else load_causal_lm(str(model_path))
    tokenizer = load_tokenizer(str(model_path))
    total, count = 0.0, 0
    for example in examples:
        rendered = tokenize_chat(tokenizer, example.messages, 64)
        ids, labels = torch.tensor([rendered.input_ids]), torch.tensor([rendered.labels])
        logits = model(input_ids=ids).logits[0, :-1]
        keep = labels[0, 1:] != -100
        total += float(torch.nn.functional.cross_entropy(logits[keep], labels[0, 1:][keep], reduction="sum"))
        count += int(keep.sum())
    return total / count


def test_an_interrupted_distillation_resumes_the_teacher_s_answers_and_the_student_learns_them(
        tiny_model, teacher, tmp_path, monkeypatch):
    # Answers only (the default): the KL term alone would also pull the student towards the teacher.
    config = distill_config(tiny_model, teacher, tmp_path)
    asked: list[int] = []
    real = distill.generate_batch

    def generate(model, tokenizer, conversations, *args, **kwargs):
        if len(asked) == 1 and not getattr(generate, "resumed", False):
            raise KeyboardInterrupt  # Ctrl-C while the teacher answers its second batch
        asked.append(len(conversations))
        return real(model, tokenizer, conversations, *args, **kwargs)

    monkeypatch.setattr(distill, "generate_batch", generate)
    with pytest.raises(Interrupted, match=r"teacher answered the train prompts \(4 of 12 answers kept"):
        objectives.run(config)
    run_dir = Path(config.output)
    kept = (run_dir / "teacher" / "train.partial.jsonl").read_text().splitlines()
    assert len(kept) == 4
    (run_dir / "teacher" / "train.partial.jsonl").write_text("\n".join(kept) + '\n{"index": 7, "prom')  # torn by a kill

    generate.resumed = True  # type: ignore[attr-defined]  # a plain function carries the test's flag
    result = objectives.run(config, run_dir=run_dir)
    assert asked == [4, 4, 4, 4], asked          # the 8 train prompts left, then the 4 validation prompts: none twice
    assert not (run_dir / "teacher" / "train.partial.jsonl").exists()

    # The cached answers are the teacher's own greedy answers, and the student trained on them, not on the data.
    teacher_model, tokenizer = load_causal_lm(str(teacher / "model")), load_tokenizer(str(teacher / "model"))
    lines = [json.loads(line) for line in (run_dir / "teacher" / "train.jsonl").read_text().splitlines()]
    train = load_chat_records(Path(config.data.train))
    train, _ = hold_out(train, 0.25, config.train.seed)
    assert [line["index"] for line in lines] == list(range(12))
    assert [line["messages"][-1]["content"] for line in lines[:2]] == real(teacher_model, tokenizer,
                                                         [e.prompt_messages for e in train[:2]], 6)
    taught = load_chat_records(run_dir / "teacher" / "train.jsonl")  # the cache is chat data as it stands
    assert [e.prompt_messages for e in taught] == [e.prompt_messages for e in train]
    before, after = answer_loss(tiny_model, None, taught), answer_loss(tiny_model, run_dir, taught)
    gold_after = answer_loss(tiny_model, run_dir, train)
    assert after < 0.7 * before and after < gold_after, (before, after, gold_after)

    # Student base, student and teacher on the same test items; the teacher's speed beside the student's.
    record = json.loads((run_dir / "run.json").read_text())
    assert record["teacher"]["kl_weight"] == 0 and record["teacher"]["same_vocabulary"] is True
    assert result.teacher_score is not None and len(record["teacher_scores"]) == 4
    speed = next(row for row in result.rows if row.label.startswith("answer tokens per second"))
    assert speed.tuned and speed.teacher and speed.base is not None  # the random student base answers nothing
    from rich.console import Console

    from hone.cli.summary import print_summary

    console = Console(record=True, width=160)
    print_summary(result, console)
    assert "teacher" in console.export_text().splitlines()[2]  # the table's header row
    assert "teacher (distill)" in (run_dir / "report.html").read_text()


def test_a_kl_weight_adds_the_teacher_s_distributions_to_every_step(tiny_model, teacher, tmp_path, monkeypatch):
    calls = []
    real = distill.kl_to_teacher

    def spy(model, weight):
        hook = real(model, weight)
        return lambda *args: calls.append(weight) or hook(*args)

    monkeypatch.setattr(distill, "kl_to_teacher", spy)
    config = distill_config(tiny_model, teacher, tmp_path, train={"max_steps": 1}, data={"test": None},
                            distill={"kl_weight": 0.5})
    result = objectives.run(config)
    assert calls == [0.5]  # one step of one micro-batch: the hook ran with the weight asked for
    assert result.record["teacher"]["kl_weight"] == 0.5


def test_kl_to_the_teacher_is_zero_at_the_teacher_and_a_step_on_it_moves_the_student_closer(tiny_model, teacher):
    from hone.training.loss import trained_logits
    from hone.training.regularise import kl_to_teacher

    student, reference = load_causal_lm(str(tiny_model)), load_causal_lm(str(teacher / "model"))
    ids = torch.tensor([[1, 500, 600, 700, 800, 900]])
    batch = {"input_ids": ids, "labels": ids.clone()}
    keep = torch.ones_like(ids[:, 1:], dtype=torch.bool)
    hook = kl_to_teacher(reference, 1.0)
    assert kl_to_teacher(reference, 0.0) is None
    assert float(hook(reference, batch, keep, trained_logits(reference, batch, keep))) == pytest.approx(0, abs=1e-4)
    student.train()
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3)
    kl = [hook(student, batch, keep, trained_logits(student, batch, keep))]
    kl[0].backward()
    optimizer.step()
    with torch.no_grad():
        kl.append(hook(student, batch, keep, trained_logits(student, batch, keep)))
    assert float(kl[0]) > 0 and float(kl[1]) < float(kl[0])


def test_cached_answers_count_only_for_the_same_prompts(tiny_model, teacher, tmp_path):
    examples = load_chat_records(write_jsonl(tmp_path / "chats.jsonl", chat_rows(4)))
    path = tmp_path / "teacher" / "train.jsonl"
    model, tokenizer = load_causal_lm(str(teacher / "model")), load_tokenizer(str(teacher / "model"))
    from rich.console import Console

    first = distill.teacher_answers(model, tokenizer, examples, path, 4, 4, Console(quiet=True))
    assert distill.read_answers(path, examples) == dict(enumerate(first))
    other = [{"messages": [{"role": "user", "content": f"Spell {w}"}, {"role": "assistant", "content": w}]}
             for w in ("a", "b", "c")]
    changed = [examples[0]] + load_chat_records(write_jsonl(tmp_path / "other.jsonl", other))
    assert distill.read_answers(path, changed) == {0: first[0]}  # the other three were asked something else


def refused(config, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as error:
        objectives.run(config)
    assert "\n" not in str(error.value)
    assert not (Path(config.output) / "run.json").exists()


def test_a_teacher_without_objective_distill_is_refused(tiny_model, teacher, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    refused(tiny_run_config(tiny_model, tmp_path, "sft", train, distill={"teacher": str(teacher)}),
            r"--teacher applies only to objective distill, not sft: add --objective distill")
    refused(tiny_run_config(tiny_model, tmp_path, "sft", train, distill={"kl_weight": 0.5}),
            r"distill.kl_weight applies only to objective distill")


def test_distill_without_a_teacher_or_with_an_unknown_one_is_refused(tiny_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    refused(tiny_run_config(tiny_model, tmp_path, "distill", train), r"objective distill needs a teacher: pass --teacher")
    refused(tiny_run_config(tiny_model, tmp_path, "distill", train, distill={"teacher": str(tmp_path / "nowhere")}),
            r"teacher '.*nowhere' is neither a model nor a run")


def test_a_kl_weight_across_different_vocabularies_is_refused_naming_both_models(tiny_model, tmp_path):
    from hone.models.catalogue import resolve_model

    other = tiny_llama(tmp_path / "bert-vocab", resolve_model("minilm-l6").path, layers=1, seed=0)
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    config = tiny_run_config(tiny_model, tmp_path, "distill", train, distill={"teacher": str(other), "kl_weight": 0.5})
    refused(config, rf"distill.kl_weight needs a shared vocabulary, but teacher '{other}' and student "
                    rf"'{tiny_model}' tokenize differently")


def test_the_cli_passes_teacher_through(tiny_model, teacher, tmp_path):
    from typer.testing import CliRunner

    from hone.cli import app

    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    result = CliRunner().invoke(app, ["train", "--data", str(train), "--model", str(tiny_model), "--objective", "sft",
                                      "--teacher", str(teacher), "--output", str(tmp_path / "run")])
    assert isinstance(result.exception, ConfigError) and "--teacher applies only to objective distill" in str(
        result.exception)


def test_a_half_depth_student_keeps_the_first_and_last_layers_and_generates_with_its_cache(tiny_model, tmp_path):
    from hone.models.shrink import drop_layers, kept_layers

    assert kept_layers(30, 15) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    deep = tiny_llama(tmp_path / "deep", tiny_model, layers=4, seed=2)
    half = drop_layers(str(deep), tmp_path / "half")
    original, student = load_causal_lm(str(deep)), load_causal_lm(str(half))
    assert student.config.num_hidden_layers == 2
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight, original.model.layers[3].mlp.up_proj.weight)
    ids = torch.tensor([[1, 500, 600, 700]])
    cached = student.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=2)
    uncached = student.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=2, use_cache=False)
    assert torch.equal(cached, uncached)
