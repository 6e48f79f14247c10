"""steepest.stats.GradientMoments / gradient_moments against a per-example loop (float64).

The reference differentiates each example's own loss separately and takes the mean and the
unbiased sample variance of the stacked gradients: seed 001 Eq. 3.28 and Eq. 3.30.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steepest.stats import GradientMoments, gradient_moments

D = torch.float64
TOL = 1e-5


def per_example_reference(model, loss_fn, x, y):
    """name -> (mean gradient, unbiased variance) from N separate backward passes."""
    grads = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad(set_to_none=True)
    out = {}
    for name in grads[0]:
        G = torch.stack([g[name] for g in grads])
        out[name] = (G.mean(0), G.var(0, unbiased=True))
    return out


def assert_matches(model, x, y, loss_fn=F.cross_entropy, **kw):
    ref = per_example_reference(model, loss_fn, x, y)
    res = gradient_moments(model, loss_fn, x, y, **kw)
    assert set(res.variance) == set(ref)
    params = dict(model.named_parameters())
    for name, (g, v) in ref.items():
        torch.testing.assert_close(res.grad[name], g, rtol=TOL, atol=TOL * g.abs().max())
        torch.testing.assert_close(res.variance[name], v, rtol=TOL, atol=TOL * v.abs().max())
        # the attributes MSVAG(variance="minibatch") reads, and .grad left as the mean gradient
        assert params[name].grad_var is res.variance[name]
        assert params[name].grad_batch_size == x.shape[0]
        assert isinstance(params[name].grad_batch_size, int)
        torch.testing.assert_close(params[name].grad, g, rtol=TOL, atol=TOL * g.abs().max())
    tr = sum(float(v.sum()) for _, v in ref.values())
    gsq = sum(float(g.square().sum()) for g, _ in ref.values())
    assert res.variance_sum == pytest.approx(tr, rel=TOL)
    assert res.grad_sq_norm == pytest.approx(gsq, rel=TOL)
    assert res.noise_to_signal == pytest.approx(tr / gsq, rel=TOL)
    return res


def data(n, *shape, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=D), torch.randint(0, classes, (n,),
                                                                       generator=g)


# ---------------------------------------------------------------------------- fast rules
def test_mlp_matches_per_example_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8, bias=False), nn.ReLU(),
                          nn.Linear(8, 3)).to(D)
    assert_matches(model, *data(7, 6))


def test_inplace_activation_after_linear():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).to(D)
    assert_matches(model, *data(5, 5))


def test_linear_on_sequences_sums_positions_per_example():
    # (N, T, in) inputs: each example's gradient sums over its T positions, so the square of
    # the sum is needed, not the sum of squares over positions.
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3), nn.Flatten(),
                          nn.Linear(3 * 6, 3)).to(D)
    x, y = data(5, 6, 4)
    assert_matches(model, x, y)


@pytest.mark.parametrize(
    "conv",
    [
        dict(stride=1, padding=0, dilation=1, groups=1),
        dict(stride=2, padding=1, dilation=1, groups=1),
        dict(stride=1, padding=2, dilation=2, groups=1),
        dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
        dict(stride=1, padding="same", dilation=1, groups=4, padding_mode="reflect"),
        dict(stride=1, padding="same", dilation=2, groups=1, padding_mode="circular"),
        dict(stride=2, padding=1, dilation=1, groups=1, padding_mode="replicate", bias=False),
    ],
)
def test_cnn_conv2d_variants_with_pooling(conv):
    torch.manual_seed(3)
    c = nn.Conv2d(4, 8, 3, **conv)
    model = nn.Sequential(c, nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 2), nn.AvgPool2d(2),
                          nn.Flatten(), nn.LazyLinear(3)).to(D)
    x, y = data(5, 4, 14, 14)
    model(x)  # materialize the lazy layer
    assert_matches(model, x, y)


def test_conv2d_even_kernel_same_padding():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, (2, 4), padding="same"), nn.Flatten(),
                          nn.Linear(3 * 36, 2)).to(D)
    x, y = data(4, 2, 6, 6, classes=2)
    with pytest.warns(UserWarning, match="even kernel"):  # torch's own warning, once
        assert_matches(model, x, y)


def test_conv1d():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv1d(3, 6, 3, stride=2, padding=2, dilation=2, groups=3),
                          nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(6, 4, 3, padding="same"),
                          nn.Flatten(), nn.LazyLinear(3)).to(D)
    x, y = data(6, 3, 20)
    model(x)
    assert_matches(model, x, y)


def test_embedding_native_rule_with_repeats_and_padding_idx():
    torch.manual_seed(6)

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(9, 4, padding_idx=1)
            self.out = nn.Linear(4, 3)

        def forward(self, t):
            return self.out(torch.tanh(self.emb(t)).mean(1))

    model = Bag().to(D)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 9, (6, 7), generator=g)
    t[0, :4] = 5  # the same row several times within one example
    t[1, :3] = 1  # padding rows get no gradient
    y = torch.randint(0, 3, (6,), generator=g)
    GradientMoments(model)  # no unsupported module: must not raise
    assert_matches(model, t, y)


# ---------------------------------------------------------------------------- fallback
class Scaled(nn.Module):
    """A custom layer with its own parameter around a supported child."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return torch.sin(self.lin(x)) * self.gain


def fallback_model():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.BatchNorm2d(4),
        nn.Flatten(), nn.Linear(4 * 25, 6), nn.LayerNorm(6), Scaled(6), nn.Linear(6, 3),
    ).to(D)


def test_unsupported_layers_through_fallback():
    torch.manual_seed(7)
    model = fallback_model()
    bn = model[3]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.eval()  # BatchNorm with running statistics: examples independent
    assert_matches(model, *data(6, 2, 5, 5), unsupported="fallback")


def test_unsupported_error_names_the_modules():
    model = fallback_model()
    with pytest.raises(ValueError, match=r"'1' \(GroupNorm.*'3' \(BatchNorm2d.*'6' \(LayerNorm"
                                         r".*'7' \(Scaled.*unsupported='fallback'"):
        GradientMoments(model)
    with pytest.raises(ValueError, match="LayerNorm"):
        gradient_moments(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)).to(D),
                         F.cross_entropy, *data(4, 3))


def test_multi_output_module_fallback_with_unused_output():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (3, 2)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = model
            self.attn = nn.MultiheadAttention(2, 1, batch_first=True)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.pre(x)
            a, _weights = self.attn(h, h, h)  # the attention weights do not reach the loss
            return self.head(a.flatten(1))

    net = Net().to(D)
    assert_matches(net, *data(5, 4), unsupported="fallback")


def test_multihead_attention_needs_batch_first():
    net = nn.Sequential(nn.MultiheadAttention(4, 2))
    with pytest.raises(ValueError, match="batch_first"):
        GradientMoments(net, unsupported="fallback").attach()


# ---------------------------------------------------------------------------- contract
def test_reduction_sum_refers_to_the_same_individual_gradients():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(D)
    x, y = data(6, 4)
    mean = gradient_moments(model, F.cross_entropy, x, y)
    mean_var = {k: v.clone() for k, v in mean.variance.items()}
    mean_grad = {k: v.clone() for k, v in mean.grad.items()}
    summed = gradient_moments(model, lambda o, t: F.cross_entropy(o, t, reduction="sum"), x, y,
                              reduction="sum")
    for name, p in model.named_parameters():
        torch.testing.assert_close(summed.variance[name], mean_var[name])
        torch.testing.assert_close(summed.grad[name], mean_grad[name])
        torch.testing.assert_close(p.grad, 6 * mean_grad[name])  # .grad: the loss as reduced


def test_context_manager_in_a_training_loop_and_accumulated_grads():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(D)
    x1, y1 = data(5, 3, classes=2, seed=1)
    x2, y2 = data(4, 3, classes=2, seed=2)
    ref2 = per_example_reference(model, F.cross_entropy, x2, y2)
    with GradientMoments(model) as gm:
        F.cross_entropy(model(x1), y1).backward()
        assert gm.batch_size == 5
        # no zero_grad: .grad accumulates, the statistics still describe the latest batch
        F.cross_entropy(model(x2), y2).backward()
    assert gm.batch_size == 4
    for name, p in model.named_parameters():
        g, v = ref2[name]
        torch.testing.assert_close(gm.grad[name], g)
        torch.testing.assert_close(gm.variance[name], v)
        torch.testing.assert_close(p.grad_var, v)
    assert gm.variance_sum == pytest.approx(sum(float(v.sum()) for _, v in ref2.values()))
    # hooks are gone after the with-block: attributes keep the last values
    before = model[0].weight.grad_var
    model.zero_grad()
    F.cross_entropy(model(x1), y1).backward()
    assert model[0].weight.grad_var is before


def test_enabled_flag_and_fresh_tensors():
    model = nn.Sequential(nn.Linear(3, 2)).to(D)
    x, y = data(4, 3, classes=2)
    gm = GradientMoments(model).attach()
    F.cross_entropy(model(x), y).backward()
    first = model[0].weight.grad_var
    F.cross_entropy(model(x), y).backward()
    assert model[0].weight.grad_var is not first  # a new tensor every backward
    torch.testing.assert_close(model[0].weight.grad_var, first)
    gm.enabled = False
    last = model[0].weight.grad_var
    F.cross_entropy(model(x), y).backward()
    assert model[0].weight.grad_var is last
    gm.remove()


def test_frozen_parameters_are_skipped():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(D)
    model[0].weight.requires_grad_(False)
    res = assert_matches(model, *data(5, 3, classes=2))
    assert "0.weight" not in res.variance
    assert not hasattr(model[0].weight, "grad_var")


def test_unused_parameters_lose_stale_statistics():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x, use_b=False):
            return (self.b if use_b else self.a)(x)

    model = Branchy().to(D)
    x, y = data(4, 3, classes=2)
    with GradientMoments(model):
        F.cross_entropy(model(x, use_b=True), y).backward()
        assert hasattr(model.b.weight, "grad_var")
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    assert hasattr(model.a.weight, "grad_var") and not hasattr(model.b.weight, "grad_var")


def test_mean_variance_and_unbiased_gradient_norm():
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(3, 2)).to(D)
    x, y = data(6, 3, classes=2)
    res = gradient_moments(model, F.cross_entropy, x, y)
    for name, v in res.mean_variance().items():
        torch.testing.assert_close(v, res.variance[name] / 6)
    assert res.grad_sq_norm_unbiased == pytest.approx(res.grad_sq_norm - res.variance_sum / 6)
    with torch.no_grad():
        assert float(res.loss) == pytest.approx(float(F.cross_entropy(model(x), y)))


def test_float32_close_to_float64():
    torch.manual_seed(13)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    x, y = data(8, 1, 8, 8)
    res32 = gradient_moments(model, F.cross_entropy, x.float(), y)
    var32 = {k: v.clone() for k, v in res32.variance.items()}
    res64 = gradient_moments(model.to(D), F.cross_entropy, x, y)
    for k, v in res64.variance.items():
        assert var32[k].dtype == torch.float32
        torch.testing.assert_close(var32[k].double(), v, rtol=1e-4, atol=1e-6 * v.abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_parameters(dtype):
    # Squares are formed in float32 (half-precision squares overflow) and stored in the
    # parameter's dtype. The reference differentiates the same rounded weights and inputs in
    # float64; the half-precision forward and backward round at every layer (bfloat16 keeps 8
    # significant bits, relative rounding 2^-9), measured <= 7e-3 of the largest variance
    # for bfloat16 and <= 5e-4 for float16: the tolerances allow about four times that.
    torch.manual_seed(15)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    ref_model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(D)
    ref_model.load_state_dict({k: v.to(D) for k, v in model.state_dict().items()})
    x, y = data(16, 6)
    x = x.to(dtype)
    ref = per_example_reference(ref_model, F.cross_entropy, x.to(D), y)
    res = gradient_moments(model, F.cross_entropy, x, y)
    tol = 3e-2 if dtype == torch.bfloat16 else 2e-3
    for name, (_, v) in ref.items():
        assert res.variance[name].dtype == dtype
        err = (res.variance[name].to(D) - v).abs().max() / v.abs().max()
        assert err <= tol, (name, float(err))


def test_previous_statistics_are_released_when_the_next_backward_starts():
    # Holding the previous backward's grad_var (and the gradients zero_grad let go) until the
    # new ones exist keeps two generations alive: more peak memory, and fresh pages for the
    # allocator every step. They must be gone once the next backward's first hook has run;
    # tensors the caller keeps stay valid.
    torch.manual_seed(16)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(D)
    x, y = data(5, 3, classes=2)
    with GradientMoments(model) as gm:
        F.cross_entropy(model(x), y).backward()
        old_var = weakref.ref(model[0].weight.grad_var)
        old_grad = weakref.ref(model[0].weight.grad)
        kept = model[2].weight.grad_var
        kept_values = kept.clone()
        model.zero_grad(set_to_none=True)
        seen = {}

        def probe(grad):  # model[2] is the first layer the next backward reaches
            seen["var"], seen["grad"] = old_var(), old_grad()
            seen["attr"] = hasattr(model[0].weight, "grad_var")

        handle = model[2].weight.register_hook(probe)
        F.cross_entropy(model(x), y).backward()
        handle.remove()
    assert seen == {"var": None, "grad": None, "attr": False}
    torch.testing.assert_close(kept, kept_values)
    assert model[0].weight.grad_var is gm.variance["0.weight"]


# ---------------------------------------------------------------------------- edge cases
def test_identical_examples_have_zero_variance_and_defined_ratio():
    model = nn.Sequential(nn.Linear(3, 2)).to(D)
    x = torch.ones(4, 3, dtype=D)
    y = torch.zeros(4, dtype=torch.long)
    res = gradient_moments(model, F.cross_entropy, x, y)
    # one-pass formula: rounding noise only, clamped so that it is never negative
    assert all(bool((v >= 0).all()) for v in res.variance.values())
    assert 0.0 <= res.variance_sum < 1e-12 * res.grad_sq_norm
    assert 0.0 <= res.noise_to_signal < 1e-12
    with torch.no_grad():  # a zero gradient: 0/0 is nan, x/0 is inf
        for p in model.parameters():
            p.zero_()
    zero = gradient_moments(model, lambda o, t: (o * 0).sum(dim=1).mean(), x, y)
    assert zero.grad_sq_norm == 0.0 and math.isnan(zero.noise_to_signal)
    res2 = gradient_moments(model, lambda o, t: (o[:, 0] * torch.tensor([1.0, -1, 1, -1],
                                                                       dtype=D)).mean(),
                            torch.ones(4, 3, dtype=D), y)
    assert res2.grad_sq_norm == 0.0 and res2.variance_sum > 0
    assert res2.noise_to_signal == math.inf


def test_nonfinite_loss_propagates_nan():
    model = nn.Sequential(nn.Linear(3, 2)).to(D)
    x, y = data(4, 3, classes=2)
    x[0, 0] = float("nan")
    res = gradient_moments(model, F.cross_entropy, x, y)
    assert math.isnan(res.variance_sum) and math.isnan(res.noise_to_signal)


def test_batch_of_one_and_unbatched_inputs_raise():
    model = nn.Sequential(nn.Linear(3, 2)).to(D)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_moments(model, F.cross_entropy, *data(1, 3, classes=2))
    with pytest.raises(ValueError, match="batch dimension"):
        gradient_moments(model, lambda o, t: o.sum(), torch.ones(3, dtype=D), None)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3)).to(D)
    with pytest.raises(ValueError, match="batch dimension"):
        gradient_moments(conv, lambda o, t: o.sum(), torch.ones(1, 5, 5, dtype=D), None)


def test_batchnorm_in_training_mode_raises():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"BatchNorm1d '1'.*batch statistics.*eval"):
        gradient_moments(model.to(D), F.cross_entropy, *data(4, 3, classes=2))


def test_weight_tying_and_reuse_raise():
    a = nn.Linear(3, 3)
    b = nn.Linear(3, 3)
    b.weight = a.weight
    with pytest.raises(ValueError, match="weight tying"):
        GradientMoments(nn.Sequential(a, b))
    lin = nn.Linear(3, 3).to(D)
    twice = nn.Sequential(lin, nn.Tanh(), lin)
    with pytest.raises(RuntimeError, match="used more than once"):
        gradient_moments(twice, F.cross_entropy, *data(4, 3))


@pytest.mark.filterwarnings("ignore:Complex modules")
def test_complex_and_sparse_parameters_raise():
    lin = nn.Linear(2, 2).to(torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        GradientMoments(nn.Sequential(lin))
    emb = nn.Sequential(nn.Embedding(5, 3, sparse=True), nn.Flatten(), nn.Linear(6, 2))
    t = torch.randint(0, 5, (4, 2))
    with pytest.raises(RuntimeError, match="sparse"):
        gradient_moments(emb, F.cross_entropy, t, torch.zeros(4, dtype=torch.long))


def test_argument_validation():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unsupported"):
        GradientMoments(model, unsupported="warn")
    with pytest.raises(ValueError, match="reduction"):
        GradientMoments(model, reduction="none")
    with pytest.raises(ValueError, match="chunk_numel"):
        GradientMoments(model, chunk_numel=0)
    with pytest.raises(TypeError, match="Module"):
        GradientMoments(lambda x: x)
    with pytest.raises(RuntimeError, match="no statistics yet"):
        GradientMoments(model).result()
    with pytest.raises(ValueError, match="scalar"):
        gradient_moments(model, lambda o, t: o, torch.randn(3, 2), None)


def test_small_chunks_give_the_same_result():
    torch.manual_seed(14)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 16, 2)).to(D)
    x, y = data(7, 2, 6, 6, classes=2)
    with GradientMoments(model, chunk_numel=1) as gm:  # one example at a time
        F.cross_entropy(model(x), y).backward()
    ref = per_example_reference(model, F.cross_entropy, x, y)
    for name, (_, v) in ref.items():
        torch.testing.assert_close(gm.variance[name], v)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_backpack_variance_scaling():
    """BackPACK's Variance (mean loss) is the 1/N variance of g_i/N: s = N^3/(N-1) * var."""
    backpack = pytest.importorskip(
        "backpack", reason="BackPACK is a benchmark-only comparator: benchmarks/gradient_moments.py set-up"
    )
    from backpack.extensions import Variance

    torch.manual_seed(15)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 3))
    x, y = data(6, 1, 6, 6)
    x = x.float()
    ours = gradient_moments(model, F.cross_entropy, x, y)
    ours_var = {k: v.clone() for k, v in ours.variance.items()}
    bmodel = backpack.extend(model)
    loss = backpack.extend(nn.CrossEntropyLoss())(bmodel(x), y)
    with backpack.backpack(Variance()):
        loss.backward()
    for name, p in bmodel.named_parameters():
        torch.testing.assert_close(p.variance * 6**3 / 5, ours_var[name], rtol=1e-4, atol=1e-7)



def test_fallback_refuses_randomness_inside_the_module():
    """The fallback re-runs the module per example and cannot replay a dropout mask."""

    class NoisyGain(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(x) * self.gain

    model = nn.Sequential(nn.Linear(3, 3), NoisyGain()).to(D)
    with pytest.raises(RuntimeError, match=r"fallback failed for module '1' \(NoisyGain\)"):
        gradient_moments(model, F.cross_entropy, *data(4, 3), unsupported="fallback")
    model.eval()  # no randomness: fine
    assert_matches(model, *data(4, 3), unsupported="fallback")


def test_embedding_scaled_by_batch_frequency_raises():
    emb = nn.Sequential(nn.Embedding(5, 3, scale_grad_by_freq=True), nn.Flatten(),
                        nn.Linear(6, 2))
    t = torch.randint(0, 5, (4, 2))
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        gradient_moments(emb, F.cross_entropy, t, torch.zeros(4, dtype=torch.long))
