"""The packed open-session counters shared by the collector (writes) and the API (reads)."""

import pytest

from ovpnmon_common.counters import Counters, pack


def test_round_trip_with_64_bit_counters():
    ids, rx, tx = [7, 3, 11], [2**40 + 1, 0, 2**63 - 1], [5, 2**33, 9]
    found = Counters(pack(ids, rx, tx))
    assert len(found) == 3
    assert dict(found.items()) == {7: (2**40 + 1, 5), 3: (0, 2**33), 11: (2**63 - 1, 9)}
    assert found.get(11) == (2**63 - 1, 9)
    assert found.get(4) is None


def test_layout_is_little_endian_columns():
    assert pack([1, 2], [3, 4], [5, 6]) == b"".join(
        n.to_bytes(8, "little", signed=True) for n in (1, 2, 3, 4, 5, 6)
    )


def test_empty_and_malformed():
    assert len(Counters(pack([], [], []))) == 0
    with pytest.raises(ValueError, match="same length"):
        pack([1], [2, 3], [4])
    with pytest.raises(ValueError, match="not a multiple of 24"):
        Counters(b"\0" * 25)


@pytest.mark.parametrize("asked", [[], [3], [3, 4, 99], list(range(0, 40, 3)), list(range(50))])
def test_lookup_of_few_or_many_sessions_equals_one_get_each(asked):
    ids = list(range(0, 40, 2))
    found = Counters(pack(ids, [i * 10 for i in ids], [i * 100 for i in ids]))
    expected = {sid: found.get(sid) for sid in asked if found.get(sid) is not None}
    assert found.lookup(asked) == expected
