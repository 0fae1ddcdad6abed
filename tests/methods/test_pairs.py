"""Batches of clean/corrupted pairs in both patchings: each pair's scores equal a call with that pair alone
(float64, three layouts, pairs of one length and of several), the mean is the mean, and the result keeps
per-pair scores through save/load."""

from __future__ import annotations

import math

import pytest
import torch

import attrib
from attrib import PatchingResult
from attrib.errors import InputError
from attrib.methods.pairs import prepare_pairs
from attrib.methods.patching import activation_patching, attribution_patching
from tests.conftest import tiny_hf

METHODS = {"atp": attribution_patching, "acp": activation_patching}
# three pairs of one length, each pair differing at its own positions
SAME = ([[3, 14, 15, 9, 26, 5], [3, 11, 12, 13, 26, 5], [3, 4, 15, 9, 2, 5]],
        [[3, 14, 40, 9, 26, 7], [3, 11, 41, 13, 26, 5], [3, 8, 15, 9, 21, 5]])
# three pairs of lengths 6, 4 and 5
MIXED = ([[3, 14, 15, 9, 26, 5], [12, 13, 26, 5], [4, 15, 9, 2, 5]],
         [[3, 14, 40, 9, 26, 7], [12, 41, 26, 5], [8, 15, 9, 21, 5]])
TARGETS, CONTRASTS = [[7], [9], [11]], [[8], [10], [12]]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.allclose(a.nan_to_num(), b.nan_to_num(), atol=tol, rtol=tol), (a - b).abs().nan_to_num().max()


@pytest.fixture(scope="module", params=["gpt2", "llama", "neox"])
def model(request):
    return attrib.LanguageModel(tiny_hf(request.param))


@pytest.mark.parametrize("method", ["atp", "acp"])
@pytest.mark.parametrize("prompts", ["same", "mixed"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_each_pair_equals_its_own_call(model, method, prompts, direction, leakcheck):
    clean, corrupted = SAME if prompts == "same" else MIXED
    check = leakcheck(model.module)
    fn = METHODS[method]
    kw = dict(target=TARGETS, contrast=CONTRASTS, direction=direction)
    batch = fn(model, clean, corrupted, **kw)
    check.assert_clean()
    assert batch.n_pairs == 3 and batch.info["pairs"] == 3
    assert len(batch.positions) == 6 and batch.positions == list(range(6))
    singles = [fn(model, torch.tensor([c]), torch.tensor([k]), target=t[0], contrast=n[0], direction=direction)
               for c, k, t, n in zip(clean, corrupted, TARGETS, CONTRASTS)]
    assert batch.tokens == singles[0].tokens               # the longest prompt labels the positions
    for i, single in enumerate(singles):
        own = batch.pair(i)
        assert own.positions == single.positions and own.tokens == single.tokens
        assert math.isclose(own.metric_clean, single.metric_clean, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(own.metric_corrupted, single.metric_corrupted, rel_tol=1e-9, abs_tol=1e-9)
        for c in attrib.methods.patching.COMPONENTS:
            close(own.scores[c], single.scores[c])
            shift = 6 - len(clean[i])                       # prompts end together
            close(batch.per_pair[c][i, ..., shift:], single.scores[c])
            assert torch.isnan(batch.per_pair[c][i, ..., :shift]).all()
    for c in attrib.methods.patching.COMPONENTS:          # the mean over the pairs that have each position
        stacked = batch.per_pair[c]
        present = (~torch.isnan(stacked)).sum(0)
        close(batch.scores[c], stacked.nan_to_num().sum(0) / present)
    assert math.isclose(batch.metric_clean, sum(s.metric_clean for s in singles) / 3, rel_tol=1e-9)
    assert math.isclose(batch.metric_corrupted, sum(s.metric_corrupted for s in singles) / 3, rel_tol=1e-9)


def test_pairs_share_the_forwards(model):
    """Activation patching runs every pair's rows in the same forwards; attribution patching in one pass
    (with room for every row: the default plans from small measured passes first)."""
    clean, corrupted = SAME
    exact = activation_patching(model, clean, corrupted, target=TARGETS, components="resid", positions=-1,
                                batch_size=6)
    assert exact.info["forwards"] == 1                      # 3 pairs × 2 layers × 1 position in one forward
    approx = attribution_patching(model, clean, corrupted, target=TARGETS, components="resid", batch_size=3)
    assert approx.info["passes"] == 1 and approx.info["batch_size"] == 3


@pytest.mark.parametrize("method", ["atp", "acp"])
def test_batch_size_does_not_change_scores(model, method):
    clean, corrupted = MIXED
    whole = METHODS[method](model, clean, corrupted, target=TARGETS, components=("resid", "heads"))
    split = METHODS[method](model, clean, corrupted, target=TARGETS, components=("resid", "heads"), batch_size=1)
    for c in ("resid", "heads"):
        close(split.per_pair[c], whole.per_pair[c])
    assert split.info["batch_size"] == 1
    assert split.info.get("passes", split.info.get("forwards")) > 1


def test_last_position_of_every_prompt(model):
    clean, corrupted = MIXED
    last = attribution_patching(model, clean, corrupted, target=TARGETS, components="resid", positions=-1)
    full = attribution_patching(model, clean, corrupted, target=TARGETS, components="resid")
    assert last.positions == [5]
    close(last.per_pair["resid"], full.per_pair["resid"][..., -1:])
    assert not torch.isnan(last.per_pair["resid"]).any()   # every prompt has a last token


def test_metric_with_pair_indices_equals_per_pair_targets(model):
    """``metric(logits, pairs)``: the TransformerLens way (answer tokens per prompt) gives the same scores."""
    clean, corrupted = MIXED
    answers = torch.tensor([[t[0], n[0]] for t, n in zip(TARGETS, CONTRASTS)])
    seen = []

    def logit_diff(logits: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        seen.append(pairs.clone())
        last = logits[:, -1]
        rows = torch.arange(len(pairs))
        return last[rows, answers[pairs, 0]] - last[rows, answers[pairs, 1]]

    for fn in METHODS.values():
        by_metric = fn(model, clean, corrupted, metric=logit_diff, components=("attn", "heads"))
        by_target = fn(model, clean, corrupted, target=TARGETS, contrast=CONTRASTS, components=("attn", "heads"))
        for c in ("attn", "heads"):
            close(by_metric.per_pair[c], by_target.per_pair[c])
    assert all(p.dim() == 1 and p.dtype == torch.long for p in seen) and any(len(p) > 3 for p in seen)


def test_one_target_for_every_pair(model):
    clean, corrupted = SAME
    shared = attribution_patching(model, clean, corrupted, target=[7], contrast=[8], components="mlp")
    listed = attribution_patching(model, clean, corrupted, target=[[7]] * 3, contrast=[[8]] * 3, components="mlp")
    close(shared.per_pair["mlp"], listed.per_pair["mlp"])
    assert shared.target == listed.target != ""
    assert "one per pair" in attribution_patching(model, clean, corrupted, target=TARGETS, components="mlp").target


def test_list_of_one_pair_is_a_batch_of_one(model):
    one = attribution_patching(model, [SAME[0][0]], [SAME[1][0]], target=7, components="resid")
    alone = attribution_patching(model, torch.tensor([SAME[0][0]]), torch.tensor([SAME[1][0]]), target=7,
                                 components="resid")
    assert one.n_pairs == 1 and one.per_pair is not None and alone.per_pair is None and alone.n_pairs == 1
    close(one.scores["resid"], alone.scores["resid"])
    assert alone.pair(0) is alone


def test_linear_model_closed_form_in_a_batch():
    """On a model linear in its components attribution patching is exact, pair by pair, in one batch."""
    from tests.methods.test_patching import LINEAR_MAP, linear_model

    model = linear_model()
    ids = torch.tensor(SAME[0]), torch.tensor(SAME[1])
    kw = dict(target=[7, 9, 11], contrast=[8, 10, 12], component_map=LINEAR_MAP)
    approx = attribution_patching(model, *ids, **kw)
    exact = activation_patching(model, *ids, **kw)
    for c in ("resid", "attn", "mlp", "heads"):
        close(approx.per_pair[c], exact.per_pair[c], 1e-8)
        assert approx.per_pair[c].abs().max() > 1e-3


def test_saved_batch_keeps_every_pair(model, tmp_path):
    clean, corrupted = MIXED
    batch = activation_patching(model, clean, corrupted, target=TARGETS, components=("resid", "heads"),
                                positions=[0, -1])
    path = tmp_path / "pairs.safetensors"
    batch.save(path)
    back = attrib.load(path)
    assert isinstance(back, PatchingResult) and back.n_pairs == 3 and back.pairs == batch.pairs
    for c in ("resid", "heads"):
        close(back.per_pair[c], batch.per_pair[c])
        close(back.scores[c], batch.scores[c])
    assert back.pair(1).positions == [3]                   # position 0 of the longest is before the 4-token pair
    assert back.pair(1).tokens == batch.pair(1).tokens and len(back.pair(1).tokens) == 4
    close(back.pair(1).scores["heads"], batch.per_pair["heads"][1, ..., 1:])
    d = batch.to_dict()
    assert len(d["per_pair"]["resid"]) == 3 and d["pairs"][2]["metric_clean"] == batch.pairs[2]["metric_clean"]
    assert "mean of 3 pairs" in str(batch)
    with pytest.raises(InputError, match=r"pair\(3\) is outside the 3 pairs of this result; pass an int from -3 to 2"):
        batch.pair(3)


def test_result_refuses_mismatched_per_pair():
    scores = {"resid": torch.zeros(2, 3)}
    meta = dict(tokens=["a", "b", "c"], positions=[0, 1, 2], method="m", direction="denoise", metric_clean=1.0,
                metric_corrupted=0.0, target="t")
    pairs = [{"clean": ["a", "b", "c"]}] * 2
    with pytest.raises(InputError, match=r"per_pair\['resid'\] must have shape \(2, 2, 3\).*got \(3, 2, 3\)"):
        PatchingResult(scores, **meta, per_pair={"resid": torch.zeros(3, 2, 3)}, pairs=pairs)
    with pytest.raises(InputError, match="per_pair and pairs come together"):
        PatchingResult(scores, **meta, pairs=pairs)


def test_positions_axis_of_mixed_lengths(model):
    pairs = prepare_pairs(model, MIXED[0], MIXED[1], target=TARGETS, components="resid", positions=[1, -2])
    assert pairs.length == 6 and pairs.positions == [1, 4]
    assert pairs.present.tolist() == [[True, True], [False, True], [True, True]]
    assert pairs.index.tolist() == [[1, 4], [0, 4], [1, 4]]   # left-padded inputs: the index is the position
