"""The shuffle's groups and permutations, and the other CLS replacements."""

import pytest
import torch

from sweep.interventions import (
    COMMON_SETTINGS,
    INTERVENTIONS,
    TOKENS,
    AttentionCut,
    configured,
    intervention_label,
    shuffle_donors,
    variant,
)


def test_derangement_moves_every_cls_and_stays_within_groups_of_128():
    n = 700
    donors = shuffle_donors(n, group_size=128, permutation="derangement", seed=3)
    assert not bool((donors == torch.arange(n)).any())
    assert sorted(donors.tolist()) == list(range(n))  # a permutation
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    group_of = torch.empty(n, dtype=torch.long)
    group_of[order] = torch.arange(n) // 128
    assert torch.equal(group_of[donors], group_of)


def test_groups_mix_labels_because_the_order_is_shuffled_first():
    labels = torch.arange(700) // 70  # sorted by class, as a naive loader would give them
    donors = shuffle_donors(700, group_size=128, permutation="derangement", seed=0)
    assert (labels[donors] != labels).float().mean() > 0.8


def test_the_permutation_is_seeded_and_randperm_and_identity_are_available():
    a = shuffle_donors(300, group_size=128, permutation="derangement", seed=1)
    assert torch.equal(a, shuffle_donors(300, group_size=128, permutation="derangement", seed=1))
    assert not torch.equal(a, shuffle_donors(300, group_size=128, permutation="derangement", seed=2))
    assert torch.equal(shuffle_donors(300, group_size=128, permutation="identity", seed=1), torch.arange(300))
    assert sorted(shuffle_donors(300, group_size=128, permutation="randperm", seed=1).tolist()) == list(range(300))


def test_a_trailing_group_of_one_is_merged_so_it_can_be_deranged():
    donors = shuffle_donors(129, group_size=128, permutation="derangement", seed=0)
    assert not bool((donors == torch.arange(129)).any())


def test_unknown_permutation_is_a_clear_error():
    with pytest.raises(ValueError, match="derangement, randperm, identity"):
        shuffle_donors(10, group_size=4, permutation="cyclic", seed=0)


@pytest.fixture
def cls():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(300, 8, generator=generator) * 3 + 1, torch.randn(300, 8, generator=generator)


def test_replacements(cls):
    at_layer, at_embedding = cls
    make = lambda name, **s: configured(name, s).replacement(
        cls_at_layer=at_layer, cls_at_embedding=at_embedding, seed=0
    )  # noqa: E731
    assert make("none") is None
    assert torch.count_nonzero(make("zero")) == 0
    assert torch.allclose(make("mean"), at_layer.mean(0).expand(300, 8))
    assert torch.equal(make("reset"), at_embedding)
    noise = make("noise", center="mean")
    assert torch.allclose(noise.std(0), at_layer.std(0), rtol=0.25)
    assert torch.allclose(noise.mean(0), at_layer.mean(0), atol=0.6)
    assert torch.equal(noise, make("noise", center="mean"))  # seeded
    shuffled = make("shuffle", group_size=128, permutation="derangement", token="cls")
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, at_layer.tolist()))


def test_a_knockout_replaces_no_cls_and_cuts_block_L_plus_1_or_every_block_after_L(cls):
    at_layer, at_embedding = cls
    knockout = configured("knockout", {"edge": "patches_to_cls", "span": "after"})
    assert knockout.replacement(cls_at_layer=at_layer, cls_at_embedding=at_embedding, seed=None) is None
    assert not INTERVENTIONS["knockout"].seeded
    # block k + 1 sits at index k: from hidden state 2 of a 6-block model, block 3 or blocks 3..6
    assert configured("knockout", {"edge": "cls_to_patches", "span": "single"}).attention_cut(
        layer=2, n_layers=6
    ) == AttentionCut("cls_to_patches", (2,))
    assert configured("knockout", {"edge": "patches_to_cls", "span": "after"}).attention_cut(
        layer=2, n_layers=6
    ) == AttentionCut("patches_to_cls", (2, 3, 4, 5))
    assert (
        configured("shuffle", {"group_size": 128, "permutation": "derangement"}).attention_cut(layer=2, n_layers=6)
        is None
    )


def test_an_intervention_with_donors_declares_them():
    """The shuffle's donors are its permutation (the engine scores outputs against them);
    interventions whose CLS comes from no other image have none."""
    values = {"group_size": 128, "permutation": "derangement", "token": "cls", "probe_after": False}
    donors = configured("shuffle", values).donors(n=300, seed=4)
    assert torch.equal(donors, shuffle_donors(300, group_size=128, permutation="derangement", seed=4))
    at_layer = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    shuffled = configured("shuffle", values).replacement(cls_at_layer=at_layer, cls_at_embedding=at_layer, seed=4)
    assert torch.equal(shuffled, at_layer[donors])
    for name in ("none", "zero", "mean", "noise", "reset"):
        assert configured(name, {"center": "mean", "probe_after": False}).donors(n=300, seed=4) is None


def test_every_intervention_takes_probe_after():
    assert all(entry.settings["probe_after"] == COMMON_SETTINGS["probe_after"] for _, entry in INTERVENTIONS.items())
    assert INTERVENTIONS["shuffle"].settings.keys() == {"probe_after", "group_size", "permutation", "token"}


def test_a_shuffle_of_another_token_moves_it_from_the_donors_hidden_state_not_from_the_cached_cls():
    """Only the CLS is cached per layer, so a shuffle of the distillation token, the registers
    or the patches has no CLS replacement: the engine takes those tokens from each donor's own
    hidden state. Every other intervention edits the CLS."""
    at_layer = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    for token in TOKENS:
        values = {"group_size": 128, "permutation": "derangement", "token": token, "probe_after": False}
        assert configured("shuffle", values).token == token
        replacement = configured("shuffle", values).replacement(
            cls_at_layer=at_layer, cls_at_embedding=at_layer, seed=4
        )
        assert (replacement is None) == (token != "cls")
        assert torch.equal(
            configured("shuffle", values).donors(n=300, seed=4),
            shuffle_donors(300, group_size=128, permutation="derangement", seed=4),
        )
    assert {configured(name, {}).token for name in INTERVENTIONS.names if name != "shuffle"} == {"cls"}


def test_an_interventions_variant_names_the_settings_that_make_another_series():
    """The table and figures tell series of one intervention apart by its labelled settings:
    a shuffle by its token (the CLS unnamed, the study's shuffle), a knockout by edge and
    span; every other setting must agree within a table."""
    shuffle = {"group_size": 128, "permutation": "identity", "token": "cls", "probe_after": True}
    assert variant("shuffle", shuffle) is None and intervention_label("shuffle", None) == "shuffle"
    assert variant("shuffle", {**shuffle, "token": "patches"}) == "patches"
    assert intervention_label("shuffle", "patches") == "shuffle@patches"
    knockout = {"edge": "cls_to_patches", "span": "single", "probe_after": False}
    assert intervention_label("knockout", variant("knockout", knockout)) == "knockout@cls_to_patches+single"
    assert variant("noise", {"center": "zero", "probe_after": False}) is None
