"""Low-bit S + L⊙B in the model pipeline: Rice-coded positions and L per group of columns are saved
as counted and reload to the solved layer; ``compress --bits`` takes the recipe for that size."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from slabopt.llm import cli  # noqa: E402
from slabopt.llm.loading import load_compressed  # noqa: E402
from slabopt.llm.recipe import COMPARE_PRESETS, recommend  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

import slabopt  # noqa: E402
from slabopt.positions import rice_bits  # noqa: E402

from ._llm import check_forward, quick_compress_args  # noqa: E402


def _obs_result(m=32, n=72, bits=2.75, l_group=32, q=3):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    X = torch.randn(256, n, generator=g, dtype=torch.float64)
    return slabopt.solve(W, X, method="slab_obs", bits=bits, rank=1, sparse_bits=q, l_group=l_group)


@pytest.mark.parametrize("l_group", [None, 32, 24])
def test_rice_positions_and_grouped_factors_are_stored_as_counted(tmp_path, l_group):
    """The saved tensors hold the counted bits (the Rice codes padded to a byte, the small layout
    tensors aside), and the reloaded layer is the solved Ŵ up to 16-bit rounding of the factors."""
    from safetensors.torch import load_file, save_file

    res = _obs_result(l_group=l_group)
    save_file(SLaBLinear.from_result(res).state_dict(), str(tmp_path / "l.safetensors"))
    state = load_file(str(tmp_path / "l.safetensors"))
    assert "rice" in state and "mask" not in state
    assert ("l_group" in state) == (l_group is not None)
    layer = SLaBLinear.empty_like_state(state, res.shape)
    assert torch.equal(layer.positions(), torch.as_tensor(np.asarray(res.sparse.to_dense()) != 0)
                       | _kept(res))
    torch.testing.assert_close(layer.reconstruct(torch.float64), res.reconstruct(torch.float64),
                               rtol=0, atol=2e-3 * float(res.reconstruct().abs().max()))
    m, n = res.shape
    layout = ("l_group", "value_layout")
    stored = sum(8 * t.numel() * t.element_size() for k, t in state.items() if k not in layout)
    padding = m * (8 * -(-n // 8) - n)  # signs: whole bytes per row
    k = res.sparse_codes.shape[1]
    padding += m * (8 * -(-k * 3 // 8) - k * 3)  # codes: whole bytes per row
    code = rice_bits(np.asarray(res.sparse.indptr), np.asarray(res.sparse.indices), n)
    padding += 8 * -(-code // 8) - code
    assert stored - padding == res.bits


def _kept(res) -> torch.Tensor:
    """The m×n pattern of the result's S (entries kept even where their value is 0)."""
    m, n = res.shape
    mask = torch.zeros(m, n, dtype=torch.bool)
    indptr = torch.as_tensor(res.sparse.indptr)
    rows = torch.repeat_interleave(torch.arange(m), indptr[1:] - indptr[:-1])
    mask[rows, torch.as_tensor(res.sparse.indices).long()] = True
    return mask


def test_grouped_layer_forward_paths_agree():
    """Fused, blocked and reference forwards of a grouped, Rice-coded layer equal x Ŵᵀ."""
    mod = SLaBLinear.from_result(_obs_result(l_group=24))
    x = torch.randn(70, 72, generator=torch.Generator().manual_seed(1))
    assert mod.fused_applies(x[:2])
    check_forward(mod, mod.fused_forward(x[:2]), x[:2])
    check_forward(mod, mod.blocked_forward(x), x)
    check_forward(mod, mod.reference_forward(x[:3]), x[:3])
    check_forward(mod, mod(x), x)


def test_cli_bits_without_method_takes_the_recipe(tmp_path, capsys):
    """compress --bits 2.5 names the recipe it uses, stores Rice-coded positions, and the whole
    folder's linear layers stay within 2.5 bits per weight as counted."""
    base = quick_compress_args(tmp_path)
    out = tmp_path / "b25"
    code = cli.main([*base, "--bits", "2.5", "--rank", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "--bits 2.5: using slab_obs" in captured.out
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["method"] == "slab_obs" and man["settings"]["bits"] == 2.5
    assert man["settings"]["positions"] == "rice"
    weights = sum(e["shape"][0] * e["shape"][1] for e in man["layers"])
    assert sum(e["bits"] for e in man["layers"]) <= 2.5 * weights
    model, _ = load_compressed(out)
    assert any(isinstance(m, SLaBLinear) and hasattr(m, "rice") for m in model.modules())


def test_cli_bits_rejects_ratio_and_explains(tmp_path, capsys):
    base = quick_compress_args(tmp_path)
    code = cli.main([*base, "--bits", "2.5", "--ratio", "0.8", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "not both" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_compare_at_bits_runs_each_method_at_each_size(tmp_path, capsys):
    """compare --bits: gptq takes the largest layout that fits each size, checked on each layer
    (2-bit codes in groups of 64 cost 2.8 bits on the tiny model's 80-column layers: skipped, saying
    why), slab_obs the size itself (Rice-coded positions); every row stays within its size."""
    from ._llm import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt")
    work = tmp_path / "w"
    code = cli.main(["compare", "--model", str(ckpt), "--bits", "2.5", "4", "--methods", "gptq", "slab_obs",
                     "--calib-tokens", "32", "--seqlen", "16", "--tokens", "32", "--max-iter", "1",
                     "--work-dir", str(work), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads((work / "results.json").read_text())["rows"]
    got = {(r["method"], r["bits"]) for r in rows if r["method"] != "dense"}
    assert got == {("gptq", 4.0), ("slab_obs", 2.5), ("slab_obs", 4.0)}
    assert "gptq 2.5 bits skipped" in captured.out and "not reachable" in captured.out
    for folder in work.iterdir():
        if not folder.is_dir():
            continue
        man = json.loads((folder / "manifest.json").read_text())
        if not man["complete"]:  # the skipped gptq run stopped at its first layer
            assert folder.name.startswith("gptq-b2.5")
            continue
        target = float(folder.name.split("-b")[1].split("-")[0])
        weights = sum(e["shape"][0] * e["shape"][1] for e in man["layers"])
        assert sum(e["bits"] for e in man["layers"]) <= target * weights
        if man["settings"]["method"] == "gptq":
            assert man["settings"]["options"] == {"bits": 3, "group_size": 64}
        else:
            assert man["settings"]["positions"] == "rice"
    assert "2.5 bits" in (work / "results.md").read_text()


def test_cli_ratio_without_method_below_the_slab_floor_takes_the_recipe(tmp_path, capsys):
    """compress --ratio 0.8125 without --method (3 bits per weight on disk) uses the recipe of
    that size, not the slab default that collapses there, and says so; at ratio 0.5 (8 bits) the
    default stays slab."""
    base = quick_compress_args(tmp_path)
    code = cli.main([*base, "--ratio", "0.8125", "--rank", "1", "--out", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "--ratio 0.8125 is 3 bits per weight on disk" in captured.out and "slab_obs" in captured.out
    assert not [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert man["settings"]["method"] == "slab_obs" and man["settings"]["bits"] == 3.0
    weights = sum(e["shape"][0] * e["shape"][1] for e in man["layers"])
    assert sum(e["bits"] for e in man["layers"]) <= 3.0 * weights
    cfg = recommend(ratio=0.5).config
    assert (cfg.method, cfg.ratio) == ("slab", 0.5)


def test_cli_warns_before_a_collapsing_recipe(tmp_path, capsys):
    """compress --method slab --ratio 0.78125 (3.5 bits on disk) says in one line, before it
    starts, that the tables mark it as collapsing and what to use instead."""
    base = quick_compress_args(tmp_path)
    code = cli.main([*base, "--method", "slab", "--ratio", "0.78125", "--out", str(tmp_path / "w")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "collapses" in lines[0] and "--bits" in lines[0]


def test_compare_recipe_takes_the_recommended_method_at_each_size(tmp_path, capsys):
    """compare --methods recipe: at each --bits the recipe of slabopt.recipes (slab_obs with rank 1,
    its q and Rice positions below the crossover, GPTQ's layout above), labelled with what it ran;
    the table explains its columns."""
    from slabopt.recipes import CROSSOVER_BITS

    from ._llm import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt")
    work = tmp_path / "w"
    high = 6.0  # the quantiser of the recipe at 6 bits fits the tiny 48-column layers
    assert high > CROSSOVER_BITS
    code = cli.main(["compare", "--model", str(ckpt), "--bits", "2.5", str(high), "--methods", "recipe",
                     "--calib-tokens", "32", "--seqlen", "16", "--tokens", "32", "--max-iter", "1",
                     "--work-dir", str(work), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = {r["bits"]: r for r in json.loads((work / "results.json").read_text())["rows"] if r.get("bits")}
    assert rows[2.5]["method"] == "recipe" and rows[2.5]["recipe"] == "slab_obs"
    assert rows[high]["recipe"] == "gptq"
    low = next(f for f in work.iterdir() if f.is_dir() and "-b2.5" in f.name)
    st = json.loads((low / "manifest.json").read_text())["settings"]
    assert (st["method"], st["rank"], st["sparse_bits"], st["positions"]) == ("slab_obs", 1, 3, "rice")
    md = (work / "results.md").read_text()
    assert "| recipe (slab_obs) |" in md and "What the columns say" in md


def test_compare_quick_runs_the_recipe():
    quick = COMPARE_PRESETS["quick"]
    assert "recipe" in quick["methods"] and quick["bits"]


def test_a_pattern_without_method_is_not_dropped_by_the_recipe(tmp_path, capsys):
    """The size recipes store row-pattern S or quantiser codes: --pattern N:M with --bits (or a small
    --ratio) and no --method is refused in one line, before any work, instead of dropping the pattern."""
    base = quick_compress_args(tmp_path)
    code = cli.main([*base, "--bits", "6", "--pattern", "2:4", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--pattern 2:4" in err and "--method" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
