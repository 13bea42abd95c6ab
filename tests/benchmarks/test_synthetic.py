"""The synthetic benchmark's tasks have the right targets, and one job runs end to end."""
import torch

from benchmarks.synthetic.__main__ import split_variants
from benchmarks.synthetic.tasks import IGNORE, NEEDLE_MARK, NEEDLE_QUERY, S3, TASKS, mqar_pairs
from benchmarks.synthetic.train import EXPERIMENTS, Settings, parse_variant, run_job


def batch(task: str, length: int = 40, size: int = 8):
    return TASKS[task].make_batch(size, length, torch.Generator().manual_seed(0))


def test_parity_targets_are_prefix_parities():
    x, y = batch("parity")
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        assert row_y == [sum(row_x[: t + 1]) % 2 for t in range(len(row_x))]


def test_s3_targets_are_prefix_products():
    x, y = batch("s3")
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        state = (0, 1, 2)
        for g, target in zip(row_x, row_y):
            state = tuple(S3[g][state[i]] for i in range(3))  # g o (previous product)
            assert S3[target] == state


def test_mqar_queries_ask_for_the_value_stored_with_their_key():
    x, y = batch("mqar", length=64)
    n = mqar_pairs(64)
    assert (y[:, : 2 * n] == IGNORE).all()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        stored = dict(zip(row_x[0 : 2 * n : 2], row_x[1 : 2 * n : 2]))
        assert len(stored) == n
        for key, target in zip(row_x[2 * n :], row_y[2 * n :]):
            assert stored[key] - TASKS["mqar"].num_classes == target


def test_needle_target_is_the_value_after_the_marker():
    x, y = batch("needle", length=50)
    assert (x[:, -1] == NEEDLE_QUERY).all() and (y[:, :-1] == IGNORE).all()
    for row_x, target in zip(x.tolist(), y[:, -1].tolist()):
        assert row_x.count(NEEDLE_MARK) == 1
        assert row_x[row_x.index(NEEDLE_MARK) + 1] == target


def test_variants_parse_options():
    assert split_variants("gla,deltanet:allow_neg_eigval=True,head_dim=32,mamba2,deltaproduct:n_h=3") == [
        "gla", "deltanet:allow_neg_eigval=True,head_dim=32", "mamba2", "deltaproduct:n_h=3"]
    assert parse_variant("deltanet:allow_neg_eigval=True,head_dim=32") == (
        "deltanet", {"allow_neg_eigval": True, "head_dim": 32})


def test_one_job_trains_and_scores_every_test_length():
    row = run_job("deltanet:allow_neg_eigval=True", "parity", Settings(steps=2, batch=4, eval_batches=1))
    assert "error" not in row, row
    assert set(row) >= {"acc_64", "acc_256", "train_loss", "params"}
    assert 0.0 <= row["acc_256"] <= 1.0
    assert set(EXPERIMENTS) >= {"mqar_L64", "parity", "s3", "needle"}
