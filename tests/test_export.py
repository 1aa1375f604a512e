"""`hone export`: each format a tiny run supports exports, loads back in its runtime and answers like the run;
bad requests are one-line errors; the Ollama TEMPLATE renders like the chat template."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hone
from hone.config import build_config
from hone.errors import UserError
from hone.exporting import FORMATS, ExportRejected, gguf as gguf_module
from hone.exporting.formats import HEAD, HOOKED, MERGED, VIRTUAL, WHOLE
from hone.exporting.gotemplate import render as render_go
from hone.exporting.ollama import read_chat_format, read_modelfile, template_parity
from hone.methods import METHODS
from hone.methods.artifact import load_run_model
from hone.registry.fingerprint import file_sha256
from hone.registry.runs import read_record

from conftest import write_chat

SYSTEM = "Answer in JSON."
IDS = torch.tensor([[1, 500, 600, 700, 800, 900]])


def tiny_run(folder: Path, tiny_model: Path, method: str, **method_settings) -> Path:
    """A finished SFT run on the tiny Llama (2 steps at a high learning rate, so the method changed it)."""
    from hone.objectives import run

    data = {"train": str(write_chat(folder / "train.jsonl", 16, 1)),
            "test": str(write_chat(folder / "test.jsonl", 3, 3)),
            "validation": str(write_chat(folder / "val.jsonl", 4, 2)), "max_length": 64, "system_prompt": SYSTEM}
    cfg = build_config({"objective": "sft", "model": {"name": str(tiny_model)}, "output": str(folder / method),
                        "data": data, "method": {"name": method, **method_settings},
                        "train": {"lr": 3e-2 if method != "prompt_tuning" else 1.0, "max_steps": 2, "batch_size": 8,
                                  "micro_batch_size": 8, "threads": 1, "precision": "fp32", "warmup_ratio": 0.0},
                        "eval": {"base": False, "forgetting": False, "samples": 0}})
    return run(cfg).run_dir


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export-lora")
    with pytest.MonkeyPatch.context() as patch:  # its registry rows go to a home of its own, not the user's
        patch.setenv("HONE_HOME", str(folder / "home"))
        return tiny_run(folder, tiny_model, "lora", lora_r=4, lora_alpha=8)


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -ids.shape[1]:]


def test_lora_run_exports_as_hf_and_peft_that_load_back_like_the_run(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_model, run_tokenizer = load_run_model(lora_run)
    expected = logits(run_model)

    merged = hone.export(lora_run, "hf", prompts=2)
    assert merged.folder == lora_run / "exports" / "hf-fp32" and merged.verification.passed
    model = AutoModelForCausalLM.from_pretrained(merged.folder)
    torch.testing.assert_close(logits(model), expected, atol=1e-4, rtol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(merged.folder)
    assert tokenizer.chat_template == run_tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == run_tokenizer.eos_token_id  # it stops where it was taught to
    assert "library_name: transformers" in (merged.folder / "README.md").read_text()

    adapter = hone.export(lora_run, "peft", prompts=2)
    assert (adapter.folder / "adapter_config.json").is_file() and adapter.verification.max_logit_delta < 1e-3
    base = AutoModelForCausalLM.from_pretrained(read_record(lora_run)["base_model"])
    torch.testing.assert_close(logits(PeftModel.from_pretrained(base, str(adapter.folder))), expected,
                               atol=1e-4, rtol=1e-4)

    manifest = json.loads((merged.folder / "export.json").read_text())
    assert manifest["verification"]["passed"] and manifest["verification"]["checks"]["chat_template"] == "same"
    for entry in manifest["files"]:
        assert file_sha256(merged.folder / entry["path"]) == entry["sha256"]
    recorded = {(e["format"], e["quant"]): e for e in read_record(lora_run)["exports"]}
    assert recorded[("hf", "fp32")]["sha256"] == file_sha256(merged.folder / "model.safetensors")
    assert recorded[("peft", "fp32")]["verification"]["passed"]


def test_gguf_export_loads_back_in_transformers_and_hone_runs_show_lists_it(lora_run):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from hone.cli import app

    result = hone.export(lora_run, "gguf", "f16", prompts=2)
    path = result.folder / "model-f16.gguf"
    assert result.manifest["main_files"] == ["model-f16.gguf"]
    assert result.verification.checks == {"architecture": "same", "vocabulary": "same", "eos": "same", "bos": "same",
                                          "chat_template": "same"}
    run_model = load_run_model(lora_run)[0]
    model = AutoModelForCausalLM.from_pretrained(result.folder, gguf_file=path.name, dtype=torch.float32,
                                                 config=run_model.config)  # the file's own config: 8 s more
    assert (logits(model) - logits(run_model)).abs().max() < 0.05  # f16 weights

    shown = json.loads(CliRunner().invoke(app, ["runs", "show", str(lora_run.resolve().name), "--json"]).stdout)
    exports = {(e["format"], e["quant"]): e for e in shown["artifacts"]["exports"]}
    assert exports[("gguf", "f16")]["sha256"] == file_sha256(path)
    table = CliRunner().invoke(app, ["runs", "show", lora_run.resolve().name], env={"COLUMNS": "200"}).stdout
    assert "export gguf f16" in table


def test_ollama_export_writes_a_modelfile_that_prompts_and_stops_like_training(lora_run):
    result = hone.export(lora_run, "ollama", "q8_0", prompts=2)
    assert result.verification.passed and result.verification.checks["ollama_template"] == "same"
    template, system, stops = read_modelfile(result.folder / "Modelfile")
    assert (result.folder / "Modelfile").read_text().startswith("FROM ./model-q8_0.gguf\n")
    assert system == SYSTEM and stops[0] == "<|im_end|>"
    # Ollama puts SYSTEM first when a request brings no system message; hone's prompts get the same
    _, tokenizer = load_run_model(lora_run)
    asked = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Reverse river"}]
    assert render_go(template, asked) == tokenizer.apply_chat_template(asked, tokenize=False,
                                                                       add_generation_prompt=True)


CONVERSATIONS = [
    [{"role": "user", "content": "Reverse apple"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi\nthere"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": '{"x": 1}'}, {"role": "user", "content": "b"},
     {"role": "assistant", "content": "c"}, {"role": "user", "content": "Ünïcode 🙂 {{ not a template }}"}],
]
# A Llama-3-style template: a different shape (BOS text, headers, no default system message).
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
          "m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


@pytest.mark.parametrize("template", [None, LLAMA3], ids=["smollm2-chatml", "llama3-style"])
def test_modelfile_template_renders_like_apply_chat_template(tiny_model, template):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    if template:
        tokenizer.chat_template = template
    go = read_chat_format(tokenizer).go_template()
    for messages in CONVERSATIONS:
        assert render_go(go, messages) == tokenizer.apply_chat_template(messages, tokenize=False,
                                                                        add_generation_prompt=True)
    assert template_parity(go, tokenizer, "Be kind.") == []


def test_a_chat_template_that_rewrites_content_is_refused_for_ollama(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | lower }}\n{% endfor %}"
    with pytest.raises(UserError, match="cannot be written as an Ollama TEMPLATE"):
        read_chat_format(tokenizer)


def test_go_template_checker_refuses_what_it_cannot_evaluate():
    for template in ("{{- range .Messages }}x{{ end }}", "{{ if .A }}x", "{{ len .Messages }}"):
        with pytest.raises(UserError):
            render_go(template, [{"role": "user", "content": "hi"}])


def test_every_method_has_a_place_in_the_export_rules():
    groups = [MERGED, WHOLE, VIRTUAL, HOOKED, HEAD]
    assert sorted(m for g in groups for m in g) == sorted(METHODS)


def test_bad_requests_are_one_line_errors_naming_run_format_and_quant(lora_run, tmp_path, monkeypatch):
    name = lora_run.name
    cases = [
        (dict(format="onnx"), "unknown export format 'onnx'; choose one of hf, peft, gguf, ollama, gguf-lora"),
        (dict(format="gguf", quant="q3_k"), "unknown quant 'q3_k' for --format gguf; choose one of q8_0, f16"),
        (dict(format="hf", quant="bf16"), f"cannot export {name} (lora) as hf bf16: bf16 keeps a merged lora delta"),
        (dict(format="gguf", quant="bf16"), "relative error 0.64"),
        (dict(format="hf"), "exists and is not empty; pass --force"),  # the first test exported it already
        (dict(format="hf", output=lora_run), "would replace the run folder itself"),
    ]
    if not (lora_run / "exports" / "hf-fp32").is_dir():
        (lora_run / "exports" / "hf-fp32").mkdir(parents=True)
        (lora_run / "exports" / "hf-fp32" / "x").write_text("x")
    for request, message in cases:
        with pytest.raises(UserError) as caught:
            hone.export(lora_run, **request)
        assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)

    monkeypatch.setattr(gguf_module, "CONVERTER", tmp_path / "missing.py")
    with pytest.raises(UserError, match=r"GGUF converter is not installed .* run `make install`"):
        hone.export(lora_run, "gguf", output=tmp_path / "out")

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("name: unfinished\n")
    (unfinished / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(UserError, match="unfinished has no trained model to export \\(status: running\\)"):
        hone.export(unfinished, "gguf")

    classifier = tmp_path / "classifier"
    (classifier / "adapter").mkdir(parents=True)
    (classifier / "config.yaml").write_text("name: classifier\n")
    (classifier / "run.json").write_text(json.dumps({"status": "succeeded", "head": "sequence"}))
    (classifier / "adapter" / "hone_method.json").write_text(json.dumps({"method": "lora", "saved": "peft",
                                                                          "settings": {"name": "lora"}}))
    with pytest.raises(UserError, match="classifier .* with a sequence head answers with labels"):
        hone.export(classifier, "hf")


@pytest.mark.skipif(gguf_module.tool_missing("llamacpp") is None, reason="llama.cpp is built here")
def test_k_quants_and_lora_gguf_name_the_llamacpp_extra_when_it_is_absent(lora_run, tmp_path):
    for request in (dict(format="gguf", quant="q4_k_m"), dict(format="ollama", quant="q5_k_m"),
                    dict(format="gguf-lora")):
        with pytest.raises(UserError, match="run `make llamacpp`"):
            hone.export(lora_run, output=tmp_path / "out", **request)


def test_export_command_prints_one_line_and_exits_2_on_bad_input(lora_run):
    done = subprocess.run([sys.executable, "-m", "hone.cli", "export", str(lora_run), "--format", "gguf",
                           "--quant", "q2"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: unknown quant 'q2' for --format gguf; choose one of q8_0, f16, f32, bf16, q5_k_m, q4_k_m"]


def test_an_export_that_answers_differently_is_rejected_and_not_put_in_place(lora_run, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    original = FORMATS["hf"]

    def write_damaged(job, folder):
        files = original.write(job, folder)
        weights = load_file(str(folder / "model.safetensors"))
        weights["model.norm.weight"] = weights["model.norm.weight"] * 3  # what a broken merge would do
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return files

    monkeypatch.setitem(FORMATS, "hf", dataclasses.replace(original, write=write_damaged))
    target = tmp_path / "damaged"
    with pytest.raises(ExportRejected) as caught:
        hone.export(lora_run, "hf", output=target, prompts=2)
    assert "failed verification: max |Δlogit|" in str(caught.value) and "tolerance 0.001" in str(caught.value)
    assert "\n" not in str(caught.value) and not target.exists()
    kept = json.loads((tmp_path / "damaged.rejected" / "artifact" / "export.json").read_text())
    assert kept["verification"]["passed"] is False
    assert str(target.resolve()) not in [e["path"] for e in read_record(lora_run)["exports"]]


def test_prompt_tuning_exports_as_hf_with_its_virtual_tokens_and_refuses_gguf(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tiny_run(tmp_path, tiny_model, "prompt_tuning", num_virtual_tokens=4)
    with pytest.raises(UserError, match="prompt_tuning learns virtual tokens .* --format hf .* or --format peft"):
        hone.export(run, "ollama")
    result = hone.export(run, "hf", prompts=2)
    assert result.verification.passed
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(result.folder),
                                      str(result.folder / "adapter"))
    torch.testing.assert_close(logits(model), logits(load_run_model(run)[0]), atol=1e-4, rtol=1e-4)


@pytest.fixture
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama.cpp is not built here: make llamacpp")


def test_k_quant_gguf_through_llamacpp(lora_run, llama_cpp):
    result = hone.export(lora_run, "gguf", "q4_k_m", prompts=2)
    assert result.verification.passed and (result.folder / "model-q4_k_m.gguf").is_file()


def test_lora_adapter_as_gguf_applied_by_llamacpp(lora_run, llama_cpp):
    result = hone.export(lora_run, "gguf-lora", "f16", prompts=2)
    assert result.verification.passed and result.verification.runtime.startswith("llama.cpp")


def test_greedy_answers_that_part_only_where_the_run_itself_hesitated_count_as_agreeing():
    from rich.console import Console

    from hone.exporting.formats import Quant
    from hone.exporting.verify import Reference, compare

    run_logits = torch.zeros(3, 10)
    run_logits[0, 4], run_logits[1, 5], run_logits[1, 6], run_logits[2, 7] = 5.0, 3.0, 2.9, 4.0  # token 1: 0.1 apart
    reference = Reference(["p"], ["p"], [[1, 2]], [[4, 5, 7]], ["run"], [run_logits])

    def verify(answer):
        return compare(reference, lambda ids: answer, lambda ids, a: run_logits, str, "fake", Quant("q8_0", 3.0),
                       Console(quiet=True))

    hesitated = verify([4, 6, 9])   # parts at token 1, where the run's own model had 5 and 6 0.1 logits apart
    assert hesitated.passed and hesitated.near_ties == 1 and hesitated.items[0]["near_tie"]["gap"] == pytest.approx(0.1)
    confident = verify([9, 5, 7])   # parts at token 0, where the run chose 4 by 5 logits
    assert not confident.passed and "greedy answers agree on 0/1" in confident.why()
