"""kth_smallest is Tensor.kthvalue, bit for bit, at every rank (parasnn.runtime.order_statistics)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from parasnn.runtime.order_statistics import kth_smallest, percentile_value


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 4), size=st.integers(1, 60), distinct=st.integers(1, 60), seed=st.integers(0, 2**31 - 1),
       dim=st.sampled_from([0, 1, -1]), data=st.data())
def test_kth_smallest_is_kthvalue_at_every_rank(rows, size, distinct, seed, dim, data):
    generator = torch.Generator().manual_seed(seed)
    # few distinct values make ties, which must not change the answer
    pool = torch.randn(distinct, generator=generator) * 3
    values = pool[torch.randint(distinct, (rows, size), generator=generator)]
    if dim == 0:
        values = values.t().contiguous()  # (size, rows): the ranked axis first
    rank = data.draw(st.integers(1, size))
    expected = values.kthvalue(rank, dim=dim).values
    assert torch.equal(kth_smallest(values, rank, dim=dim), expected)


def test_kth_smallest_at_a_high_percentile_of_many_activations():
    values = torch.relu(torch.randn(3, 100_000, generator=torch.Generator().manual_seed(0)))
    for percentile in (50.0, 99.0, 99.9, 99.99):
        rank = int(round(values.shape[1] * percentile / 100))
        assert torch.equal(kth_smallest(values, rank, dim=1), values.kthvalue(rank, dim=1).values)


@pytest.mark.parametrize("rank", [0, 6])
def test_a_rank_outside_the_axis_is_refused_with_its_range(rank):
    with pytest.raises(ValueError, match=r"rank must lie in 1\.\.5"):
        kth_smallest(torch.arange(5.0), rank)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 3000), percentile=st.floats(0.0, 100.0), seed=st.integers(0, 2**31 - 1))
def test_percentile_value_is_the_sorted_element_at_the_rounded_rank(size, percentile, seed):
    values = torch.randn(2, size, generator=torch.Generator().manual_seed(seed))
    rank = max(1, min(size, int(round(size * percentile / 100))))  # at least the first, at most the last
    assert torch.equal(percentile_value(values, percentile, dim=1), values.sort(dim=1).values[:, rank - 1])
