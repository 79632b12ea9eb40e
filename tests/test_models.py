"""Model zoo: equivalence with g-mlp-pytorch, causality, init, stochastic depth, position
schemes, dropout, configs, registry and presets, analytic counts and size matching."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from gmlp_ablate.models import (
    ARCHS,
    GMLP,
    PRESETS,
    DropPath,
    GMLPBlock,
    LayerDropBlocks,
    RelativePositionBias,
    Rotary,
    SpatialGatingUnit,
    TinyAttention,
    Transformer,
    build_model,
    build_preset,
    preset_config,
)
from gmlp_ablate.models.config import ModelConfig, TaskShape
from gmlp_ablate.models.flops import COUNTS, flops_per_token, match_size, measured_flops_per_token, param_count
from gmlp_ablate.schema import ConfigError, check, choices_of
from gmlp_ablate.tasks import task_shape
from gmlp_ablate.tasks.config import TaskConfig

g_mlp = pytest.importorskip("g_mlp_pytorch")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VOCAB, SEQ = 20, 12
IMAGE = dict(image_size=8, patch_size=2, channels=1, num_classes=10)


def token_shape(causal: bool, seq_len: int = SEQ) -> TaskShape:
    return TaskShape(kind="tokens", seq_len=seq_len, causal=causal, vocab_size=VOCAB)


def image_shape() -> TaskShape:
    side = IMAGE["image_size"] // IMAGE["patch_size"]
    return TaskShape(kind="image", seq_len=side * side, **IMAGE)


def tokens(batch: int = 3, n: int = SEQ, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IMAGE["channels"], IMAGE["image_size"], IMAGE["image_size"], generator=g)


def small(**kw) -> ModelConfig:
    base = dict(dim=16, depth=2, ff_mult=2)
    base.update(kw)
    return ModelConfig(**base)


# --------------------------------------------------------------------------------------
# Equivalence with the reference implementation
# --------------------------------------------------------------------------------------

# g-mlp-pytorch key -> our key. gMLP wraps each block as Residual(PreNorm(PreShiftTokens(
# gMLPBlock))), gMLPVision as Residual(PreNorm(gMLPBlock)); proj_in is Sequential(Linear, GELU).
KEY_MAP = [
    (r"^to_embed\.", "tok_emb."),
    (r"^to_patch_embed\.1\.", "patch_embed."),
    (r"^to_logits\.0\.", "ln_f."),
    (r"^to_logits\.[12]\.", "head."),  # 1: gMLP (LayerNorm, Linear); 2: gMLPVision (LN, Reduce, Linear)
    (r"^layers\.(\d+)\.fn\.norm\.", r"blocks.\1.norm."),
    (r"^layers\.(\d+)\.fn\.fn\.(fn\.)?", r"blocks.\1."),
    (r"\.proj_in\.0\.", ".proj_in."),
    (r"\.attn\.to_qkv\.", ".attn.qkv."),
    (r"\.attn\.to_out\.", ".attn.proj."),
]


def map_reference_state(ref: nn.Module, ours: nn.Module) -> dict:
    """The reference's state dict under our key names; every key and shape must line up."""
    out = {}
    for key, value in ref.state_dict().items():
        new = key
        for pattern, repl in KEY_MAP:
            new = re.sub(pattern, repl, new)
        out[new] = value
    theirs = ours.state_dict()
    assert set(out) == set(theirs), set(out) ^ set(theirs)
    for k, v in out.items():
        assert v.shape == theirs[k].shape, (k, v.shape, theirs[k].shape)
    return out


def reference_and_ours(causal, attn_dim, ff_mult, heads, prob_survival=1.0, depth=2):
    torch.manual_seed(0)
    ref = g_mlp.gMLP(
        num_tokens=VOCAB, dim=16, depth=depth, seq_len=SEQ, heads=heads, ff_mult=ff_mult,
        attn_dim=attn_dim, causal=causal, prob_survival=prob_survival,
    )
    cfg = small(depth=depth, ff_mult=ff_mult, heads=heads, attn_dim=attn_dim, prob_survival=prob_survival, drop_mode="layer")
    ours = build_model(cfg, token_shape(causal))
    ours.load_state_dict(map_reference_state(ref, ours))
    return ref, ours


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("ff_mult", [2, 4])
@pytest.mark.parametrize("attn_dim", [None, 8])
@pytest.mark.parametrize("causal", [True, False])
def test_token_model_matches_reference(causal, attn_dim, ff_mult, heads):
    ref, ours = reference_and_ours(causal, attn_dim, ff_mult, heads)
    x = tokens()
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_dim", [None, 8])
def test_causal_model_matches_reference_on_shorter_sequence(attn_dim):
    ref, ours = reference_and_ours(True, attn_dim, 2, 2)
    x = tokens(n=SEQ - 5)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("attn_dim", [None, 8])
def test_vision_model_matches_reference(attn_dim, heads):
    torch.manual_seed(0)
    ref = g_mlp.gMLPVision(dim=16, depth=2, heads=heads, ff_mult=4, attn_dim=attn_dim, **IMAGE)
    ours = build_model(small(ff_mult=4, heads=heads, attn_dim=attn_dim), image_shape())
    ours.load_state_dict(map_reference_state(ref, ours))
    x = images()
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_dim", [None, 8])
def test_parameter_count_matches_reference(attn_dim):
    ref, ours = reference_and_ours(True, attn_dim, 4, 2)
    assert ours.num_params() == sum(p.numel() for p in ref.parameters())
    vref = g_mlp.gMLPVision(dim=16, depth=2, heads=2, ff_mult=4, attn_dim=attn_dim, **IMAGE)
    vours = build_model(small(ff_mult=4, heads=2, attn_dim=attn_dim), image_shape())
    assert vours.num_params() == sum(p.numel() for p in vref.parameters())


def test_layer_drop_matches_reference_in_train_mode():
    # Both draw torch.zeros(depth).uniform_() from the default generator at the start of
    # forward. When every layer is dropped the reference re-keeps one with Python's
    # random.randrange while we use torch's generator: such seeds are skipped.
    depth, p = 4, 0.5
    ref, ours = reference_and_ours(True, None, 2, 1, prob_survival=p, depth=depth)
    ref.train(), ours.train()
    x = tokens()
    full = ours.eval()(x)
    ours.train()
    compared = dropped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        if (torch.zeros(depth).uniform_() > p).all():
            continue
        torch.manual_seed(seed)
        expected = ref(x)
        torch.manual_seed(seed)
        got = ours(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        compared += 1
        dropped += not torch.allclose(got, full)
    assert compared >= 4 and dropped >= 1


# --------------------------------------------------------------------------------------
# Causality
# --------------------------------------------------------------------------------------


def embedding_jacobian_rows(model: nn.Module, x: torch.Tensor) -> list:
    """For each position t: |d logits[0, t] / d token-embedding[s]| summed over channels,
    (N,) per t. ``x`` has batch 1, so the (N, 1, D) or (1, N, D) embedding is (N, D)."""
    store = {}

    def hook(module, inputs, output):
        store["emb"] = output.detach().requires_grad_(True)
        return store["emb"]

    handle = model.tok_emb.register_forward_hook(hook)
    try:
        logits = model(x)  # (1, N, V)
    finally:
        handle.remove()
    emb = store["emb"]
    rows = []
    for t in range(x.shape[1]):
        (g,) = torch.autograd.grad(logits[0, t].sum(), emb, retain_graph=True)
        rows.append(g.reshape(x.shape[1], -1).abs().sum(-1))
    return rows


CAUSAL_CONFIGS = {
    "gmlp": small(init_eps=1.0),
    "gmlp_heads2_unsplit": small(init_eps=1.0, heads=2, sgu_split=False),
    "amlp": small(init_eps=1.0, attn_dim=8),
    "amlp_2heads": small(init_eps=1.0, attn_dim=8, attn_heads=2, sgu_act="tanh"),
    "transformer": small(arch="transformer", heads=2),
    "transformer_rotary": small(arch="transformer", heads=2, pos="rotary"),
    "transformer_relative": small(arch="transformer", heads=2, pos="relative"),
}


@pytest.mark.parametrize("name", list(CAUSAL_CONFIGS))
def test_causal_output_does_not_depend_on_future_tokens(name):
    torch.manual_seed(0)
    model = build_model(CAUSAL_CONFIGS[name], token_shape(True, seq_len=8)).eval()
    rows = embedding_jacobian_rows(model, tokens(batch=1, n=8))
    for t, row in enumerate(rows):
        assert torch.all(row[t + 1:] == 0), (t, row)
        assert row[: t + 1].sum() > 0, (t, row)
        if t > 0:
            assert row[:t].sum() > 0, (t, row)  # it does see the past


@pytest.mark.parametrize("name", ["gmlp", "amlp", "transformer", "transformer_rotary", "transformer_relative"])
def test_bidirectional_output_depends_on_future_tokens(name):
    torch.manual_seed(0)
    model = build_model(CAUSAL_CONFIGS[name], token_shape(False, seq_len=8)).eval()
    rows = embedding_jacobian_rows(model, tokens(batch=1, n=8))
    assert all(row[t + 1:].sum() > 0 for t, row in enumerate(rows[:-1]))


@pytest.mark.parametrize("arch, pos", [("gmlp", "learned"), ("transformer", "learned"), ("transformer", "rotary"),
                                       ("transformer", "relative")])
def test_causal_prefix_gives_the_same_outputs(arch, pos):
    model = build_model(small(arch=arch, pos=pos, attn_dim=8 if arch == "gmlp" else None), token_shape(True)).eval()
    x = tokens()
    torch.testing.assert_close(model(x[:, :5]), model(x)[:, :5], atol=1e-5, rtol=0)


def test_masked_spatial_weights_get_zero_gradient():
    model = build_model(small(init_eps=1.0), token_shape(True))
    model(tokens()).sum().backward()
    for block in model.blocks:
        grad = block.sgu.weight.grad  # (heads, n, n)
        assert torch.all(grad.triu(1) == 0)
        assert grad.tril().abs().sum() > 0


def test_sequence_longer_than_seq_len_is_rejected():
    model = build_model(small(), token_shape(True))
    with pytest.raises(ValueError, match="seq_len"):
        model(tokens(n=SEQ + 1))


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("causal", [True, False])
def test_tiny_attention_fused_and_unfused_paths_agree(causal, heads):
    torch.manual_seed(0)
    attn = TinyAttention(dim_in=16, dim_out=12, attn_dim=8, seq_len=SEQ, heads=heads, causal=causal)
    x = torch.randn(SEQ - 3, 4, 16)  # (N, B, D), shorter than seq_len
    attn.fused = True
    fused = attn(x)
    attn.fused = False
    torch.testing.assert_close(attn(x), fused, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------
# Spatial gating unit at init
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [True, False])
def test_sgu_is_exact_identity_gate_with_zero_init_eps(split):
    torch.manual_seed(0)
    sgu = SpatialGatingUnit(dim=8, seq_len=6, split=split, heads=2, causal=True, init_eps=0.0)
    z = torch.randn(6, 3, 8)  # (N, B, dim)
    expected = z[..., :4] if split else z
    assert torch.equal(sgu(z), expected)


@pytest.mark.parametrize("split", [True, False])
def test_sgu_deviates_from_identity_within_init_eps(split):
    torch.manual_seed(0)
    eps, n = 1e-2, 6
    sgu = SpatialGatingUnit(dim=8, seq_len=n, split=split, init_eps=eps)
    assert sgu.weight.abs().max() <= eps / n
    z = torch.randn(n, 3, 8)
    res, gate = (z.chunk(2, -1) if split else (z, z))
    bound = eps * sgu.norm(gate).abs().max() * res.abs()  # |f - 1| <= eps * max|LN(gate)|
    dev = (sgu(z) - res).abs()
    assert torch.all(dev <= bound + 1e-7)
    assert dev.max() > 0


# --------------------------------------------------------------------------------------
# Gradients, finiteness, init, parameter groups
# --------------------------------------------------------------------------------------

ARCH_CONFIGS = {
    "gmlp": small(attn_dim=8),
    "gmlp_unsplit_heads2": small(sgu_split=False, heads=2, attn_dim=8, attn_heads=2, sgu_act="gelu"),
    "transformer": small(arch="transformer", heads=2),
    "transformer_rotary": small(arch="transformer", heads=2, pos="rotary"),
    "transformer_relative": small(arch="transformer", heads=2, pos="relative"),
}


@pytest.mark.parametrize("kind", ["tokens", "image"])
@pytest.mark.parametrize("name", list(ARCH_CONFIGS))
def test_every_parameter_gets_a_finite_gradient(name, kind):
    torch.manual_seed(0)
    shape, x = (token_shape(kind == "tokens"), tokens()) if kind == "tokens" else (image_shape(), images())
    model = build_model(ARCH_CONFIGS[name], shape)
    model(x).logsumexp(-1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("act", ["identity", "tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("kind", ["tokens", "image"])
def test_outputs_are_finite_and_shaped(kind, act):
    cfg = small(sgu_act=act, attn_dim=8, prob_survival=0.5)
    if kind == "tokens":
        out = build_model(cfg, token_shape(True)).train()(tokens())
        assert out.shape == (3, SEQ, VOCAB)
    else:
        out = build_model(cfg, image_shape()).train()(images())
        assert out.shape == (3, IMAGE["num_classes"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("drop_mode", ["sample", "layer"])
@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_eval_mode_is_deterministic_with_stochastic_depth(arch, drop_mode):
    model = build_model(small(arch=arch, depth=4, prob_survival=0.3, drop_mode=drop_mode), token_shape(True)).eval()
    x = tokens()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_init_follows_the_nanogpt_scheme(arch):
    torch.manual_seed(0)
    model = build_model(small(arch=arch, dim=64, attn_dim=16, init_eps=0.5), token_shape(True))
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            assert abs(m.weight.std().item() - 0.02) < 0.004, name
            if getattr(m, "bias", None) is not None:
                assert torch.all(m.bias == 0), name
        elif isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
        elif isinstance(m, SpatialGatingUnit):  # its own init, after the generic one
            assert torch.all(m.bias == 1), name
            assert m.weight.abs().max() <= 0.5 / SEQ and m.weight.abs().max() > 0.25 / SEQ, name


def test_seeded_init_draws_in_the_same_order_as_before():
    # Values of a seeded model built by the code before each module owned its init: the
    # dense layers draw first (module order), then the SGUs' spatial weights.
    torch.manual_seed(0)
    gmlp = build_model(small(), token_shape(True)).state_dict()
    assert gmlp["tok_emb.weight"][0, 0].item() == -0.0009088960359804332
    assert gmlp["blocks.0.proj_in.weight"][1, 2].item() == -0.0011851832969114184
    assert gmlp["head.weight"][5, 7].item() == 0.03614324703812599
    assert gmlp["blocks.1.sgu.weight"][0, 3, 2].item() == -1.3238201063359156e-05
    torch.manual_seed(0)
    transformer = build_model(small(arch="transformer"), token_shape(True)).state_dict()
    assert transformer["pos_emb.weight"][3, 4].item() == -0.032268766313791275
    assert transformer["blocks.1.attn.qkv.weight"][0, 1].item() == -0.0016322971787303686


@pytest.mark.parametrize("name", list(ARCH_CONFIGS))
def test_init_weights_reinitialises_every_parameter(name):
    model = build_model(ARCH_CONFIGS[name], token_shape(True))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.init_weights()
    for pname, p in model.named_parameters():
        assert torch.isfinite(p).all(), pname


@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_num_params_counts_every_parameter(arch):
    model = build_model(small(arch=arch, attn_dim=8), token_shape(True))
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def should_decay(name: str) -> bool:
    """The rule, stated on parameter names: Linear weights and the token embedding decay;
    biases, norms, position embeddings / biases and the SGU's spatial weight do not."""
    if name.endswith("bias") or ".norm." in name or re.search(r"(^|\.)ln(_f|\d)\.", name):
        return False
    if name.startswith("pos_emb.") or ".rel_bias." in name or name.endswith("sgu.weight"):
        return False
    return True


@pytest.mark.parametrize("kind", ["tokens", "image"])
@pytest.mark.parametrize("name", list(ARCH_CONFIGS))
def test_param_groups_follow_one_rule_for_every_arch(name, kind):
    shape = token_shape(True) if kind == "tokens" else image_shape()
    model = build_model(ARCH_CONFIGS[name], shape)
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(n for n in names.values() if should_decay(n))
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(n for n in names.values() if not should_decay(n))


# --------------------------------------------------------------------------------------
# Stochastic depth
# --------------------------------------------------------------------------------------


def test_drop_path_preserves_the_expected_value():
    torch.manual_seed(0)
    p = 0.75
    x = torch.full((40_000, 3), 2.0)
    out = DropPath(prob_survival=p, batch_dim=0).train()(x)
    values = out.unique()
    assert len(values) == 2 and values[0] == 0  # dropped samples are exactly zero
    assert values[1].item() == pytest.approx(2.0 / p)  # kept samples are scaled by 1/p
    assert abs(out.mean().item() - 2.0) < 0.03
    assert abs((out[:, 0] == 0).float().mean().item() - (1 - p)) < 0.01


def test_drop_path_drops_whole_samples_along_batch_dim():
    torch.manual_seed(0)
    x = torch.randn(5, 64, 4)  # (N, B, D), batch on dim 1
    out = DropPath(prob_survival=0.5, batch_dim=1).train()(x)
    dropped = (out == 0).all(dim=2).all(dim=0)  # (B,)
    kept = torch.isclose(out, x * 2).all(dim=2).all(dim=0)
    assert torch.all(dropped ^ kept) and dropped.any() and kept.any()


def test_drop_path_is_identity_in_eval_mode():
    x = torch.randn(8, 4)
    assert torch.equal(DropPath(prob_survival=0.5).eval()(x), x)


@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_stochastic_depth_has_one_owner_per_mode(arch):
    sample = build_model(small(arch=arch, prob_survival=0.7, drop_mode="sample"), token_shape(True))
    assert sample.blocks.prob_survival == 1.0
    assert all(m.prob_survival == 0.7 for m in sample.modules() if isinstance(m, DropPath))
    layer = build_model(small(arch=arch, prob_survival=0.7, drop_mode="layer"), token_shape(True))
    assert layer.blocks.prob_survival == 0.7
    assert not any(isinstance(m, DropPath) for m in layer.modules())


def test_no_drop_path_module_when_prob_survival_is_one():
    model = build_model(small(arch="gmlp"), token_shape(True))
    assert all(isinstance(b.drop_path, nn.Identity) for b in model.blocks)
    model = build_model(small(arch="transformer", prob_survival=0.9), token_shape(True))
    assert all(isinstance(b.drop_path1, DropPath) for b in model.blocks)


@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_layer_mode_drops_whole_layers_in_train_mode(arch):
    torch.manual_seed(0)
    depth = 4
    model = build_model(small(arch=arch, depth=depth, prob_survival=0.5, drop_mode="layer"), token_shape(True))
    calls = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: calls.append(m))
    counts = []
    for _ in range(20):
        calls.clear()
        model.train()(tokens())
        counts.append(len(calls))
    assert min(counts) >= 1 and min(counts) < depth  # some layers dropped, never all
    calls.clear()
    model.eval()(tokens())
    assert len(calls) == depth


# --------------------------------------------------------------------------------------
# Position schemes (transformer)
# --------------------------------------------------------------------------------------


def test_rotary_scores_depend_only_on_the_offset():
    torch.manual_seed(0)
    rotary = Rotary(head_dim=8, seq_len=10)
    q, k = torch.randn(8), torch.randn(8)
    rq = rotary(q.expand(1, 1, 10, 8))[0, 0]  # (N, d): the same query at every position
    rk = rotary(k.expand(1, 1, 10, 8))[0, 0]
    scores = rq @ rk.T  # (N, N)
    for offset in range(-9, 10):
        diag = scores.diagonal(offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-5, rtol=0)
    assert not torch.allclose(scores.diagonal(0)[0], scores.diagonal(1)[0])


def test_rotary_keeps_position_zero_and_norms():
    x = torch.randn(2, 3, 7, 8)  # (B, h, N, d)
    out = Rotary(head_dim=8, seq_len=7)(x)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("causal", [True, False])
def test_relative_bias_is_one_learned_value_per_head_and_offset(causal):
    bias = RelativePositionBias(heads=2, seq_len=6, causal=causal)
    with torch.no_grad():
        bias.weight.copy_(torch.randn(bias.weight.shape))
    b = bias(5)  # (h, n, n)
    assert b.shape == (2, 5, 5)
    for i in range(5):
        for j in range(5):
            if causal and j > i:
                assert b[0, i, j] == float("-inf")
            else:  # b[h, i, j] depends on i - j only
                assert torch.equal(b[:, i, j], b[:, i - min(i, j), j - min(i, j)])
    assert bias.weight.shape == (2, 6 if causal else 11)


def test_only_learned_positions_have_a_position_embedding():
    shape = token_shape(True)
    assert build_model(small(arch="transformer"), shape).pos_emb is not None
    for pos in ("rotary", "relative"):
        model = build_model(small(arch="transformer", pos=pos), shape)
        assert model.pos_emb is None
        assert all((b.attn.rotary is not None) == (pos == "rotary") for b in model.blocks)
        assert all((b.attn.rel_bias is not None) == (pos == "relative") for b in model.blocks)


# --------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------


def test_gmlp_dropout_drops_the_branch_before_the_residual_add():
    torch.manual_seed(0)
    block = GMLPBlock(dim=8, dim_ff=16, seq_len=6, dropout=0.5).train()
    x = torch.randn(6, 40, 8)  # (N, B, D)
    branch = block.eval()(x) - x  # proj_out output, no dropout in eval
    out = block.train()(x) - x
    kept = torch.isclose(out, 2 * branch, atol=1e-6)  # kept entries scaled by 1 / (1 - p)
    dropped = out == 0
    assert torch.all(kept | dropped) and 0.4 < dropped.float().mean() < 0.6


@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_dropout_acts_in_training_only(arch):
    torch.manual_seed(0)
    model = build_model(small(arch=arch, dropout=0.3), token_shape(True))
    plain = build_model(small(arch=arch), token_shape(True))
    plain.load_state_dict(model.state_dict())
    x = tokens()
    torch.testing.assert_close(model.eval()(x), plain.eval()(x), atol=0, rtol=0)
    model.train()
    assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_zero_dropout_adds_no_dropout_module(arch):
    model = build_model(small(arch=arch), token_shape(True))
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


# --------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------


def test_patches_are_row_major_with_channel_major_features():
    x = torch.arange(2 * 2 * 8 * 8, dtype=torch.float32).view(2, 2, 8, 8)  # (B, C, H, W)
    shape = TaskShape(kind="image", seq_len=16, image_size=8, patch_size=2, channels=2, num_classes=3)
    gmlp = build_model(small(), shape).patchify(x)  # (n, B, C*p*p)
    trans = build_model(small(arch="transformer"), shape).patchify(x)  # (B, n, C*p*p)
    torch.testing.assert_close(gmlp.transpose(0, 1), trans, atol=0, rtol=0)
    torch.testing.assert_close(trans[1, 6], x[1, :, 2:4, 4:6].reshape(-1), atol=0, rtol=0)  # patch (1, 2)


# --------------------------------------------------------------------------------------
# Config errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, changes",
    [  # build_model checks its config itself (the zoo is usable alone); the full table of
       # values per field is at unit level in tests/test_config.py
        ("prob_survival", dict(prob_survival=0.0)),
        ("heads", dict(arch="gmlp", dim=16, ff_mult=2, heads=3)),
        ("pos", dict(arch="gmlp", pos="rotary")),
        ("pos", dict(arch="transformer", dim=12, heads=4, pos="rotary")),  # head width 3 is odd
    ],
)
def test_bad_config_raises_config_error_naming_the_field(field, changes):
    with pytest.raises(ConfigError, match=rf"model\.{field}"):
        build_model(replace(small(), **changes), token_shape(True))


# --------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------

FLOP_CONFIGS = {
    "gmlp": small(),
    "gmlp_unsplit_heads2": small(sgu_split=False, heads=2),
    "amlp": small(attn_dim=8, attn_heads=2),
    "amlp_unsplit": small(attn_dim=8, sgu_split=False, dropout=0.1),
    "transformer": small(arch="transformer", heads=2),
    "transformer_rotary": small(arch="transformer", heads=2, pos="rotary"),
    "transformer_relative": small(arch="transformer", heads=4, pos="relative", dropout=0.1),
}


@pytest.mark.parametrize(
    "name, kind, causal",
    [(n, "tokens", c) for n in FLOP_CONFIGS for c in (True, False)] + [(n, "image", False) for n in FLOP_CONFIGS],
)
def test_flops_per_token_agrees_with_flop_counter(name, kind, causal):
    shape, x = (token_shape(causal), tokens()) if kind == "tokens" else (image_shape(), images())
    model = build_model(FLOP_CONFIGS[name], shape).eval()
    measured = measured_flops_per_token(model, x)
    assert model.flops_per_token() == pytest.approx(measured, rel=0.05)
    assert isinstance(model, (GMLP, Transformer))


@pytest.mark.parametrize(
    "name, kind, causal",
    [(n, "tokens", c) for n in FLOP_CONFIGS for c in (True, False)] + [(n, "image", False) for n in FLOP_CONFIGS],
)
def test_analytic_param_count_equals_the_built_model(name, kind, causal):
    shape = token_shape(causal) if kind == "tokens" else image_shape()
    cfg = FLOP_CONFIGS[name]
    assert param_count(cfg, shape) == sum(p.numel() for p in build_model(cfg, shape).parameters())


@pytest.mark.parametrize("task", ["charlm", "mlm", "mqar", "digits"])
@pytest.mark.parametrize("arch", ["gmlp", "transformer"])
def test_every_arch_builds_for_every_task_shape(arch, task):
    shape = task_shape(TaskConfig(name=task, seq_len=None if task == "digits" else 16))
    cfg = small(arch=arch, heads=2, attn_dim=8 if arch == "gmlp" else None)
    model = build_model(cfg, shape)
    assert model.num_params() == param_count(cfg, shape)
    assert model.flops_per_token() == flops_per_token(cfg, shape)


# --------------------------------------------------------------------------------------
# Size matching
# --------------------------------------------------------------------------------------


def count_of(cfg: ModelConfig, shape: TaskShape, by: str) -> float:
    return float(param_count(cfg, shape) if by == "params" else flops_per_token(cfg, shape))


def valid(cfg: ModelConfig) -> bool:
    try:
        check(cfg)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(
    "base, by, vary, target",
    [
        (small(), "params", "depth", 40_000),
        (small(arch="transformer", heads=2), "flops", "depth", 150_000),
        (small(arch="transformer", heads=3, dim=12, pos="rotary"), "params", "dim", 30_000),
        (small(heads=2, attn_dim=8), "params", "dim", 50_000),
        (small(sgu_split=False), "flops", "ff_mult", 20_000),
    ],
)
def test_match_size_picks_the_valid_value_closest_to_the_target(base, by, vary, target):
    shape = token_shape(True)
    cfg, achieved = match_size(base, shape, target, by=by, vary=vary)
    assert valid(cfg) and achieved == count_of(cfg, shape, by)
    assert replace(cfg, **{vary: getattr(base, vary)}) == base  # nothing else changed
    others = [replace(base, **{vary: v}) for v in range(1, 3 * getattr(cfg, vary) + 2) if v != getattr(cfg, vary)]
    for other in filter(valid, others):
        assert abs(achieved - target) <= abs(count_of(other, shape, by) - target), getattr(other, vary)


def test_match_size_keeps_the_rotary_head_width_even():
    cfg, _ = match_size(small(arch="transformer", heads=3, dim=12, pos="rotary"), token_shape(True), 30_000, vary="dim")
    assert cfg.dim % 6 == 0


def test_match_size_sizes_a_transformer_to_a_gmlp():
    shape = token_shape(True, seq_len=64)
    gmlp = small(dim=64, depth=4)
    cfg, achieved = match_size(small(arch="transformer", heads=4, dim=64), shape, param_count(gmlp, shape), vary="depth")
    assert achieved == pytest.approx(param_count(gmlp, shape), rel=0.2)
    assert param_count(cfg, shape) == achieved


@pytest.mark.parametrize("by, vary, key", [("time", "depth", "by"), ("params", "heads", "vary")])
def test_match_size_rejects_an_unknown_count_or_knob(by, vary, key):
    with pytest.raises(ConfigError, match=key):
        match_size(small(), token_shape(True), 1e5, by=by, vary=vary)


# --------------------------------------------------------------------------------------
# Registry, presets, imports
# --------------------------------------------------------------------------------------


def test_every_arch_choice_has_a_class_and_counters():
    assert set(ARCHS) == set(choices_of(ModelConfig, "arch")) == set(COUNTS)


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        check(preset_config(name), f"{name}.")


IMAGENET = TaskShape(kind="image", seq_len=196, image_size=224, patch_size=16, channels=3, num_classes=1000)


@pytest.mark.parametrize("name, millions", [("gmlp_ti", 6), ("gmlp_s", 20), ("gmlp_b", 73)])
def test_vision_presets_have_the_papers_sizes(name, millions):
    assert param_count(preset_config(name), IMAGENET) / 1e6 == pytest.approx(millions, rel=0.05)


def test_build_preset_applies_overrides():
    model = build_preset("amlp_base", token_shape(True), depth=2, dim=16, ff_mult=2, attn_dim=8)
    assert isinstance(model, GMLP) and len(model.blocks) == 2 and model.blocks[0].attn is not None
    assert model.cfg == replace(preset_config("amlp_base"), depth=2, dim=16, ff_mult=2, attn_dim=8)


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'gmlp_s'"):
        preset_config("gmlp_ss")


def imported_after(statement: str) -> set:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_counting_imports_no_torch():
    mods = imported_after("import gmlp_ablate.models.flops, gmlp_ablate.models")
    assert "torch" not in mods


def test_models_import_nothing_but_torch_einops_and_their_config():
    mods = imported_after("from gmlp_ablate.models import build_model")
    assert {m.split(".")[0] for m in mods} & {"omegaconf", "yaml", "ray", "mlflow"} == set()
    assert {m for m in mods if m.startswith("gmlp_ablate.")} <= {
        "gmlp_ablate.schema", "gmlp_ablate.models", *(f"gmlp_ablate.models.{m}" for m in
                                ("config", "flops", "registry", "layers", "gmlp", "transformer", "factory"))}
