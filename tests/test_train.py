import json
import shutil

import pytest
import torch

from hone.config import build_config
from hone.data.render import tokenize_chat
from hone.hardware import pick_hardware
from hone.objectives.sft import run_sft
from hone.training.checkpoint import list_checkpoints
from hone.training.step import train_step


def tiny_config(tiny_model, chat_files, tmp_path, **train):
    return build_config({
        "model": {"name": str(tiny_model)}, "output": str(tmp_path / "run"),
        "data": {"train": str(chat_files["train"]), "validation": str(chat_files["validation"]),
                 "test": str(chat_files["test"]), "max_length": 64},
        "method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
        "train": {"lr": 5e-3, "batch_size": 8, "micro_batch_size": 4, "threads": 1, **train},
        "eval": {"max_new_tokens": 8},
    })


def test_accumulated_micro_batches_give_the_same_update_as_one_batch(tiny_model, chat_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lines = chat_files["train"].read_text().splitlines()[:8]
    examples = [tokenize_chat(tokenizer, json.loads(l)["messages"], 64) for l in lines]
    hw = pick_hardware("fp32", 1)
    updates = []
    # one pass; one example per pass; passes of at most 100 padded tokens (2-3 examples here)
    for micro in ({"micro_batch_size": 8, "micro_batch_tokens": 10**6}, {"micro_batch_size": 1},
                  {"micro_batch_size": 8, "micro_batch_tokens": 100}):
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=1.0)  # update == -gradient, so scaling bugs show
        cfg = build_config({"train": {**micro, "max_grad_norm": 1e9}}).train
        loss, _ = train_step(model, optimizer, examples, cfg, 1.0, tokenizer.pad_token_id, hw, params)
        updates.append((loss, {n: before[n] - p.detach() for n, p in model.named_parameters()}))
    (loss_a, grads_a) = updates[0]
    for loss_b, grads_b in updates[1:]:
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
        for name in grads_a:
            torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4)


def test_micro_batches_respect_the_token_cap_and_keep_order():
    from hone.training.batches import micro_batches

    lengths = [10, 20, 30, 40, 200, 50]
    chunks = micro_batches(list(range(6)), 3, lengths, max_tokens=90)
    assert chunks == [[0, 1, 2], [3], [4], [5]]  # 3x30 fits; 2x40 would, but 200 alone exceeds: one per pass
    assert sum(chunks, []) == list(range(6))
    assert micro_batches(list(range(6)), 4) == [[0, 1, 2, 3], [4, 5]]
    for chunk in micro_batches(list(range(6)), 6, lengths, max_tokens=100):
        assert len(chunk) == 1 or len(chunk) * max(lengths[i] for i in chunk) <= 100


def test_sft_run_writes_metrics_adapter_and_scores(tiny_model, chat_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run_sft(tiny_config(tiny_model, chat_files, tmp_path, max_steps=4, eval_every=2))
    run = result.run_dir
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all({"loss", "lr", "tokens_per_s"} <= set(s) for s in steps)
    assert "val_loss" in steps[1] and "val_loss" in steps[3]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "succeeded" and record["results"]["steps"] == 4
    assert result.base_score is not None and len(record["tuned_answers"]) == 4
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run / "adapter")
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    ids = torch.tensor([[1, 500, 600, 700]])
    from hone.methods.artifact import load_run_model
    merged, _ = load_run_model(run)
    torch.testing.assert_close(merged(ids).logits, reloaded.eval()(ids).logits, atol=1e-4, rtol=1e-4)


def test_resume_from_a_checkpoint_matches_uninterrupted_run(tiny_model, chat_files, tmp_path):
    cfg = tiny_config(tiny_model, chat_files, tmp_path, max_steps=4, save_every=2, keep_checkpoints=5)
    cfg.eval.base = False
    run = run_sft(cfg).run_dir
    full = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    # Simulate a crash after step 2: only the step-2 checkpoint survives.
    for checkpoint in list_checkpoints(run)[1:]:
        shutil.rmtree(checkpoint)
    shutil.rmtree(run / "adapter")
    run_sft(cfg, run_dir=run)
    resumed = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in resumed] == [1, 2, 3, 4]
    assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in full], abs=1e-5)
    assert (run / "adapter" / "adapter_config.json").is_file()


def test_loss_falls_on_a_learnable_task(tiny_model, chat_files, tmp_path):
    # Full fine-tuning: a LoRA on a random 2-layer model has too little signal to move in 12 steps.
    cfg = tiny_config(tiny_model, chat_files, tmp_path, max_steps=12, eval_every=100, lr=1e-2)
    cfg.method.name = "full"
    result = run_sft(cfg)
    losses = [json.loads(l)["loss"] for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_batches_give_the_same_loss_and_gradients_as_padded_ones(tiny_model, chat_files, attention):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hone.training.batches import make_batch
    from hone.training.loss import summed_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lines = chat_files["train"].read_text().splitlines()[:6]
    examples = [tokenize_chat(tokenizer, json.loads(l)["messages"], 64) for l in lines]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention)
    results = []
    for packing in (False, True):
        model.zero_grad()
        batch = make_batch(examples, tokenizer.pad_token_id, packing, "cpu")
        assert ("position_ids" in batch) == packing
        loss, n = summed_loss(model, batch)
        loss.backward()
        results.append((loss.item(), n, model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (padded, n_padded, grad_padded), (packed, n_packed, grad_packed) = results
    assert n_packed == n_padded
    assert packed == pytest.approx(padded, rel=1e-5)
    torch.testing.assert_close(grad_packed, grad_padded, atol=1e-6, rtol=1e-4)


def test_head_only_loss_equals_the_full_logits_loss(tiny_model, chat_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hone.training.batches import make_batch
    from hone.training.loss import summed_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [tokenize_chat(tokenizer, json.loads(l)["messages"], 64)
                for l in chat_files["train"].read_text().splitlines()[:4]]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    batch = make_batch(examples, tokenizer.pad_token_id, False, "cpu")
    assert summed_loss(model, batch, True)[0].item() == pytest.approx(summed_loss(model, batch, False)[0].item(), rel=1e-5)


SYSTEM = " ".join(["You extract orders from customer messages and answer with JSON only, keys name, date, item."] * 5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_shared_system_prompt_run_once_gives_the_same_loss_and_gradients(tiny_model, chat_files, method):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hone.training.batches import SHARED_PREFIX_MIN, make_batch
    from hone.training.loss import summed_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chats = [json.loads(l)["messages"] for l in chat_files["train"].read_text().splitlines()[:5]]
    examples = [tokenize_chat(tokenizer, [{"role": "system", "content": SYSTEM}, *m], 256) for m in chats]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for share in (False, True):
        model.zero_grad()
        batch = make_batch(examples, tokenizer.pad_token_id, False, "cpu", share_prefix=share)
        loss, n = summed_loss(model, batch)
        loss.backward()
        results.append((batch.get("shared_prefix", 0), loss.item(), n, [p.grad.clone() for p in params]))
    (_, plain, n_plain, grads_plain), (prefix, shared, n_shared, grads_shared) = results
    # the prefix is the system turn (and the user turn's opening), never a position whose prediction is trained
    first_trained = min(e.labels.index(next(l for l in e.labels if l != -100)) for e in examples)
    assert SHARED_PREFIX_MIN <= prefix < first_trained
    assert n_shared == n_plain and shared == pytest.approx(plain, rel=1e-5)
    for got, want in zip(grads_shared, grads_plain):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    batch = make_batch(examples, tokenizer.pad_token_id, False, "cpu", share_prefix=True)
    assert summed_loss(model, batch, head_only=False)[0].item() == pytest.approx(plain, rel=1e-5)


def test_fused_lora_layers_give_peft_s_loss_and_gradients_over_a_bf16_base(tiny_model, chat_files):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hone.training.batches import make_batch
    from hone.training.loss import summed_loss
    from hone.training.precision import bf16_frozen_linears

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [tokenize_chat(tokenizer, json.loads(l)["messages"], 64)
                for l in chat_files["train"].read_text().splitlines()[:4]]
    batch = make_batch(examples, tokenizer.pad_token_id, False, "cpu")
    results = []
    for fuse in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        bf16_frozen_linears(model, fuse_lora=fuse)
        layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
        assert all(("forward" in vars(m)) == fuse for m in layers) and layers  # fused: its own forward
        if fuse:  # q/k/v (and gate/up) share one weight tensor: they run as one matmul
            attention = model.base_model.model.model.layers[0].self_attn
            assert attention.k_proj.base_layer.weight.untyped_storage().data_ptr() == \
                attention.q_proj.base_layer.weight.untyped_storage().data_ptr()
        loss, _ = summed_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        with model.disable_adapter():  # adapters off takes peft's path through the bf16 base
            base_loss = summed_loss(model, batch)[0].item()
        results.append((loss.item(), grads, base_loss))
    (loss, grads, base), (fused_loss, fused_grads, fused_base) = results
    assert fused_loss == pytest.approx(loss, rel=1e-6) and fused_base == pytest.approx(base, rel=1e-6)
    assert abs(fused_base - fused_loss) > 1e-2  # the adapters do change the output (by far more than rounding)
    for name, grad in grads.items():  # the scaling applied before/after a product rounds differently in fp32
        # q/k/v and gate/up run as one bf16 matmul whose outputs round differently from three: the
        # gradients then differ at the level of one bf16 rounding step (2^-8), no more
        assert (fused_grads[name] - grad).norm() <= 3e-3 * grad.norm(), name


def test_fused_lora_group_computes_each_member_s_layer():
    """The grouped node (q/k/v in one) against each layer alone, exact in fp32: widths, ranks, scalings, bias."""
    from hone.training.fused_lora import _LoRAGroup, _LoRALinear

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, requires_grad=True)
    shapes = [(8, 4, 0.5), (4, 2, 2.0), (4, 4, 1.0)]  # (out width, rank, scaling)
    weights = [torch.randn(w, 8) for w, _, _ in shapes]
    biases = [torch.randn(w) for w, _, _ in shapes]
    lora = [torch.randn(r, 8, requires_grad=True) if i % 2 == 0 else torch.randn(w, r, requires_grad=True)
            for w, r, _ in shapes for i in range(2)]
    scalings = tuple(s for _, _, s in shapes)
    upstream = [torch.randn(2, 5, w) for w, _, _ in shapes]

    outs = _LoRAGroup.apply(x, torch.cat(weights), torch.cat(biases), tuple(w for w, _, _ in shapes), scalings, *lora)
    torch.autograd.backward(outs, upstream)
    grouped = [x.grad.clone()] + [t.grad.clone() for t in lora]
    for t in [x, *lora]:
        t.grad = None
    alone = [_LoRALinear.apply(x, w, b, lora[2 * i], lora[2 * i + 1], s)
             for i, (w, b, s) in enumerate(zip(weights, biases, scalings))]
    torch.autograd.backward(alone, upstream)
    for got, want in zip(outs, alone):
        torch.testing.assert_close(got, want)
    for got, want in zip(grouped, [x.grad] + [t.grad for t in lora]):
        torch.testing.assert_close(got, want)


def test_no_prefix_is_shared_when_rows_differ_early_or_a_trained_token_comes_first():
    from hone.data.render import TokenizedExample
    from hone.training.batches import SHARED_PREFIX_MIN, common_prefix, make_batch

    head = list(range(10, 10 + SHARED_PREFIX_MIN + 4))
    rows = [TokenizedExample(head + [1, 2, 3], [-100] * len(head) + [1, 2, 3]),
            TokenizedExample(head + [4, 5], [-100] * len(head) + [4, 5])]
    # position len(head) - 1 predicts the first trained token: its hidden state must be computed per row
    assert make_batch(rows, 0, False, "cpu", share_prefix=True)["shared_prefix"] == len(head) - 1
    assert common_prefix(rows) == len(head) - 1  # what train_step plans micro-batches with
    early = [rows[0], TokenizedExample([99] + head[1:] + [4], [-100] * len(head) + [4])]
    assert make_batch(early, 0, False, "cpu", share_prefix=True)["shared_prefix"] == 0 == common_prefix(early)
    text = [TokenizedExample(head + [1], head + [1]), TokenizedExample(head + [2], head + [2])]  # pretraining
    assert make_batch(text, 0, False, "cpu", share_prefix=True)["shared_prefix"] == 0 == common_prefix(text)
    assert make_batch(rows[:1], 0, False, "cpu", share_prefix=True)["shared_prefix"] == 0
    assert "shared_prefix" not in make_batch(rows, 0, True, "cpu", share_prefix=True)  # packed rows


def test_the_token_cap_counts_a_shared_prefix_once():
    from hone.training.batches import micro_batches

    # 4 chats of 100 tokens under a 250-token cap: 2 per pass, or all 4 when their first 80 tokens run once
    assert micro_batches([0, 1, 2, 3], 8, [100] * 4, 250) == [[0, 1], [2, 3]]
    assert micro_batches([0, 1, 2, 3], 8, [100] * 4, 250, shared=80) == [[0, 1, 2, 3]]


def test_chat_defaults_to_the_system_prompt_nearly_every_training_example_had():
    from hone.data.records import ChatExample
    from hone.data.render import common_system_prompt

    def example(system):
        head = [{"role": "system", "content": system}] if system else []
        return ChatExample(head + [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])

    assert common_system_prompt([example("Be brief.")] * 19 + [example(None)]) == "Be brief."
    assert common_system_prompt([example("Be brief.")] * 5 + [example("Be long.")] * 5) is None
    assert common_system_prompt([example(None)] * 3) is None


def test_the_frozen_head_keeps_fp32_logits_and_sends_back_a_bf16_rounded_gradient(tiny_model, chat_files, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hone.training.precision as precision
    from hone.training.batches import make_batch
    from hone.training.loss import summed_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [tokenize_chat(tokenizer, json.loads(l)["messages"], 64)
                for l in chat_files["train"].read_text().splitlines()[:4]]
    batch = make_batch(examples, tokenizer.pad_token_id, False, "cpu")
    plain = precision._bf16_head_gradient
    results = []
    for swap in (plain, lambda head: None):
        monkeypatch.setattr(precision, "_bf16_head_gradient", swap)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        precision.bf16_frozen_linears(model)
        assert ("forward" in vars(model.get_output_embeddings())) == (swap is plain)
        loss, _ = summed_loss(model, batch)
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])))
    (loss, grads), (want_loss, want_grads) = results
    assert loss == want_loss  # the logits are the fp32 head's, bit for bit
    assert 0 < (grads - want_grads).norm() <= 1e-2 * want_grads.norm()  # bf16-rounded, not more


def test_compiled_layers_train_like_eager_ones(tiny_model, chat_files, tmp_path):
    """train.compile: each decoder layer compiled (shape-generic), the same losses as the eager run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hone.methods import apply_method
    from hone.training.loop import train_loop
    from hone.training.precision import bf16_frozen_linears

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [tokenize_chat(tokenizer, json.loads(l)["messages"], 64)
                for l in chat_files["train"].read_text().splitlines()[:16]]
    hw = pick_hardware("auto", 1)
    losses = {}
    for compiled in (False, True):
        cfg = build_config({"method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
                            "train": {"batch_size": 8, "micro_batch_size": 4, "max_steps": 2, "compile": compiled,
                                      "early_stopping_patience": None}})
        torch.manual_seed(0)
        model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager"), cfg.method)
        if hw.frozen_bf16:
            bf16_frozen_linears(model)
        run_dir = tmp_path / f"compiled-{compiled}"
        run_dir.mkdir()
        train_loop(model, examples, [], cfg.train, 1e-2, hw, run_dir, tokenizer.pad_token_id)
        losses[compiled] = [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        layers = model.base_model.model.model.layers
        assert all(layer._compiled_call_impl is not None for layer in layers) == compiled
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)  # fused nodes vs inductor: rounding differs
