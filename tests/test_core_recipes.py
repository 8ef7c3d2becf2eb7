"""The recipe for a size in bits per weight (slabopt.recipes): one rule, from the measured tables."""

import pytest

from slabopt.recipes import CROSSOVER_BITS, quantiser_shape, recipe_for_bits


@pytest.mark.parametrize("bits", [1.5, 2.0, 2.5, 2.74, 3.0, 3.25, 3.5, 4.0, 4.09])
def test_below_the_crossover_slab_obs_at_that_size(bits):
    rec = recipe_for_bits(bits)
    assert rec.method == "slab_obs" and rec.settings["bits"] == bits
    assert rec.settings["sparse_bits"] == (3 if bits < 2.75 else 4)
    assert rec.settings["positions"] == "rice" and rec.reason


@pytest.mark.parametrize("bits,shape", [(CROSSOVER_BITS, (4, None)), (4.2, (4, None)),
                                        (4.3, (4, 128)), (5.5, (5, 128)), (8.25, (8, 128)), (16, (8, 128))])
def test_from_the_crossover_the_largest_gptq_layout_that_fits(bits, shape):
    """GPTQ with the costliest layout of b + 32/G bits (per channel: b + 0.1) not above the size."""
    rec = recipe_for_bits(bits)
    assert rec.method == "gptq" and (rec.options["bits"], rec.options["group_size"]) == shape
    assert quantiser_shape(bits) == shape


def test_sizes_out_of_range_are_refused():
    with pytest.raises(ValueError, match="bits"):
        recipe_for_bits(0.5)
    with pytest.raises(ValueError, match="no quantiser layout"):
        quantiser_shape(2.05)


def test_collapsing_recipes_are_named_and_the_others_are_not():
    from slabopt.recipes import collapse_warning

    line = collapse_warning("slab", 4.5)
    assert line.startswith("warning: slab at under 5 bits") and "use gptq" in line
    assert "use slab_obs" in collapse_warning("slab", 3.5)
    assert "use slab_obs" in collapse_warning("wanda", 2.5)
    assert "gptq" in collapse_warning("gptq", 2.5, code_bits=2)
    assert collapse_warning("gptq", 3.25, code_bits=3) is None
    assert collapse_warning("slab", 8.0) is None
    assert collapse_warning("slab_obs", 2.5) is None


@pytest.mark.parametrize("bits", [5.0, 6.0, 8.0, 15.9])
def test_ratio_default_stays_slab_from_five_bits(bits):
    from slabopt.recipes import default_recipe_for_ratio

    assert default_recipe_for_ratio(bits) is None


@pytest.mark.parametrize("bits", [1.5, 2.5, 3.5, 4.0, 4.5, 4.99])
def test_ratio_default_below_five_bits_is_the_recipe_for_bits(bits):
    from slabopt.recipes import default_recipe_for_ratio

    assert default_recipe_for_ratio(bits) == recipe_for_bits(bits)
