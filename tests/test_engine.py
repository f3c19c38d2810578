"""The shared-suffix engine on a trained toy: a unit gives each cell exactly what the cell
gives alone, costs the shared-suffix count of blocks, and resumes from its checkpoints."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_cell
from omegaconf import OmegaConf

from sweep.cache import ArtifactCache
from sweep.cell import measure
from sweep.cellspec import cell_spec
from sweep.engine import Checkpoints, measure_unit
from sweep.units import cost_per_image

pytestmark = pytest.mark.slow  # trains the toys and measures units

PROBE_AFTER = "intervention.probe_after=true"
GRID = [
    (layer, intervention, readout, seed, *extra)
    for layer in (1, 4)
    for intervention, seeds, extra in (("none", (0,), ()), ("shuffle", (0, 1), (PROBE_AFTER,)), ("mean", (0,), ()))
    for readout in ("native", "cls")
    for seed in seeds
]


def cell(layer, intervention, readout, seed, *extra):
    cfg = compose_cell(
        "model=toy_deit", f"layer={layer}", f"intervention={intervention}", f"readout={readout}", f"seed={seed}", *extra
    )
    return cfg, cell_spec(cfg)


def measure_all(cache_dir, specs, **kwargs):
    results, errors = {}, {}

    def emit(spec, result, error):
        assert spec.cell_id not in results and spec.cell_id not in errors, "a cell is emitted once"
        (results if error is None else errors)[spec.cell_id] = result if error is None else error

    summary = measure_unit(specs, ArtifactCache(cache_dir), emit, **kwargs)
    return results, errors, summary


@pytest.fixture(scope="module")
def unit(cache_dir):
    cells = [cell(*point) for point in GRID]
    results, errors, summary = measure_all(cache_dir, [spec for _, spec in cells])
    assert not errors
    return cells, results, summary


def test_a_unit_gives_every_cell_exactly_what_the_cell_gives_alone(cache_dir, unit):
    """Donor metrics and probe_after included: the shuffle cells of GRID carry both."""
    cells, results, _ = unit
    shuffled = [results[spec.cell_id] for _, spec in cells if spec.intervention == "shuffle"]
    assert all({"donor_accuracy", "donor_agreement", "probe_after"} <= set(r.metrics) for r in shuffled)
    assert all("donor" in r.outcomes for r in shuffled)
    for _, spec in cells:
        alone = measure(spec, ArtifactCache(cache_dir))
        together = results[spec.cell_id]
        assert together.metrics == alone.metrics, spec.name
        assert together.outcomes.keys() == alone.outcomes.keys()
        for key, values in alone.outcomes.items():
            assert torch.equal(together.outcomes[key], values), (spec.name, key)


def test_a_unit_runs_each_branch_once_and_the_prefix_once(unit):
    """Block applications: the prefix up to the deepest intervened layer once per image, and
    N - L once per distinct (layer, intervention, seed), shared by both readouts."""
    cells, results, summary = unit
    specs = [spec for _, spec in cells]
    n_val = results[specs[0].cell_id].counts["n_val"]
    by_purpose = summary["block_calls_by_purpose"]
    n_layers = specs[0].n_layers
    branches = {(s.layer, s.intervention, s.seed) for s in specs if s.intervention != "none"}
    assert by_purpose["unmodified"] == 4 * n_val
    assert by_purpose["branch"] == sum(n_layers - layer for layer, _, _ in branches) * n_val
    assert by_purpose["unmodified"] + by_purpose["branch"] == cost_per_image(specs) * n_val
    # every cell's share: the records of a unit add up to what it ran
    assert sum(r.compute["block_calls"] for r in results.values()) == pytest.approx(summary["block_calls"])


def test_both_readouts_of_a_branch_read_one_output(unit):
    """ViT-like CLS readouts of one branch are one computation, so DeiT's two readouts differ
    only by the head; the shuffle at L=1 with seed 0 and seed 1 are different branches."""
    cells, results, _ = unit
    by_name = {spec.name: results[spec.cell_id] for _, spec in cells}
    s0, s1 = by_name["toy_deit-L01-shuffle-native-s0"], by_name["toy_deit-L01-shuffle-native-s1"]
    assert not torch.equal(s0.outcomes["predicted"], s1.outcomes["predicted"])


class DiesAfter(Checkpoints):
    """The real checkpoints, and a process that dies right after its `n`-th save (as a kill
    between two batches would leave it)."""

    def __init__(self, path_of, n):
        super().__init__(path_of, interval_s=0)
        self.n = n

    def save(self, cells, meta):
        super().save(cells, meta)
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt("killed after a checkpoint")


def test_a_killed_unit_resumes_at_its_checkpoint_with_the_same_numbers(cache_dir, unit, tmp_path):
    cells, _, _ = unit
    cfg = cells[0][0].copy()
    cfg.compute.batch_size = 64  # 400 validation images: 7 batches, so a kill can fall in between
    specs = [cell_spec(cfg_with(cfg, spec)) for _, spec in cells if spec.intervention != "none"]
    uninterrupted, _, _ = measure_all(cache_dir, specs)

    def path_of(spec):
        return tmp_path / f"{spec.cell_id}.safetensors"

    with pytest.raises(KeyboardInterrupt):
        measure_all(cache_dir, specs, checkpoints=DiesAfter(path_of, 3))
    assert all(path_of(spec).exists() for spec in specs)
    resumed, errors, summary = measure_all(cache_dir, specs, checkpoints=Checkpoints(path_of, 0))
    assert not errors
    for spec in specs:
        assert resumed[spec.cell_id].compute["resumed_rows"] == 3 * 64
        assert resumed[spec.cell_id].metrics == uninterrupted[spec.cell_id].metrics  # probe_after included
        assert torch.equal(resumed[spec.cell_id].outcomes["rank"], uninterrupted[spec.cell_id].outcomes["rank"])
    n_val = uninterrupted[specs[0].cell_id].counts["n_val"]  # the resumed run skipped three batches
    assert summary["block_calls_by_purpose"]["unmodified"] == 4 * (n_val - 3 * 64)


def test_a_progress_file_of_another_pass_is_not_resumed(cache_dir, unit, tmp_path):
    """A checkpoint written with another batch size (or for another cell) starts the cell over."""
    cells, uninterrupted, _ = unit
    cfg, spec = next((c, s) for c, s in cells if s.intervention == "shuffle")
    small = cfg.copy()
    small.compute.batch_size = 64
    with pytest.raises(KeyboardInterrupt):
        measure_all(
            cache_dir, [cell_spec(small)], checkpoints=DiesAfter(lambda s: tmp_path / "progress.safetensors", 2)
        )
    results, _, _ = measure_all(
        cache_dir, [spec], checkpoints=Checkpoints(lambda s: tmp_path / "progress.safetensors", 0)
    )
    assert results[spec.cell_id].compute["resumed_rows"] == 0
    assert results[spec.cell_id].metrics == uninterrupted[spec.cell_id].metrics


def cfg_with(base, spec):
    """`base` with the measured nodes of `spec`'s cell."""
    cfg = base.copy()
    cfg.layer, cfg.seed, cfg.readout.name = spec.layer, spec.seed if spec.seed is not None else 0, spec.readout
    cfg.intervention = OmegaConf.create(dict(spec.science["intervention"]))
    return cfg


@pytest.mark.parametrize("model", ["toy_vit", "toy_deit", "toy_beit", "toy_dinov2", "toy_clip"])
def test_an_identity_edit_at_the_last_layer_changes_nothing_bit_for_bit(cache_dir, model):
    """At L = N no block runs (the readout reads the cached features with the CLS replaced):
    an identity permutation there must give the unmodified model's outcomes exactly."""
    cfgs = [
        compose_cell(f"model={model}", "layer=-1", *point)
        for point in (
            ("intervention=none", "readout=native"),
            ("intervention=none", "readout=cls"),
            ("intervention=shuffle", "intervention.permutation=identity", "readout=native"),
            ("intervention=shuffle", "intervention.permutation=identity", "readout=cls"),
        )
    ]
    specs = [cell_spec(cfg) for cfg in cfgs]
    results, errors, summary = measure_all(cache_dir, specs)
    assert not errors and summary["block_calls_by_purpose"].get("unmodified", 0) == 0
    for plain, edited in ((specs[0], specs[2]), (specs[1], specs[3])):
        for key in ("predicted", "rank"):
            assert torch.equal(results[plain.cell_id].outcomes[key], results[edited.cell_id].outcomes[key])
        # donor = self: following the donor is being right, and agreeing with oneself unmodified
        metrics = results[edited.cell_id].metrics
        assert metrics["donor_accuracy"] == metrics["accuracy"] and metrics["donor_agreement"] == 1.0


@pytest.mark.parametrize("model", ["toy_vit", "toy_deit", "toy_beit", "toy_dinov2", "toy_clip"])
def test_at_the_last_layer_the_cls_readout_follows_the_donor_exactly(cache_dir, model):
    """At L = N the CLS-only readout reads nothing but the donor's CLS: every output is the
    donor's own unmodified prediction, so donor_accuracy is the unmodified accuracy, while
    the accuracy against the image's own label falls towards chance."""
    cfgs = [
        compose_cell(f"model={model}", "layer=-1", "readout=cls", intervention)
        for intervention in ("intervention=none", "intervention=shuffle")
    ]
    specs = [cell_spec(cfg) for cfg in cfgs]
    results, errors, _ = measure_all(cache_dir, specs)
    assert not errors
    plain, shuffled = (results[spec.cell_id] for spec in specs)
    assert shuffled.metrics["donor_agreement"] == 1.0
    assert shuffled.metrics["donor_accuracy"] == plain.metrics["accuracy"]
    assert torch.equal(shuffled.outcomes["predicted"], plain.outcomes["predicted"][shuffled.outcomes["donor"]])
    assert shuffled.metrics["accuracy"] < 0.5 * plain.metrics["accuracy"]


def test_an_identity_edit_keeps_donor_metrics_and_later_probes_at_their_unmodified_values(cache_dir):
    """The controls of the donor metrics and of probe_after below L = N: with the identity
    permutation the branch recomputes the unmodified suffix, so at every layer the output
    agrees with the unmodified prediction, and each later layer's probe scores what it
    scored on the cached features (`none` cells' probe_accuracy)."""
    n_layers = cell("-1", "none", "native", 0)[1].n_layers
    nones = [cell(layer, "none", "native", 0) for layer in range(n_layers + 1)]
    edits = [
        cell(layer, "shuffle", readout, 0, "intervention.permutation=identity", PROBE_AFTER)
        for layer in (0, 2, n_layers - 1)
        for readout in ("native", "cls")
    ]
    results, errors, _ = measure_all(cache_dir, [spec for _, spec in nones + edits])
    assert not errors
    probe = {spec.layer: results[spec.cell_id].metrics["probe_accuracy"] for _, spec in nones}
    for _, spec in edits:
        metrics, outcomes = results[spec.cell_id].metrics, results[spec.cell_id].outcomes
        assert torch.equal(outcomes["donor"], torch.arange(len(outcomes["label"])))
        assert metrics["donor_accuracy"] == metrics["accuracy"], spec.name
        assert metrics["donor_agreement"] == 1.0, spec.name
        assert metrics["probe_after"] == {str(later): probe[later] for later in range(spec.layer + 1, n_layers + 1)}


def test_probe_after_shows_what_later_layers_recover_after_a_shuffle(unit):
    """After a derangement at L = 1 the later probes read a CLS that carries the donor's
    information: on the toy nothing is re-accumulated from the patch tokens within the
    blocks left, and the layer-4 probe scores far below its unmodified accuracy."""
    cells, results, _ = unit
    by_name = {spec.name: results[spec.cell_id] for _, spec in cells}
    shuffled = by_name["toy_deit-L01-shuffle-native-s0"].metrics["probe_after"]
    assert list(shuffled) == [str(layer) for layer in range(2, 7)]
    assert shuffled == by_name["toy_deit-L01-shuffle-cls-s0"].metrics["probe_after"]  # one branch, one CLS
    assert shuffled["4"] < 0.5 * by_name["toy_deit-L04-none-native"].metrics["probe_accuracy"]


KNOCKOUTS = [(edge, span) for edge in ("patches_to_cls", "cls_to_patches") for span in ("single", "after")]


def knockout_cell(layer, edge, span, readout, *extra):
    return cell(layer, "knockout", readout, 0, f"intervention.edge={edge}", f"intervention.span={span}", *extra)


def test_knockout_cells_share_one_suffix_per_setting_and_give_what_each_gives_alone(cache_dir):
    """A knockout is a branch like any other: one suffix per (layer, edge, span), read by
    every readout, and a unit's numbers are the cell's alone, bit for bit."""
    cells = [knockout_cell(1, edge, span, readout) for edge, span in KNOCKOUTS for readout in ("native", "cls")]
    cells.append(cell(1, "shuffle", "cls", 0))
    specs = [spec for _, spec in cells]
    results, errors, summary = measure_all(cache_dir, specs)
    assert not errors
    n_val, n_layers = results[specs[0].cell_id].counts["n_val"], specs[0].n_layers
    assert summary["block_calls_by_purpose"]["branch"] == 5 * (n_layers - 1) * n_val  # four knockouts, one shuffle
    assert len({tuple(results[s.cell_id].outcomes["predicted"].tolist()) for s in specs if s.readout == "cls"}) == 5
    for _, spec in cells:
        alone = measure(spec, ArtifactCache(cache_dir))
        assert results[spec.cell_id].metrics == alone.metrics, spec.name
        for key, values in alone.outcomes.items():
            assert torch.equal(results[spec.cell_id].outcomes[key], values), (spec.name, key)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cutting_patches_to_cls_after_layer_0_leaves_the_cls_readout_at_chance(cache_dir, attn):
    """The CLS then never reads the image: every example gets the same CLS, hence one
    prediction, hence chance accuracy on balanced classes, while the toy itself reads the
    digits well."""
    extra = (f"compute.attn_implementation={attn}",)
    plain_cfg, plain = cell(0, "none", "cls", 0, *extra)
    _, knocked = knockout_cell(0, "patches_to_cls", "after", "cls", *extra)
    results, errors, _ = measure_all(cache_dir, [plain, knocked])
    assert not errors
    result = results[knocked.cell_id]
    assert len(set(result.outcomes["predicted"].tolist())) == 1
    assert result.metrics["accuracy"] == pytest.approx(result.metrics["chance"])
    assert results[plain.cell_id].metrics["accuracy"] > 3 * result.metrics["chance"]


# -- intervention.token: what moves from the donor ------------------------------------------

TOYS_WITH_TOKENS = {
    "toy_vit": ("cls",),
    "toy_deit": ("cls", "distillation"),
    "toy_beit": ("cls",),
    "toy_dinov2": ("cls",),
    "toy_clip": ("cls",),
    "toy_dinov2_reg": ("cls", "registers"),
}


def token_cell(model, layer, token, readout="native", *extra):
    cfg = compose_cell(
        f"model={model}",
        f"layer={layer}",
        "intervention=shuffle",
        f"intervention.token={token}",
        f"readout={readout}",
        "seed=0",
        *extra,
    )
    return cfg, cell_spec(cfg)


@pytest.mark.parametrize("model", sorted(TOYS_WITH_TOKENS))
def test_at_the_embedding_moving_the_patches_moves_the_image_and_moving_a_special_token_moves_nothing(cache_dir, model):
    """At L = 0 the CLS, distillation and register tokens are the same for every image (a
    learned vector plus its position), and the patches are all there is of the image: a
    shuffle of the patches is a shuffle of the images (every output is the donor's own
    prediction), a shuffle of any special token changes no output."""
    plain_cfg = compose_cell(f"model={model}", "layer=0", "intervention=none", "readout=native")
    cells = [token_cell(model, 0, token) for token in (*TOYS_WITH_TOKENS[model], "patches")]
    specs = [cell_spec(plain_cfg), *(spec for _, spec in cells)]
    results, errors, _ = measure_all(cache_dir, specs)
    assert not errors
    plain = results[specs[0].cell_id].outcomes["predicted"]
    for spec in specs[1:]:
        result = results[spec.cell_id]
        if spec.token == "patches":
            assert torch.equal(result.outcomes["predicted"], plain[result.outcomes["donor"]]), spec.name
            assert result.metrics["donor_agreement"] == 1.0
        else:
            assert torch.equal(result.outcomes["predicted"], plain), spec.name


def test_a_token_shuffle_equals_hfs_own_forward_with_the_donors_tokens_patched_in(cache_dir):
    """An independent check of the engine's donor streams: the HF model's own forward, with a
    hook that writes each donor's distillation token (from HF's own hidden_states of the
    donor images) into the output of block L, gives the cell's predictions."""
    from sweep.artifacts import ComputeLedger
    from sweep.engine import prepare

    layer = 2
    cfg, spec = token_cell("toy_deit", layer, "distillation")
    results, errors, _ = measure_all(cache_dir, [spec])
    assert not errors
    result = results[spec.cell_id]
    prepared = prepare(spec, [spec], ArtifactCache(cache_dir), ComputeLedger())
    model, artifacts = prepared.loaded.adapter.model, prepared.artifacts
    donors = result.outcomes["donor"]
    pixels = artifacts.pixels(prepared.val_images)
    with torch.inference_mode():
        donor_tokens = model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][donors, 1]

        def patch(_module, _args, output):
            output = output.clone()
            output[:, 1] = donor_tokens
            return output

        handle = prepared.loaded.adapter.blocks[layer - 1].register_forward_hook(patch)  # DeiTLayer of block L
        try:
            expected = model(pixel_values=pixels).logits.argmax(1)
        finally:
            handle.remove()
        unmodified = model(pixel_values=pixels).logits.argmax(1)
    assert torch.equal(result.outcomes["predicted"], expected)
    assert not torch.equal(expected, unmodified)  # the distillation token carries something the output uses


def test_token_shuffles_of_one_seed_share_one_donor_prefix_and_cost_what_the_planner_counts(cache_dir):
    """Donor states are computed once per seed, to the deepest layer that reads them, shared
    by every token and layer; the unit's block applications equal cost_per_image exactly."""
    cells = [
        token_cell("toy_deit", layer, token, readout, f"seed={seed}")
        for layer in (1, 3, 6)
        for token in ("distillation", "patches")
        for readout in ("native", "cls")
        for seed in (0, 1)
    ]
    cells.append(cell(2, "shuffle", "native", 0))
    specs = [spec for _, spec in cells]
    results, errors, summary = measure_all(cache_dir, specs)
    assert not errors
    n_val, n_layers = results[specs[0].cell_id].counts["n_val"], specs[0].n_layers
    by_purpose = summary["block_calls_by_purpose"]
    assert by_purpose["donor"] == 2 * n_layers * n_val  # two seeds, each to L = N = 6
    assert by_purpose["unmodified"] == n_layers * n_val
    assert sum(by_purpose[k] for k in ("unmodified", "branch", "donor")) == cost_per_image(specs) * n_val
    assert sum(r.compute["block_calls"] for r in results.values()) == pytest.approx(summary["block_calls"])
    for spec in specs[::5]:  # a unit's numbers are the cell's alone
        alone = measure(spec, ArtifactCache(cache_dir))
        assert results[spec.cell_id].metrics == alone.metrics, spec.name


def test_at_the_last_layer_moving_the_patches_changes_only_readouts_that_read_them(cache_dir):
    """At L = N no block runs after the edit: the CLS readout of toy ViT reads no patch and
    keeps every output; CLIP's native readout (the patch mean) reads nothing else and
    follows the donor exactly."""
    for model, readout, follows in (("toy_vit", "cls", False), ("toy_clip", "native", True)):
        plain_cfg = compose_cell(f"model={model}", "layer=-1", "intervention=none", f"readout={readout}")
        _, moved = token_cell(model, -1, "patches", readout)
        results, errors, _ = measure_all(cache_dir, [cell_spec(plain_cfg), moved])
        assert not errors
        plain = results[cell_spec(plain_cfg).cell_id].outcomes["predicted"]
        result = results[moved.cell_id]
        expected = plain[result.outcomes["donor"]] if follows else plain
        assert torch.equal(result.outcomes["predicted"], expected), (model, readout)


@pytest.mark.parametrize("model, readout", [("toy_deit", "distillation"), ("toy_dinov2", "patch_mean")])
def test_a_last_layer_cls_shuffle_leaves_a_readout_that_never_reads_the_cls_unchanged(cache_dir, model, readout):
    """DeiT's distillation head reads the distillation token, DINOv2's patch_mean the patch
    tokens: a CLS replaced at L = N (after the last block) reaches neither."""
    cfgs = [
        compose_cell(f"model={model}", "layer=-1", f"readout={readout}", intervention)
        for intervention in ("intervention=none", "intervention=shuffle")
    ]
    specs = [cell_spec(cfg) for cfg in cfgs]
    results, errors, _ = measure_all(cache_dir, specs)
    assert not errors
    plain, shuffled = (results[spec.cell_id] for spec in specs)
    assert shuffled.metrics["accuracy"] == plain.metrics["accuracy"] > 3 * plain.metrics["chance"]
    assert torch.equal(shuffled.outcomes["predicted"], plain.outcomes["predicted"])


def test_an_early_shuffle_moves_deits_cls_head_to_the_donor_but_hardly_its_distillation_head(cache_dir):
    """After a derangement at L = 1 the CLS head mostly reads the donor's label, while the
    distillation head, which sees the CLS only through attention in blocks 2..N, keeps its
    own image's (on the toy: 0.85 vs 0.85 unmodified, following the donor for 0.11 of the
    images, at chance; the CLS head 0.17 vs 0.86, following the donor for 0.65)."""
    points = [
        (1, intervention, readout, 0) for intervention in ("none", "shuffle") for readout in ("cls", "distillation")
    ]
    cells = [cell(*point) for point in points]
    results, errors, _ = measure_all(cache_dir, [spec for _, spec in cells])
    assert not errors
    by_name = {spec.name: results[spec.cell_id].metrics for _, spec in cells}
    cls, distillation = by_name["toy_deit-L01-shuffle-cls-s0"], by_name["toy_deit-L01-shuffle-distillation-s0"]
    assert cls["accuracy"] < 0.5 * by_name["toy_deit-L01-none-cls"]["accuracy"]
    assert cls["donor_agreement"] > 0.5
    assert distillation["accuracy"] > 0.9 * by_name["toy_deit-L01-none-distillation"]["accuracy"]
    assert distillation["donor_agreement"] < 0.5
