import pytest

from hyperfitting.errors import ConfigError
from hyperfitting.models.blocks import find_block_stack, linear_module_names, parse_block_selection


@pytest.mark.parametrize(
    "selection, expected",
    [
        ("all", [0, 1, 2, 3, 4, 5]),
        ("last:2", [4, 5]),
        ("first:3", [0, 1, 2]),
        ("1,3", [1, 3]),
        ("2-4", [2, 3, 4]),
        ("0, 4-5", [0, 4, 5]),
    ],
)
def test_block_selections(selection, expected):
    assert parse_block_selection(selection, 6) == expected


def test_selection_beyond_the_model_is_refused():
    with pytest.raises(
        ConfigError, match=r"Block selection 'last:50' asks for 50 blocks but the model has 30 \(blocks 0-29\)"
    ):
        parse_block_selection("last:50", 30)
    with pytest.raises(ConfigError, match=r"names block 30, but the model has blocks 0-29"):
        parse_block_selection("28-30", 30)
    with pytest.raises(ConfigError, match="Cannot read block selection"):
        parse_block_selection("top:5", 30)


def test_block_stack_found_in_every_architecture(tiny_model):
    stack = find_block_stack(tiny_model)
    assert len(stack) == 3
    assert stack.attribute in ("layers", "h")
    assert linear_module_names(stack)  # q/k/v/o and MLP projections, or GPT-2's Conv1D


def test_a_reversed_block_range_says_how_to_write_it():
    with pytest.raises(
        ConfigError, match=r"Block selection '5-2': the range 5-2 runs backwards; write it low to high, as 2-5\."
    ):
        parse_block_selection("5-2", 30)
