"""Peak memory of evaluation and of the coded-S path (the default recipe), on small models.

- Perplexity (``evaluate_model``, and the zero-shot scoring that ``slabopt eval`` runs on the same
  model afterwards) must not keep a dense Ŵ per compressed layer: at no forward may the compressed
  layers together hold more than one layer's dense weight, and none is left afterwards.
- One layer of the default recipe (positions bitmask, coded S with auto bits, 2 refit rounds)
  through the pipeline's steps: the solve, ``SLaBLinear.from_result`` and the calibration
  forward's ``reconstruct`` in bfloat16. Their peaks are measured as VmHWM in a fresh process
  whose freed blocks above 1 MiB go back to the system (``heap.limit_heap_retention``), with
  the row-block sizes scaled down so that the 512×1024 layer is split into as many blocks as a
  Llama-7B layer with the default sizes; bounds are in float32 copies of the layer (F = 4·m·n
  bytes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from slabopt.llm import cli, data, heap  # noqa: E402
from slabopt.llm.evaluate import evaluate_model, load_target, perplexity  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

from ._llm import quick_compress_args  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- evaluation
def _dense_bytes(mod: SLaBLinear) -> int:
    """Bytes of the m·n-element (or larger) tensors and arrays a layer keeps beyond its buffers."""
    import numpy as np

    mn = mod.out_features * mod.in_features
    held = 0
    for obj in (mod, mod._packed or None):
        for v in vars(obj).values() if obj is not None else ():
            if isinstance(v, torch.Tensor) and v.numel() >= mn:
                held += v.numel() * v.element_size()
            elif isinstance(v, np.ndarray) and v.size >= mn:
                held += v.nbytes
    return held


@pytest.fixture(scope="module")
def coded_folder(tmp_path_factory):
    """A tiny checkpoint compressed with the default recipe (coded S, bitmask positions)."""
    tmp = tmp_path_factory.mktemp("coded")
    out = tmp / "c"
    assert cli.main([*quick_compress_args(tmp), "--out", str(out)]) == 0
    return out


def test_perplexity_holds_at_most_one_dense_layer(coded_folder):
    """At every compressed layer's forward of ``evaluate_model``, all compressed layers together
    hold at most one layer's dense weight (float32), none afterwards; same perplexity as with Ŵ kept."""
    model, tok, path, _ = load_target(str(coded_folder), None, "float32", torch.device("cpu"))
    layers = [mod for mod in model.modules() if isinstance(mod, SLaBLinear)]
    assert layers and all(hasattr(mod, "value_layout") for mod in layers)
    one_layer = max(mod.out_features * mod.in_features * 4 for mod in layers)
    held = []
    hooks = [mod.register_forward_hook(lambda *_: held.append(sum(map(_dense_bytes, layers))))
             for mod in layers]
    res = evaluate_model(model, tok, path, tokens=64, seqlen=16)
    for h in hooks:
        h.remove()
    assert len(held) == 4 * len(layers)  # 4 windows, every layer called once per window
    assert max(held) <= one_layer
    assert sum(map(_dense_bytes, layers)) == 0  # nothing left for the zero-shot scoring after it
    assert not any(mod.cache_weight for mod in layers)
    # the same perplexity as with every dense Ŵ kept (float rounding apart)
    for mod in layers:
        mod.set_cache_weight(True)
    test = data.token_splits(tok, path)[1]
    cached = perplexity(model, test, 64, 16, bos=data.bos_token(tok))
    assert res["perplexity"] == pytest.approx(cached["perplexity"], rel=1e-5)


# --------------------------------------------------------------------------- the coded S path
PROBE = textwrap.dedent("""
    import json, re
    from pathlib import Path
    import torch
    import slabopt
    from slabopt import _backend, sparse_codes
    from slabopt.llm import cli, heap, pipeline, slablinear
    from slabopt.llm.slablinear import SLaBLinear

    heap.limit_heap_retention()
    torch.set_num_threads(1)
    m, n = 512, 1024
    # row blocks scaled down with the layer: 2^20 entries are 1/43 of a 11008x4096 layer
    sparse_codes.ROWS_PER_CHUNK = _backend.BLOCK_ENTRIES = (m * n) // 43
    slablinear.CODE_ROWS = max(1, 256 * m // 11008)

    def rss():
        t = Path("/proc/self/status").read_text()
        kib = {k: int(re.search(rf"^{k}:\\s+(\\d+) kB", t, re.M).group(1)) for k in ("VmRSS", "VmHWM")}
        return {k: v * 1024 for k, v in kib.items()}

    def step(fn):
        Path("/proc/self/clear_refs").write_text("5")
        before = rss()["VmRSS"]
        out = fn()
        return out, (rss()["VmHWM"] - before) / (4 * m * n)

    class Captured(BaseException):
        pass

    def capture(model, out_dir, config, **kwargs):
        raise Captured(config)

    pipeline.compress_checkpoint, run = capture, pipeline.compress_checkpoint
    try:  # the settings `slabopt compress` builds from its defaults (with 2 iterations)
        cli.main(["compress", "--out", "unused", "--max-iter", "2"])
    except Captured as c:
        cfg = c.args[0]
    pipeline.compress_checkpoint = run
    torch.manual_seed(0)
    lin = torch.nn.Linear(n, m, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(m, n) * 0.02)
    stats = {"sq": (torch.rand(n) + 0.5) ** 2}
    peaks = {}
    for _ in range(2):  # the first round compiles the kernels and warms the allocator up
        res, peaks["solve"] = step(lambda: pipeline._solve_layer(lin, stats, 0, 0, "x", cfg, False))
        mod, peaks["from_result"] = step(lambda: SLaBLinear.from_result(
            res, store_dtype=torch.float16, compute_dtype=torch.bfloat16))
        res = None
        _, peaks["reconstruct"] = step(mod.reconstruct)
    peaks["value_bits"] = int(mod.value_layout[0])
    peaks["positions"] = cfg.positions
    print(json.dumps(peaks))
""")


@pytest.fixture(scope="module")
def coded_layer_peaks():
    """The probe's peaks (float32 copies of the layer) from a fresh process."""
    if not Path("/proc/self/clear_refs").exists() or heap._libc() is None:
        pytest.skip("needs Linux's /proc/self/clear_refs and glibc")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_probe_runs_the_default_recipe(coded_layer_peaks):
    """The probe measured coded S with bitmask positions, what `slabopt compress` does by default."""
    assert 2 <= coded_layer_peaks["value_bits"] <= 8
    assert coded_layer_peaks["positions"] == "bitmask"


@pytest.mark.parametrize(("part", "bound"), [("solve", 7.0), ("from_result", 1.0), ("reconstruct", 3.0)])
def test_coded_layer_peak(coded_layer_peaks, part, bound):
    """Peak above the step's start in float32 copies of the layer (the working set of a 7B layer
    is these numbers times 0.168 GiB)."""
    assert coded_layer_peaks[part] <= bound
