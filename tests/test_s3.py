"""How large arrays and uploads are cut into parts (``transfer.part_size``)."""

import pytest

from kedro_keras._io.transfer import PART_SIZE, part_size

MiB = 2**20


@pytest.mark.parametrize("size_mb", [100, 403, 537, 668, 1_670, 4_012, 10_004])
@pytest.mark.parametrize("concurrency", [4, 8, 16])
def test_every_connection_takes_the_same_number_of_parts(size_mb, concurrency):
    size = size_mb * 10**6
    part = part_size(size, concurrency)
    parts = -(-size // part)
    assert 8 * MiB <= part <= PART_SIZE
    if size <= concurrency * PART_SIZE:
        assert parts <= concurrency  # one round
    else:  # every round full (one part short at most, from rounding): none runs on a few connections
        assert parts >= -(-parts // concurrency) * concurrency - 1


def test_a_668_mb_array_on_8_connections_goes_in_two_full_rounds():
    part = part_size(668 * 10**6, 8)
    assert -(-668 * 10**6 // part) == 16  # 64 MiB ranges made 11: 8, then 3 on their own


def test_small_sizes_and_a_chosen_size_are_unchanged():
    assert part_size(80 * MiB, 8) == 10 * MiB  # one round, a part per connection
    assert part_size(20 * MiB, 8) == 8 * MiB  # never under 8 MiB unless chosen
    assert part_size(4_000 * 10**6, 8, chosen=6 * MiB) == 6 * MiB
    assert part_size(100 * 10**9, 8, chosen=5 * MiB) == -(-100 * 10**9 // 10_000)  # S3's 10,000 parts
