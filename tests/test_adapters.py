"""Every adapter on a tiny random config of its real HF class."""

from __future__ import annotations

import pytest
import torch
from tiny_models import KINDS, N_CLASSES, pixels, tiny_adapter

from sweep.adapters import ClipAdapter, ReadoutUnavailable
from sweep.errors import SweepError
from sweep.interventions import AttentionCut
from sweep.linear_heads import LinearHead


def last_hidden(adapter, x):
    *_, hidden = adapter.hidden_states(x)
    return hidden


@pytest.mark.parametrize("kind", KINDS)
def test_native_readout_reproduces_the_hf_models_own_logits(kind):
    adapter, x = tiny_adapter(kind), pixels()
    assert not adapter.model.training
    with torch.no_grad():
        ours = adapter.logits(last_hidden(adapter, x), "native")
        theirs = adapter.model(pixel_values=x).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", [0, 1, 3])
def test_an_identity_permutation_leaves_outputs_bit_for_bit_unchanged(kind, layer):
    adapter, x = tiny_adapter(kind), pixels()
    with torch.no_grad():
        plain = adapter.model(pixel_values=x).logits
        with adapter.cls_edit(layer, lambda cls: cls[torch.arange(len(cls))]):
            edited = adapter.model(pixel_values=x).logits
    assert torch.equal(plain, edited)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_a_hook_edit_at_layer_L_shows_in_hf_hidden_states_L(kind, layer):
    adapter, x = tiny_adapter(kind), pixels()
    with torch.no_grad():
        plain = adapter.model(pixel_values=x, output_hidden_states=True).hidden_states
        # A constant, not zeros: DeiT's and BEiT's embedding-layer CLS start as zeros.
        with adapter.cls_edit(layer, lambda cls: torch.full_like(cls, 3.0)):
            edited = adapter.model(pixel_values=x, output_hidden_states=True).hidden_states
    assert bool((edited[layer][:, adapter.cls_index] == 3.0).all())
    assert torch.equal(edited[layer][:, adapter.cls_index + 1 :], plain[layer][:, adapter.cls_index + 1 :])
    for earlier in range(layer):
        assert torch.equal(edited[earlier], plain[earlier])
    if layer < adapter.n_layers:
        assert not torch.equal(edited[layer + 1], plain[layer + 1])


@pytest.mark.parametrize("kind", KINDS)
def test_block_by_block_hidden_states_match_hf(kind):
    adapter, x = tiny_adapter(kind), pixels()
    with torch.no_grad():
        theirs = adapter.model(pixel_values=x, output_hidden_states=True).hidden_states
        ours = list(adapter.hidden_states(x))
    assert len(ours) == len(theirs) == adapter.n_layers + 1
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_deit_cls_readout_is_its_cls_head():
    adapter, x = tiny_adapter("deit"), pixels()
    with torch.no_grad():
        out = adapter.model(pixel_values=x)
        ours = adapter.logits(last_hidden(adapter, x), "cls")
    torch.testing.assert_close(ours, out.cls_logits, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, out.logits)


def test_an_adapter_without_a_cls_readout_refuses_it():
    class NoClsClip(ClipAdapter):
        supported_readouts = ("native",)

    adapter = NoClsClip(tiny_adapter("clip").model)
    with pytest.raises(ReadoutUnavailable, match="no 'cls' readout"):
        adapter.head("cls")


def test_clip_cls_readout_is_post_layernorm_of_cls():
    adapter, x = tiny_adapter("clip"), pixels()
    with torch.no_grad():
        theirs = adapter.model.vision_model(pixel_values=x).pooler_output
        torch.testing.assert_close(adapter.readout_features(last_hidden(adapter, x), "cls"), theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["beit", "dinov2", "dinov2_reg", "clip"])
def test_a_head_fitted_here_is_what_the_hf_forward_uses(kind):
    adapter, x = tiny_adapter(kind), pixels()
    features_dim = adapter.readout_features(last_hidden(adapter, x), "native").shape[1]
    head = LinearHead(torch.randn(11, features_dim), torch.randn(11))
    adapter.install_head("native", head)
    with torch.no_grad():
        hidden = last_hidden(adapter, x)
        expected = head.logits(adapter.readout_features(hidden, "native"))
        torch.testing.assert_close(adapter.logits(hidden, "native"), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(adapter.model(pixel_values=x).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["beit", "dinov2", "dinov2_reg", "clip"])
def test_a_fitted_cls_head_reads_the_cls_token_alone(kind):
    adapter, x = tiny_adapter(kind), pixels()
    head = LinearHead(torch.randn(N_CLASSES, adapter.hidden_size), torch.zeros(N_CLASSES))
    adapter.install_head("cls", head)
    with torch.no_grad():
        hidden = last_hidden(adapter, x)
        scrambled = hidden.clone()
        scrambled[:, 1:] = torch.randn_like(scrambled[:, 1:])
        torch.testing.assert_close(adapter.logits(hidden, "cls"), adapter.logits(scrambled, "cls"))


@pytest.mark.parametrize("kind", KINDS)
def test_heads_run_in_float32_on_float32_features_even_under_bf16_autocast(kind):
    """A 1000-way head in bf16 ties and reorders top classes; the blocks may run in bf16,
    the readout, head and projection may not."""
    adapter, x = tiny_adapter(kind), pixels()
    with torch.no_grad():
        hidden = last_hidden(adapter, x)
        expected = adapter.head("native")(adapter.readout_features(hidden, "native"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = adapter.logits(hidden.bfloat16().float(), "native")
            ours = adapter.logits(hidden, "native")
            readout = "cls" if "cls" in adapter.supported_readouts else "native"
            try:
                adapter.native_head(readout)
            except ReadoutUnavailable:  # a CLS-only head fitted here (BEiT, DINOv2, CLIP)
                width = adapter.projection_features(hidden[:, 0]).shape[-1]
                adapter.install_head(readout, LinearHead(torch.randn(N_CLASSES, width), torch.randn(N_CLASSES)))
            projected = adapter.projection_logits(hidden[:, 0], readout)
    assert logits.dtype == ours.dtype == projected.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_a_head_fitted_on_deits_two_token_features_reads_them_flattened():
    """Heads fitted here are fitted on flattened readout features; DeiT's native readout
    is (n, 2, D) (CLS and distillation token)."""
    adapter, x = tiny_adapter("deit"), pixels()
    hidden = last_hidden(adapter, x).detach()
    features = adapter.readout_features(hidden, "native")
    assert features.dim() == 3
    head = LinearHead(torch.randn(N_CLASSES, features[0].numel()), torch.randn(N_CLASSES))
    adapter.install_head("native", head)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(hidden, "native"), head.logits(features.flatten(1)))


def randomised(adapter, seed=3):
    """Every parameter drawn at random: HF's init sets norms to (1, 0) and biases to 0, which
    would hide a readout that skips a norm or a bias."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return adapter


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("readout", ["native", "cls"])
def test_an_intervention_at_the_last_layer_needs_only_the_cached_features(kind, readout):
    """At L = N the engine never holds the hidden state: a readout's features of hidden state
    N with its CLS replaced come from the unmodified features and the new CLS, exactly."""
    adapter = randomised(tiny_adapter(kind))
    if readout == "cls" and kind in ("beit", "dinov2", "dinov2_reg", "clip"):
        adapter.install_head("cls", LinearHead(torch.randn(N_CLASSES, 32), torch.randn(N_CLASSES)))
    with torch.no_grad():
        hidden = last_hidden(adapter, pixels())
        donors = torch.roll(hidden[:, 0], 1, dims=0)
        edited = adapter.logits(adapter.with_cls(hidden, donors), readout)
        cached = adapter.float_readout_features(hidden, readout)
        from_features = adapter.apply_head(readout, adapter.features_with_cls(cached, donors, readout))
    assert torch.equal(edited, from_features)
    assert not torch.equal(edited, adapter.logits(hidden, readout)) or (kind, readout) in (
        ("beit", "native"),
        ("clip", "native"),
    )  # their native readouts never read the CLS


# -- attention knockout ---------------------------------------------------------------

IMPLEMENTATIONS = ("sdpa", "eager")


def knockout(adapter, edge, blocks):
    return adapter.attention_cut(AttentionCut(edge, tuple(blocks)))


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_knockout_that_cuts_nothing_is_bit_for_bit_the_plain_attention(kind, attn):
    """Every block's attention routed through the knockout function with no edge to cut gives
    the configured implementation's bits; a real cut through the same route does change them
    (so the route is taken), and afterwards the blocks run as before."""
    adapter, x = randomised(tiny_adapter(kind, attn=attn)), pixels()
    n = adapter.n_layers
    assert adapter.attention_module(0).config._attn_implementation == attn
    with torch.no_grad():
        hidden = adapter.embed(x)
        plain = adapter.run_blocks(hidden, 0, n)
        with knockout(adapter, None, range(n)):
            routed = adapter.run_blocks(hidden, 0, n)
        with knockout(adapter, "patches_to_cls", range(n)):
            cut = adapter.run_blocks(hidden, 0, n)
        after = adapter.run_blocks(hidden, 0, n)
    assert torch.equal(routed, plain)
    assert not torch.allclose(cut, plain, atol=1e-3)
    assert torch.equal(after, plain)
    assert all(adapter.attention_module(i).config._attn_implementation == attn for i in range(n))


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_cutting_patches_to_cls_in_every_block_leaves_the_cls_a_function_of_its_embedding(kind, attn):
    """With the CLS query reading no other token in any block from L = 0, two different images
    end with the same CLS (the embedding's CLS is the same for every image); unmodified they
    do not."""
    adapter = randomised(tiny_adapter(kind, attn=attn))
    n = adapter.n_layers
    with torch.no_grad():
        first, second = adapter.embed(pixels(seed=1)), adapter.embed(pixels(seed=2))
        assert torch.equal(first[:, 0], second[:, 0])
        with knockout(adapter, "patches_to_cls", range(n)):
            cut = [adapter.run_blocks(hidden, 0, n)[:, 0] for hidden in (first, second)]
        plain = [adapter.run_blocks(hidden, 0, n)[:, 0] for hidden in (first, second)]
    torch.testing.assert_close(cut[0], cut[1], rtol=0, atol=1e-6)
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_edge_cuts_one_direction_in_the_blocks_it_names_only(kind, attn):
    """In block 2 alone: `patches_to_cls` changes the CLS's output and leaves every other
    token's (their queries are untouched), `cls_to_patches` the other way round; block 1 runs
    as it does without a cut. BEiT's rows stay as they were too: the cut is added to its
    relative position bias, not put in its place."""
    adapter, x = randomised(tiny_adapter(kind, attn=attn)), pixels()
    with torch.no_grad():
        hidden = adapter.run_block(0, adapter.embed(x))
        plain = adapter.run_block(1, hidden)
        results = {}
        for edge in ("patches_to_cls", "cls_to_patches"):
            with knockout(adapter, edge, [1]):
                assert torch.equal(adapter.run_block(0, adapter.embed(x)), hidden)
                results[edge] = adapter.run_block(1, hidden)
    torch.testing.assert_close(results["patches_to_cls"][:, 1:], plain[:, 1:])
    assert not torch.allclose(results["patches_to_cls"][:, 0], plain[:, 0], atol=1e-3)
    torch.testing.assert_close(results["cls_to_patches"][:, 0], plain[:, 0])
    assert not torch.allclose(results["cls_to_patches"][:, 1:], plain[:, 1:], atol=1e-3)


def test_a_knockout_refuses_an_attention_it_does_not_wrap_and_restores_what_it_set():
    """Only sdpa and eager are wrapped; here block 1 already runs the knockout function (a
    knockout inside a knockout), and the cut of block 2 set before the refusal is undone."""
    adapter = tiny_adapter("vit", attn="sdpa")
    with knockout(adapter, "patches_to_cls", [0]):
        with pytest.raises(
            SweepError, match="wraps sdpa, eager; ViTAttention runs config._attn_implementation='sweep_knockout'"
        ):
            with knockout(adapter, "patches_to_cls", [1, 0]):
                pass
        assert adapter.attention_module(1).config._attn_implementation == "sdpa"
    assert adapter.attention_module(0).config._attn_implementation == "sdpa"


# -- tokens (intervention.token) ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_with_tokens_moves_exactly_the_tokens_slots_from_the_donor(kind):
    """Every position of the token, and nothing else: the CLS, the distillation token, the
    registers and the patches partition the sequence."""
    from sweep.adapters import TokenUnavailable

    adapter = tiny_adapter(kind)
    with torch.no_grad():
        hidden = next(adapter.hidden_states(pixels()))
    donor = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(5))
    covered = []
    for token in adapter.supported_tokens:
        moved = adapter.with_tokens(hidden, donor, token)
        changed = (moved != hidden).any(dim=(0, 2)).nonzero().flatten().tolist()
        assert changed == list(range(hidden.shape[1]))[adapter.token_slots(token)], (kind, token)
        assert torch.equal(moved[:, adapter.token_slots(token)], donor[:, adapter.token_slots(token)])
        covered += changed
    assert sorted(covered) == list(range(hidden.shape[1]))
    lacking = next(t for t in ("distillation", "registers") if t not in adapter.supported_tokens)
    with pytest.raises(TokenUnavailable, match=f"no '{lacking}' token; intervention.token can be "):
        adapter.token_slots(lacking)
