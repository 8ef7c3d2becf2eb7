"""The model pipeline is device-clean, checked on the CPU: ``compress`` → ``load_compressed`` →
``generate`` of a tiny model makes no non-scalar tensor in ``llm/`` or ``slabopt/`` without naming
its device (see tests/_torch_modes.py), for each kind of stored part."""

import pytest
import torch
from slabopt.llm import cli, load_compressed
from slabopt.llm.loading import saved_tokenizer

from ._llm import quick_compress_args
from ._torch_modes import FactoryRecorder

# each stores other buffers: bitmask + coded values, N:M codes, Rice positions, integer codes,
# binarized planes, two-level codes, a row offset (with refinement), L per column group
CONFIGS = {
    "slab": ["--rank", "1"],
    "nm": ["--pattern", "2:4"],
    "rice": ["--positions", "rice", "--sparse-bits", "none"],
    "gptq": ["--method", "gptq"],
    "billm": ["--method", "billm"],
    "two_level": ["--method", "two_level"],
    "offset": ["--method", "slab_offset", "--refine-steps", "1"],
    "l_group": ["--method", "slab_obs", "--l-group", "16"],
}


def generate(model, ids: torch.Tensor, fused: bool) -> torch.Tensor:
    """Three greedy new tokens after ``ids``; ``fused=False`` turns the numba kernels off, so every
    layer runs the pure-torch forward (the one a GPU without Triton takes)."""
    from slabopt.llm.slablinear import SLaBLinear

    for mod in model.modules():
        if isinstance(mod, SLaBLinear):
            mod.use_fused = fused
    with torch.no_grad():
        return model.generate(ids, do_sample=False, max_new_tokens=3, min_new_tokens=3, pad_token_id=0)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_compress_load_and_generate_name_every_device(tmp_path, config):
    """No factory call of llm/ or slabopt/ lacks a device from calibration to generation."""
    out = tmp_path / "out"
    with FactoryRecorder() as rec:
        assert cli.main([*quick_compress_args(tmp_path), *CONFIGS[config], "--out", str(out)]) == 0
        model, _ = load_compressed(out)
        ids = saved_tokenizer(out)("hello world", return_tensors="pt").input_ids
        fused, plain = generate(model, ids, True), generate(model, ids, False)
    assert fused.shape == plain.shape == (1, ids.shape[1] + 3)
    assert rec.found == []
