"""``RowBuckets``: the cut that minimises attention's cells, the row order, and the layouts round trip."""

import torch

from alignbench.rl.buckets import RowBuckets, _cuts


def test_the_cut_minimises_cells_plus_the_overhead_by_hand():
    # extents 10, 9, 2, 1 with no prompt: one bucket costs 4 * 10 * 10 = 400 cells; cutting after the
    # second row costs 2 * 100 + 2 * 4 = 208; cutting every row 100 + 81 + 4 + 1 = 186
    assert _cuts([10, 9, 2, 1], prefix=0, overhead=0) == [1, 2, 3, 4]
    assert _cuts([10, 9, 2, 1], prefix=0, overhead=20) == [2, 4]  # 208 + 40 < 186 + 80 and < 400 + 20
    assert _cuts([10, 9, 2, 1], prefix=0, overhead=1000) == [4]
    # a prompt of 5 keys: (2 * 10 * 15 + 2 * 2 * 7) + 2 * 50 = 428 against 4 * 10 * 15 + 50 = 650
    assert _cuts([10, 9, 2, 1], prefix=5, overhead=50) == [2, 4]


def test_rows_are_ordered_longest_first_and_the_layouts_round_trip():
    lengths = [2, 5, 0, 4, 1]
    real = torch.arange(6)[None] < torch.tensor(lengths)[:, None]  # [5, 6], each row a prefix
    buckets = RowBuckets(real, prefix=3, overhead=0)
    assert buckets.order.tolist() == [1, 3, 0, 4, 2]
    # flat: the real cells of the [5, 6] grid, row by row in that order
    want = [6 * r + c for r in (1, 3, 0, 4) for c in range(lengths[r])]
    assert buckets.flat.tolist() == want
    assert [(b.start, b.end, b.width, b.count) for b in buckets.buckets] == [(0, 1, 5, 5), (1, 2, 4, 4),
                                                                             (2, 3, 2, 2), (3, 4, 1, 1)]
    values = torch.randn(12, 3)  # one per real cell, in flat's order
    runs = buckets.split(values)
    for bucket, run in zip(buckets.buckets, runs):
        grid = buckets.scatter(bucket, run)
        assert grid.shape == (bucket.size, bucket.width, 3)
        assert grid.abs().sum() == run.abs().sum()  # zeros in the pad cells
        torch.testing.assert_close(buckets.pick(bucket, grid), run)
    per_row = torch.arange(5)[buckets.order]
    assert [r.tolist() for r in buckets.rows(per_row)] == [[1], [3], [0], [4]]  # the empty row is left out


def test_near_equal_rows_share_a_bucket_and_keep_their_cells():
    real = torch.zeros(4, 8, dtype=torch.bool)
    real[0, :8] = real[1, :7] = real[2, :2] = True
    real[3, 1:3] = True  # a row whose cells do not start at 0 keeps its columns
    buckets = RowBuckets(real, prefix=4, overhead=30)
    assert [(b.size, b.width) for b in buckets.buckets] == [(2, 8), (2, 3)]
    second = buckets.buckets[1]
    rows = buckets.order[second.start:second.end].tolist()
    assert rows == [3, 2]  # extents 3 and 2
    grid = buckets.scatter(second, buckets.split(torch.arange(1.0, 20.0)[:, None])[1])[..., 0]
    assert grid.tolist() == [[0.0, 16.0, 17.0], [18.0, 19.0, 0.0]]


def test_a_batch_without_real_response_cells_scores_nothing():
    from alignbench.rl.logprobs import sequence_logprobs
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0))
    sequences = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 0, 0], [8, 9, 4, 0, 0], [8, 9, 4, 0, 0]])
    attention = (sequences != 0).long()
    response_mask = attention[:, 3:]
    logp = sequence_logprobs(model, sequences, attention, 3, response_mask, packed=True)
    assert logp.shape == (4, 2) and (logp == 0).all()
    logp.sum().backward()  # nothing to learn from, and no error
    with torch.no_grad():
        assert (sequence_logprobs(model.eval(), sequences, attention, 3, response_mask, fused=True) == 0).all()
