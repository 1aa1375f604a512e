"""Every method trains, saves and reloads to the same outputs; impossible choices fail in one line."""
import json

import pytest
import torch

from hone.config import MethodSection, TrainSection
from hone.data.render import tokenize_chat
from hone.errors import ConfigError
from hone.hardware import pick_hardware
from hone.config import RunConfig
from hone.objectives.checks import check_config
from hone.methods import (METHODS, apply_method, attach_head, check_method, count_parameters, estimate_memory,
                          load_tuned, meta_model, save_tuned)
from hone.models.load import load_causal_lm
from hone.training.step import train_step

SFT_METHODS = [name for name, m in METHODS.items() if m.applies(head=False, own_loop=True)]
SMALL = {"lora_r": 4, "lora_alpha": 8, "trainable_layers": 1, "adapter_size": 8, "num_virtual_tokens": 4}
# Learning rates that move a random 2-layer model within a few steps (method defaults are for real models).
# A broken method (no gradient reaching its parameters) leaves the loss exactly where it was.
TEST_LR = {"full": 3e-3, "freeze": 3e-3, "lora": 1e-2, "dora": 1e-2, "qlora": 1e-2, "adapters": 1e-2,
           "prompt_tuning": 1.0, "prefix_tuning": 1.0, "ia3": 1.0, "bitfit": 3e-2}


@pytest.fixture(scope="session")
def tiny_biased_model(tmp_path_factory, tiny_model):
    """A 2-layer Qwen2 (attention biases, so bitfit applies) with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def exact_matmuls():
    """fp32 matmuls at full precision for exact comparisons (other tests may have chosen "medium")."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def examples(folder, chat_file, n=8):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    lines = chat_file.read_text().splitlines()[:n]
    return [tokenize_chat(tokenizer, json.loads(line)["messages"], 64) for line in lines]


def logits_of(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1]:]


@pytest.mark.parametrize("name", SFT_METHODS)
def test_method_loss_falls_and_saved_artifact_reloads_to_same_outputs(name, tiny_model, tiny_biased_model, chat_files,
                                                                      tmp_path, exact_matmuls):
    pytest.importorskip("bitsandbytes") if name == "qlora" else None
    base = str(tiny_biased_model if name == "bitfit" else tiny_model)
    cfg = MethodSection(name=name, **SMALL)
    model = apply_method(load_causal_lm(base), cfg)
    count = count_parameters(model)
    assert 0 < count.trainable <= count.total
    assert (count.trainable == count.total) == (name == "full")

    batch = examples(base, chat_files["train"])
    hw = pick_hardware("fp32", 1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=TEST_LR[name])
    losses = [train_step(model, optimizer, batch, TrainSection(micro_batch_size=4), optimizer.param_groups[0]["lr"],
                         2, hw, params)[0] for _ in range(8)]
    assert losses[-1] < losses[0] - 0.05, losses  # nats, on the same batch: a random model learns slowly

    ids = torch.tensor([[1, 500, 600, 700, 800], [2, 2, 1, 900, 901]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    # What training computes (no dropout anywhere): in eval mode bitsandbytes switches a CPU NF4 layer
    # to a bf16 inference kernel, so the trained model's own eval outputs are not the reference.
    expected = logits_of(model, ids, mask)
    model.eval()
    save_tuned(model, cfg, tmp_path / "artifact")
    reloaded = load_tuned(base, tmp_path / "artifact")
    torch.testing.assert_close(logits_of(reloaded, ids, mask), expected, atol=1e-4, rtol=1e-4)
    base_logits = logits_of(load_causal_lm(base), ids, mask)
    assert (logits_of(reloaded, ids, mask) - base_logits).abs().max() > 1e-3  # training changed the model


def test_qlora_int8_base_trains_and_reloads(tiny_model, chat_files, tmp_path, exact_matmuls):
    pytest.importorskip("torchao")
    cfg = MethodSection(name="qlora", quantize="int8", **SMALL)
    model = apply_method(load_causal_lm(str(tiny_model)), cfg)
    batch = examples(tiny_model, chat_files["train"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = [train_step(model, optimizer, batch, TrainSection(micro_batch_size=4), 1e-2, 2, pick_hardware("fp32", 1),
                         params)[0] for _ in range(8)]
    assert losses[-1] < losses[0] - 0.05, losses
    ids = torch.tensor([[1, 500, 600, 700, 800]])
    mask = torch.ones_like(ids)
    expected = logits_of(model, ids, mask)
    model.eval()
    save_tuned(model, cfg, tmp_path / "artifact")
    torch.testing.assert_close(logits_of(load_tuned(str(tiny_model), tmp_path / "artifact"), ids, mask),
                               expected, atol=1e-4, rtol=1e-4)


def test_bottleneck_adapters_start_from_the_base_model_exactly(tiny_model):
    ids = torch.tensor([[1, 500, 600, 700]])
    base = logits_of(load_causal_lm(str(tiny_model)), ids, torch.ones_like(ids))
    adapted = apply_method(load_causal_lm(str(tiny_model)), MethodSection(name="adapters", adapter_size=8))
    assert logits_of(adapted, ids, torch.ones_like(ids)).equal(base)


def test_freeze_trains_only_the_top_blocks_and_final_norm(tiny_model):
    model = apply_method(load_causal_lm(str(tiny_model)), MethodSection(name="freeze", trainable_layers=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in trained)
    assert "model.norm.weight" in trained
    model = apply_method(load_causal_lm(str(tiny_model)),
                         MethodSection(name="freeze", trainable_patterns=r"mlp\.down_proj"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}


@pytest.mark.parametrize("settings, message", [
    ({"trainable_layers": 5}, "this model has 2 blocks"),
    ({"trainable_patterns": "no_such_layer"}, "matches no parameter"),
    ({"trainable_patterns": "(unclosed"}, "invalid regular expression"),
])
def test_freeze_settings_that_cannot_work_are_config_errors(tiny_model, settings, message):
    with pytest.raises(ConfigError, match=message):
        check_method(MethodSection(name="freeze", **settings), meta_model(tiny_model))


def test_bitfit_on_llama_names_the_families_where_it_applies(tiny_model):
    with pytest.raises(ConfigError) as error:
        check_method(MethodSection(name="bitfit"), meta_model(tiny_model))
    message = str(error.value)
    assert "llama models have none" in message and "GPT-2" in message and "MiniLM" in message
    assert "\n" not in message


@pytest.mark.parametrize("method, objective", [("probe", "sft"), ("probe", "dpo"), ("prompt_tuning", "reward")])
def test_invalid_method_objective_pairs_are_refused(method, objective):
    with pytest.raises(ConfigError, match=f"method '{method}' does not apply to objective '{objective}'"):
        check_config(RunConfig(objective=objective, method=MethodSection(name=method), data={"train": "x.jsonl"}),
                     check_data=False)


def test_invalid_pair_fails_on_the_command_line_before_any_work(tiny_model, chat_files, tmp_path, cli):
    result = cli("train", "--data", str(chat_files["train"]), "--model", str(tiny_model), "--method", "bitfit",
                  "--output", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: bitfit trains bias terms only, and llama")
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    result = cli("train", "--data", str(chat_files["train"]), "--method", "probe")
    assert result.returncode == 2 and "does not apply to objective 'sft'" in result.stderr


def test_probe_trains_a_new_head_on_a_frozen_model_and_reloads(tiny_model, tmp_path, exact_matmuls):
    torch.manual_seed(0)
    cfg = MethodSection(name="probe")
    model = apply_method(attach_head(load_causal_lm(str(tiny_model)), num_labels=2), cfg)
    count = count_parameters(model)
    assert count.trainable == 64 * 2 + 2
    ids = torch.randint(3, 1000, (8, 6))
    mask = torch.ones_like(ids)
    labels = torch.tensor([0, 1] * 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    save_tuned(model, cfg, tmp_path / "probe")
    reloaded = load_tuned(str(tiny_model), tmp_path / "probe",
                          build=lambda: attach_head(load_causal_lm(str(tiny_model)), num_labels=2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask).logits, model(ids, mask).logits)


def test_probe_needs_a_head(tiny_model):
    with pytest.raises(ConfigError, match="has none; use it with the classify"):
        check_method(MethodSection(name="probe"), meta_model(tiny_model))


def test_memory_estimate_reflects_method_and_batch(tiny_model):
    full = apply_method(load_causal_lm(str(tiny_model)), MethodSection(name="full"))
    lora = apply_method(load_causal_lm(str(tiny_model)), MethodSection(name="lora", lora_r=4))
    a, b = estimate_memory(full, 4, 64), estimate_memory(lora, 4, 64)
    assert a.optimizer == 2 * a.gradients == 8 * count_parameters(full).trainable
    assert b.optimizer < a.optimizer / 100
    assert estimate_memory(lora, 8, 64).activations > 1.9 * b.activations
    frozen_bottom = apply_method(load_causal_lm(str(tiny_model)), MethodSection(name="freeze", trainable_layers=1))
    assert estimate_memory(frozen_bottom, 4, 64).activations < b.activations


def test_nf4_base_holds_a_fraction_of_the_fp32_bytes(tiny_model):
    pytest.importorskip("bitsandbytes")
    from hone.methods.quantized import quantize_base, tensor_bytes

    model = load_causal_lm(str(tiny_model))
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear and m is not model.lm_head]
    before = sum(tensor_bytes(m.weight) for m in linears)
    quantize_base(model, "nf4")
    quantized = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(quantized) == len(linears)
    assert sum(tensor_bytes(m.weight) for m in quantized) < before / 5
    assert count_parameters(model).total == count_parameters(load_causal_lm(str(tiny_model))).total


def test_hone_methods_lists_every_method_with_its_default_lr(cli):
    result = cli("methods", "--json")
    assert result.returncode == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(METHODS)
    assert rows["lora"]["default_lr"] == 2e-4 and rows["probe"]["objectives"] == ["classify", "ner", "reward"]


def test_memory_estimate_for_a_probe_counts_no_backward_through_the_model(tiny_model):
    probed = apply_method(attach_head(load_causal_lm(str(tiny_model)), num_labels=2), MethodSection(name="probe"))
    estimate = estimate_memory(probed, 4, 64)
    assert estimate.activations == 0 and estimate.gradients == 4 * (64 * 2 + 2)
