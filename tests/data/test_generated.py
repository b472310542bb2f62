"""Generated tasks: the labels are checked by small solvers that read the answer from x alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ssmkit.data import IGNORE, build_task
from ssmkit.data.listops import decode, encode


def _all_rows(data):
    """(x, y, lengths) of all splits concatenated."""
    splits = list(data.splits().values())
    return tuple(torch.cat([getattr(s, f) for s in splits]) for f in ("x", "y", "lengths"))


def test_selective_copying_answers_are_the_data_tokens_in_order(small_config):
    data = build_task("selective-copying", small_config("selective-copying", length=40, n_data=6))
    itos = data.spec.itos
    blank, marker = itos.index("<blank>"), itos.index("<copy>")
    for x, y in zip(*_all_rows(data)[:2], strict=True):
        is_marker = x == marker
        first_marker = int(is_marker.int().argmax())
        assert bool(is_marker[first_marker:].all()) and not bool(is_marker[:first_marker].any())
        context = x[:first_marker]
        data_tokens = context[context != blank]
        scored = y != IGNORE
        assert torch.equal(scored, is_marker)  # exactly the marker positions are scored
        assert torch.equal(y[scored], data_tokens)
        assert len(data_tokens) == 6 and first_marker == 40


def test_copying_targets_are_the_leading_symbols_after_the_delimiter(small_config):
    for score_blanks in (False, True):
        c = small_config("copying", n_copy=5, delay=12, score_blanks=score_blanks)
        data = build_task("copying", c)
        itos = data.spec.itos
        blank, delim = itos.index("<blank>"), itos.index("<delim>")
        for x, y in zip(*_all_rows(data)[:2], strict=True):
            (where_delim,) = torch.nonzero(x == delim, as_tuple=True)
            assert len(where_delim) == 1
            symbols = x[(x != blank) & (x != delim)]
            assert len(symbols) == 5 and bool((x[:5] == symbols).all())
            answer_at = torch.arange(len(x)) > where_delim  # after the delimiter
            assert torch.equal(y[answer_at], symbols)
            rest = y[~answer_at]
            assert bool((rest == (blank if score_blanks else IGNORE)).all())
            assert int(where_delim) == 5 + 12 - 1 and len(x) == 12 + 2 * 5


def test_induction_heads_answer_follows_the_first_trigger(small_config):
    data = build_task("induction-heads", small_config("induction-heads", length=20))
    trigger = data.spec.itos.index("<trigger>")
    for x, y in zip(*_all_rows(data)[:2], strict=True):
        (where,) = torch.nonzero(x == trigger, as_tuple=True)
        assert len(where) == 2 and int(where[1]) == len(x) - 1
        assert int(where[0]) + 1 < len(x) - 1
        assert bool((y[:-1] == IGNORE).all()) and int(y[-1]) == int(x[where[0] + 1])


def test_mqar_answers_are_the_values_stored_with_the_queried_keys(small_config):
    c = small_config("mqar", length=40, n_pairs=6, n_queries=4, n_keys=10, n_values=5)
    data = build_task("mqar", c)
    itos = data.spec.itos

    def is_key(t):
        return itos[int(t)].startswith("k")

    def is_value(t):
        return itos[int(t)].startswith("v")

    for x, y in zip(*_all_rows(data)[:2], strict=True):
        store, t = {}, 0
        while t + 1 < len(x) and is_key(x[t]) and is_value(x[t + 1]):
            assert int(x[t]) not in store  # keys of one sequence are distinct
            store[int(x[t])] = int(x[t + 1])
            t += 2
        assert len(store) == 6
        scored = torch.nonzero(y != IGNORE, as_tuple=True)[0]
        assert len(scored) == 4 and bool((scored >= t).all())
        asked = [int(x[q]) for q in scored]
        assert len(set(asked)) == 4
        assert [int(y[q]) for q in scored] == [store[k] for k in asked]
        others = torch.ones(len(x), dtype=torch.bool)
        others[:t] = False
        others[scored] = False
        assert bool((x[others] == itos.index("<blank>")).all())


def test_adding_target_is_the_sum_of_the_marked_values(small_config):
    data = build_task("adding", small_config("adding", length=30))
    x, y, _ = _all_rows(data)
    marks = x[..., 1]
    assert bool(((marks == 0) | (marks == 1)).all())
    assert bool((marks[:, :15].sum(1) == 1).all()) and bool((marks[:, 15:].sum(1) == 1).all())
    torch.testing.assert_close(y[:, 0], (x[..., 0] * marks).sum(1))
    assert float(x[..., 0].min()) >= 0 and float(x[..., 0].max()) < 1


# ----------------------------------------------------------------------------------------------
# ListOps: an evaluator that parses the token strings with a stack


def _evaluate(tokens: list[str]) -> tuple[int, int, int]:
    """(value, deepest operator nesting, most arguments of one operator) of an expression."""
    stack: list[tuple[str, list[int]]] = []
    result, deepest, widest = None, 0, 0
    for tok in tokens:
        if tok.startswith("["):
            stack.append((tok, []))
            deepest = max(deepest, len(stack))
            continue
        if tok == "]":
            op, args = stack.pop()
            widest = max(widest, len(args))
            value = {
                "[MAX": max,
                "[MIN": min,
                "[SM": lambda a: sum(a) % 10,
                "[MED": lambda a: int(np.median(a)),  # LRA's definition
            }[op](args)
        else:
            value = int(tok)
        if stack:
            stack[-1][1].append(value)
        else:
            assert result is None, "two top-level expressions"
            result = value
    assert not stack and result is not None, "unbalanced brackets"
    return result, deepest, widest


def test_listops_labels_match_an_independent_evaluator(small_config):
    c = small_config("listops", max_depth=4, max_args=5, min_length=10, max_length=80)
    data = build_task("listops", c)
    x, y, lengths = _all_rows(data)
    seen = set()
    for xi, yi, n in zip(x, y, lengths, strict=True):
        n = int(n)
        assert bool((xi[n:] == data.spec.pad_id).all()) and bool((xi[:n] != data.spec.pad_id).all())
        tokens = [data.spec.itos[int(t)] for t in xi[:n]]
        value, deepest, widest = _evaluate(tokens)
        assert value == int(yi)
        assert 10 <= n <= 80 and deepest <= 4 - 1 and widest <= 5
        seen.add(tuple(tokens))
    assert len(seen) == len(y)  # no expression appears twice, so none is in two splits
    assert len(torch.unique(y)) >= 5


def test_listops_operators_follow_lra_semantics():
    assert _evaluate(["[MED", "1", "2", "]"])[0] == 1  # int(median) rounds down
    assert _evaluate(["[MED", "3", "9", "4", "]"])[0] == 4
    assert _evaluate(["[SM", "9", "8", "[MAX", "1", "7", "]", "]"])[0] == 4
    from ssmkit.data.listops import apply_op

    rng = np.random.default_rng(0)
    for op in ("[MIN", "[MAX", "[MED", "[SM"):
        for _ in range(50):
            args = list(rng.integers(0, 10, size=rng.integers(2, 11)))
            assert apply_op(op, [int(a) for a in args]) == _evaluate([op, *map(str, args), "]"])[0]


def test_listops_encode_decode_round_trip():
    text = "[MAX 2 9 [MIN 4 7 ] 0 ]"
    assert decode(encode(text)) == text
    with pytest.raises(ValueError, match="unknown ListOps token 'FOO'"):
        encode("[MAX FOO ]")


def test_listops_impossible_lengths_fail_clearly(small_config):
    c = small_config("listops", max_depth=2, max_args=2, min_length=50, max_length=60, n_train=2)
    with pytest.raises(ValueError, match="distinct expressions"):
        build_task("listops", c)


def _lra_string(tokens: list[str]) -> str:
    """Independent re-implementation of LRA's binary-tree printing: an operator with k
    arguments is wrapped as ( ( ... ( OP a1 ) a2 ) ... ak ) ] )."""
    pos = 0

    def node() -> str:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok not in ("[MIN", "[MAX", "[MED", "[SM"):
            return tok
        text = tok
        while tokens[pos] != "]":
            text = f"( {text} {node()} )"
        pos += 1
        return f"( {text} ] )"

    out = node()
    assert pos == len(tokens)
    return out


def test_listops_parens_are_lras_strings_of_the_same_trees(small_config):
    c = small_config("listops", max_depth=4, max_args=5, min_length=10, max_length=80)
    plain = build_task("listops", c)
    lra = build_task("listops", replace(c, parens=True))
    assert torch.equal(lra.train.y, plain.train.y)
    longest = max(int(s.lengths.max()) for s in lra.splits().values())
    assert lra.spec.max_length == longest > c.max_length
    for xa, na, xb, nb in zip(plain.train.x, plain.train.lengths, lra.train.x, lra.train.lengths,
                              strict=True):  # fmt: skip
        tokens = decode(xa[: int(na)]).split()
        assert decode(xb[: int(nb)]) == _lra_string(tokens)
    with_parens = decode(lra.train.x[0, : int(lra.train.lengths[0])])
    assert with_parens.startswith("(") and with_parens.replace("( ", "").replace(" )", "") == (
        decode(plain.train.x[0, : int(plain.train.lengths[0])])
    )
