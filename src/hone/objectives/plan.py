"""`hone plan`: will a training job fit, and how long will an epoch take, before any weight is loaded.

The model's structure is built on torch's meta device (no weights: a 70B model plans in seconds), the
method is applied to it, and memory is counted the way methods/memory.py counts it for a real run:
weights + gradients + AdamW + activations kept for backward. Two measured corrections for this CPU:

- the process itself (Python, torch, transformers, peft) is this process's own resident memory, read
  from /proc, since `hone train` imports the same libraries;
- glibc's allocator keeps freed activation memory resident between forward and backward: peak RSS
  grew by 1.7x the activation estimate for micro-batches up to 512 tokens and 1.25x at 1,024 on the
  embedded model (docs/speed.md), so activations count ALLOCATOR_OVERHEAD times on CPU (fused LoRA
  layers leave few such temporaries: FUSED_ALLOCATOR_OVERHEAD).

Time per epoch is training FLOPs / (the matmul rate measured now on this machine x the share of it
hone's loop reached in benchmarks/train_throughput.py). For a named GPU it is the datasheet's dense
bf16 peak x an assumed utilisation, and the output says so.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

GB = 1024 ** 3
ALLOCATOR_OVERHEAD = 1.6          # CPU: peak RSS growth / activation estimate (measured 1.25-1.75)
# The same with LoRA layers fused into one autograd node (training/precision.py), which leaves far fewer
# freed temporaries for glibc to keep: measured 1.06 (8 x 120-token LoRA run of the embedded model, 1,948 MB).
FUSED_ALLOCATOR_OVERHEAD = 1.1
# hone's LoRA loop reached 47% of the bf16 matmul peak by this module's FLOP count (benchmarks/README.md,
# 2026-11-23: 7,624 tokens in 23.1 s on 2 idle threads, peak 412 GFLOP/s).
CPU_SHARE_OF_PEAK = 0.47
GPU_SHARE_OF_PEAK = 0.35          # assumed for GPUs: not measured by hone
GPU_RUNTIME_BYTES = int(1.0 * GB)  # CUDA context + libraries: assumed, not measured by hone
LM_METHODS = ("full", "freeze", "lora", "dora", "qlora", "adapters", "prompt_tuning", "prefix_tuning", "ia3",
              "bitfit")

# Dense bf16 (fp16 where the card has no bf16) tensor-core peak, TFLOP/s, and memory, GiB: datasheets.
GPUS = {
    "h200": (989, 141), "h100": (989, 80), "a100": (312, 80), "a100-40gb": (312, 40), "l40s": (362, 48),
    "a10": (125, 24), "l4": (121, 24), "rtx4090": (165, 24), "v100": (125, 32), "t4": (65, 16),
}

# Published configs of Llama-architecture models, for planning by size ("7b") without the model.
REFERENCE_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "135m": ("SmolLM2-135M", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                  num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                  tie_word_embeddings=True)),
    "360m": ("SmolLM2-360M", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                  num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                                  tie_word_embeddings=True)),
    "1.7b": ("SmolLM2-1.7B", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                                  num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,
                                  tie_word_embeddings=True)),
    "7b": ("Llama-2-7B", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
    "8b": ("Llama-3.1-8B", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)),
    "13b": ("Llama-2-13B", dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                num_attention_heads=40, num_key_value_heads=40, vocab_size=32000)),
    "70b": ("Llama-3.1-70B", dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                  num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)),
}


@dataclass
class MethodPlan:
    method: str
    trainable: int = 0
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0          # with the allocator overhead on CPU
    runtime: int = 0
    seconds_per_epoch: float = 0.0
    fits: bool = False
    refused: str | None = None    # why the method cannot run on this model

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime


@dataclass
class Plan:
    model: str
    described_as: str             # where the shape came from
    parameters: int
    length: int
    batch: int
    micro_batch: int
    examples: int
    device: str                   # "this CPU (...)" or a GPU name
    capacity: int                 # bytes available for training
    speed_note: str
    methods: list[MethodPlan] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        for row, method in zip(out["methods"], self.methods):
            row["total"] = method.total
        return out


# ---------------------------------------------------------------- the model's shape, without weights

def _size_in_parameters(text: str) -> float | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mMbB])", text.strip())
    if not match:
        return None
    return float(match.group(1)) * (1e6 if match.group(2).lower() == "m" else 1e9)


def _reference_size(key: str) -> float:
    size = _size_in_parameters(key)
    assert size is not None  # REFERENCE_SHAPES is keyed by sizes
    return size


def model_config(spec: str):
    """(transformers config, description) for a catalogue name, a local folder or a size like 7b."""
    import transformers

    size = _size_in_parameters(spec)
    if size is None:
        from hone.models.catalogue import resolve_model

        resolved = resolve_model(spec)
        return transformers.AutoConfig.from_pretrained(resolved.path), str(spec)
    # The reference model nearest in size; other sizes scale its number of layers.
    key = min(REFERENCE_SHAPES, key=lambda k: abs(math.log(_reference_size(k) / size)))
    name, shape = REFERENCE_SHAPES[key]
    config = transformers.LlamaConfig(**shape)
    if abs(math.log(_reference_size(key) / size)) > 0.05:
        per_layer = _block_parameters(config)
        embedding = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
        config.num_hidden_layers = max(1, round((size - embedding) / per_layer))
        return config, f"{spec}: {name}'s shape with {config.num_hidden_layers} layers"
    return config, f"{spec}: {name}'s shape"


def _block_parameters(config) -> int:
    hidden, mlp = config.hidden_size, config.intermediate_size
    kv = hidden * config.num_key_value_heads // config.num_attention_heads
    return 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * mlp + 2 * hidden


def meta_causal_lm(config):
    import torch
    import transformers

    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


# ---------------------------------------------------------------- memory and time per method

def _quantized_weight_bytes(model, quantize: str) -> int:
    """Frozen linear weights as qlora stores them: NF4 packs two per byte plus a 4-byte scale per 64;
    int8 one byte plus a 4-byte scale per output row."""
    from hone.methods.quantized import _quantizable

    saved = 0
    for _, _, layer in _quantizable(model):
        n = layer.weight.numel()
        packed = n // 2 + 4 * (n // 64) if quantize == "nf4" else n + 4 * layer.weight.shape[0]
        saved += n * layer.weight.element_size() - packed
    return saved


def _flops_per_token(model, length: int) -> tuple[float, float]:
    """(forward, backward) FLOPs per token: 2 per weight in each matmul the token passes, attention's
    two L x d products per layer, and a backward that computes input gradients from the lowest
    trainable layer up plus weight gradients for what trains."""
    from hone.methods.memory import _layers_in_backward
    from hone.methods.structure import transformer_blocks, unwrap

    config = unwrap(model).config
    blocks = transformer_blocks(model)
    layers = len(blocks) if blocks is not None else config.num_hidden_layers
    block_params = sum(p.numel() for p in blocks[0].parameters()) if blocks is not None else 0
    head = config.vocab_size * config.hidden_size
    attention = 4 * length * config.hidden_size
    forward = 2 * layers * block_params + layers * attention + 2 * head
    in_backward = _layers_in_backward(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backward = 2 * in_backward * block_params + 2 * in_backward * attention + 2 * head + 2 * trainable
    return float(forward), float(backward)


def plan_method(config, method: str, length: int, micro_batch: int, gpu: str | None, runtime: int,
                rate: float, tokens_per_epoch: int) -> MethodPlan:
    """Memory and time for one method; a method the model refuses is reported, not raised."""
    from hone.config import build_config
    from hone.errors import UserError
    from hone.methods import apply_method, count_parameters, estimate_memory
    from hone.training.precision import bf16_frozen_linears, pick_attention

    row = MethodPlan(method)
    section = build_config({"method": {"name": "lora" if method == "qlora" else method}}).method
    model = meta_causal_lm(config)
    try:
        model = apply_method(model, section)
    except UserError as error:
        row.refused = str(error)
        return row
    fused = False
    if gpu is None and method != "full":
        bf16_frozen_linears(model)      # what hone does on a CPU with bf16 matmuls
        fused = any(getattr(m, "hone_fused", False) for m in model.modules())
    eager = pick_attention("cpu" if gpu is None else "cuda", length) == "eager"
    memory = estimate_memory(model, micro_batch, length, eager_attention=eager)
    row.trainable = count_parameters(model).trainable
    row.weights = memory.weights - (_quantized_weight_bytes(model, "nf4") if method == "qlora" else 0)
    row.gradients, row.optimizer = memory.gradients, memory.optimizer
    # CPU: fp32 activations and glibc's retained memory; GPU: autocast keeps them mostly in bf16.
    overhead = 0.5 if gpu is not None else FUSED_ALLOCATOR_OVERHEAD if fused else ALLOCATOR_OVERHEAD
    row.activations = int(memory.activations * overhead)
    row.runtime = runtime
    forward, backward = _flops_per_token(model, length)
    row.seconds_per_epoch = tokens_per_epoch * (forward + backward) / rate
    return row


# ---------------------------------------------------------------- this machine

def resident_bytes() -> int:
    """This process's resident memory now: Python + torch + transformers + peft, as `hone train` has."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
        return values.get("MemAvailable", values.get("MemTotal", 0))
    except (OSError, ValueError, IndexError):
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def matmul_rate(dtype_name: str, threads: int, seconds: float = 1.0, size: int = 1024) -> float:
    """Sustained FLOP/s of a square matmul on this machine, now (best of repeated runs)."""
    import time

    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size ** 3 / (time.perf_counter() - started))
    return best


# ---------------------------------------------------------------- the plan

def make_plan(model: str, methods: list[str] | None = None, length: int = 512, batch: int = 8,
              examples: int = 1000, gpu: str | None = None, threads: int | None = None,
              micro_batch_tokens: int | None = None) -> Plan:
    from hone.errors import ConfigError
    from hone.hardware import cpu_has_bf16, pick_threads
    from hone.models.load import quiet_transformers
    from hone.training.step import CPU_MICRO_BATCH_TOKENS

    quiet_transformers()
    if gpu is not None and gpu.lower() not in GPUS:
        raise ConfigError(f"unknown GPU {gpu!r}; hone plan knows {', '.join(GPUS)}", field="--gpu")
    config, described = model_config(model)
    if gpu is None:
        cap = micro_batch_tokens or CPU_MICRO_BATCH_TOKENS
        micro = max(1, min(batch, cap // max(1, length)))
        n = pick_threads(threads)
        bf16 = cpu_has_bf16()
        peak = matmul_rate("bf16" if bf16 else "fp32", n)
        rate = peak * CPU_SHARE_OF_PEAK
        device = f"this CPU ({n} thread{'s' if n > 1 else ''}, {available_bytes() / GB:.1f} GB available)"
        speed = (f"{'bf16' if bf16 else 'fp32'} matmul measured now at {peak / 1e9:.0f} GFLOP/s x "
                 f"{CPU_SHARE_OF_PEAK:.0%} (the share hone's loop reached in benchmarks/train_throughput.py)")
        capacity, runtime = available_bytes(), resident_bytes()
    else:
        tflops, memory_gb = GPUS[gpu.lower()]
        micro = batch if micro_batch_tokens is None else max(1, min(batch, micro_batch_tokens // max(1, length)))
        rate = tflops * 1e12 * GPU_SHARE_OF_PEAK
        device = f"{gpu.upper()} ({memory_gb} GB)"
        speed = (f"datasheet bf16 peak {tflops} TFLOP/s x {GPU_SHARE_OF_PEAK:.0%} assumed utilisation "
                 "(not measured by hone); runtime memory 1 GB assumed")
        capacity, runtime = int(memory_gb * GB * 0.95), GPU_RUNTIME_BYTES
    tokens = examples * length
    rows = [plan_method(config, m, length, micro, gpu, runtime, rate, tokens) for m in (methods or LM_METHODS)]
    for row in rows:
        row.fits = row.refused is None and row.total <= capacity
    parameters = sum(p.numel() for p in meta_causal_lm(config).parameters())
    return Plan(str(model), described, parameters, length, batch, micro, examples, device, capacity, speed, rows)
