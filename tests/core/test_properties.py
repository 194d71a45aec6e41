"""Property tests (hypothesis): invariants of the neuron family, ClipRound, BN folding and the threshold
strategies for random inputs and knobs, each against a closed form or an independent float64 reference.

The neuron contract tested is the binary-spike one (common.md): spikes are 0/1 (0/+-1 when signed), the
negative spike fires at v <= -fire_at*theta_neg, the SNM gate keeps the net emitted value
M = theta*n_pos - theta_neg*n_neg >= 0, and the membrane is soft-reset by theta / theta_neg.

Inputs are multiples of 1/16 and thresholds powers of two, so every membrane sum below is exact in float32
and the closed forms hold bit for bit; the leak variant compares against float64 with a tolerance.
"""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snnconv_ext import graph, thresholds
from snnconv_ext.core.neuron import NeuronParams, init_state, run, simulate, start_potential
from snnconv_ext.conversion.thresholds import clip_round

PROPS = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

thetas = st.sampled_from([0.5, 1.0, 2.0])
fire_ats = st.sampled_from([1.0, 0.5])


@st.composite
def currents(draw, max_T: int = 48, max_n: int = 4, lo: int = -40, hi: int = 40):
    """Input currents x of shape [T, n], multiples of 1/16 in [lo/16, hi/16]."""
    T = draw(st.integers(1, max_T))
    n = draw(st.integers(1, max_n))
    ks = draw(st.lists(st.integers(lo, hi), min_size=T * n, max_size=T * n))
    return torch.tensor(ks, dtype=torch.float32).reshape(T, n) / 16


def spikes(out: torch.Tensor) -> torch.Tensor:
    """Spike signs in {-1, 0, 1} (the contract emits them directly; counting nonzero outputs also works on
    emitters of theta-scaled values)."""
    return torch.sign(out)


def final_membrane(x: torch.Tensor, **knobs) -> tuple:
    """(spike signs, membrane after the last step) from the core neuron. The core stores an unsigned neuron's
    membrane raised by (1 - fire_at) theta (``start_potential``); the contract's v is the stored one minus that."""
    p = NeuronParams(**knobs).to(x[0])
    out, state = run(x, init_state(x[0], p), p)
    return spikes(out), state.v - (start_potential(p) - p.v0)


def reference(x: torch.Tensor, theta=1.0, fire_at=1.0, theta_neg=None, memory=False, v0=0.0, leak=1.0):
    """The contract written out per neuron and step in float64 Python scalars (independent of neuron.py):
    v <- leak v + x; +1 if v >= fire_at theta; else -1 if v <= -fire_at theta_neg (with memory: only if
    M - theta_neg >= 0, M the net value emitted so far); soft reset v -= theta s+ - theta_neg s-.
    Returns (spikes [T, n] in {-1, 0, 1}, final membrane [n])."""
    T, n = x.shape
    out, vs = torch.zeros(T, n, dtype=torch.float64), []
    for j in range(n):
        v, M = float(v0), 0.0
        for t in range(T):
            v = leak * v + float(x[t, j])
            if v >= fire_at * theta:
                out[t, j], v, M = 1, v - theta, M + theta
            elif theta_neg is not None and v <= -fire_at * theta_neg and (not memory or M - theta_neg >= 0):
                out[t, j], v, M = -1, v + theta_neg, M - theta_neg
        vs.append(v)
    return out, torch.tensor(vs, dtype=torch.float64)


# --- the implementation against the written-out contract ---------------------------------------------------------

@PROPS
@given(x=currents(max_T=32), theta=thetas, fire_at=fire_ats, neg=st.sampled_from([None, 0.5, 1.0, 2.0]),
       memory=st.booleans(), v0=st.integers(-8, 8), leak=st.sampled_from([1.0, 0.5]))
def test_neuron_matches_the_written_out_contract(x, theta, fire_at, neg, memory, v0, leak):
    theta_neg = None if neg is None else theta * neg
    memory = memory and theta_neg is not None
    if leak != 1.0:
        x = x[:12]  # each halving adds a bit: 12 steps of multiples of 1/16 up to ~2^7 fit float32's 24 bits
    s, v = final_membrane(x, theta=theta, fire_at=fire_at, theta_neg=theta_neg, memory=memory, v0=v0 / 16, leak=leak)
    s_ref, v_ref = reference(x, theta, fire_at, theta_neg, memory, v0 / 16, leak)
    assert torch.equal(s.double(), s_ref)
    assert torch.equal(v.double(), v_ref)  # dyadic inputs, leak in {1, 1/2}, short runs: exact in float32


# --- IF charge conservation -------------------------------------------------------------------------------------

@PROPS
@given(x=currents(), theta=thetas, fire_at=fire_ats, signed=st.booleans(), v0=st.integers(-8, 8),
       amplitude=st.sampled_from([1.0, 0.5, 3.0]))
def test_charge_conservation(x, theta, fire_at, signed, v0, amplitude):
    # leak = 1: v_T + theta * n_pos - theta_neg * n_neg = v0 + sum_t x_t (DNISNM Eqs. 19 and 22, soft reset),
    # whatever value (amplitude) a spike carries downstream
    theta_neg = theta if signed else None
    s, v = final_membrane(x, theta=theta, fire_at=fire_at, theta_neg=theta_neg, v0=v0 / 16, amplitude=amplitude)
    assert set(s.unique().tolist()) <= ({-1.0, 0.0, 1.0} if signed else {0.0, 1.0})
    n_pos, n_neg = (s == 1).sum(0).double(), (s == -1).sum(0).double()
    lhs = v.double() + theta * n_pos - (theta_neg or 0.0) * n_neg
    rhs = v0 / 16 + x.double().sum(0)
    assert torch.equal(lhs, rhs)  # exact: all quantities are multiples of 1/16
    s1, v1 = final_membrane(x, theta=theta, fire_at=fire_at, theta_neg=theta_neg, v0=v0 / 16)
    assert torch.equal(s, s1) and torch.equal(v, v1)  # the amplitude never changes the membrane


@PROPS
@given(x=currents(max_T=32), theta=thetas, fire_at=fire_ats, signed=st.booleans(),
       leak=st.sampled_from([0.5, 0.9, 0.99]), v0=st.integers(0, 8))
def test_charge_conservation_with_leak(x, theta, fire_at, signed, leak, v0):
    # v_t = leak * v_{t-1} + x_t - theta*[s_t = 1] + theta_neg*[s_t = -1], unrolled in float64:
    # v_T = leak^T v0 + sum_t leak^(T-t) (x_t - theta s+_t + theta_neg s-_t)
    theta_neg = theta if signed else None
    s, v = final_membrane(x, theta=theta, fire_at=fire_at, theta_neg=theta_neg, v0=v0 / 16, leak=leak)
    T = x.shape[0]
    w = torch.tensor([leak ** (T - 1 - t) for t in range(T)], dtype=torch.float64)[:, None]
    reset = theta * (s == 1).double() - (theta_neg or 0.0) * (s == -1).double()
    ref = leak ** T * (v0 / 16) + (w * (x.double() - reset)).sum(0)
    torch.testing.assert_close(v.double(), ref, atol=1e-5 * (1 + x.abs().sum().item()), rtol=0)


# --- signed neuron symmetry -------------------------------------------------------------------------------------

@PROPS
@given(x=currents(), theta=thetas, fire_at=fire_ats, v0=st.integers(-8, 8), leak=st.sampled_from([1.0, 0.75]))
def test_signed_symmetry(x, theta, fire_at, v0, leak):
    # symmetric thresholds (theta_neg = theta, both at fire_at): s(-x; -v0) = -s(x; v0), step by step
    kw = dict(theta=theta, fire_at=fire_at, theta_neg=theta, leak=leak)
    a = spikes(simulate(x, v0=v0 / 16, **kw))
    b = spikes(simulate(-x, v0=-v0 / 16, **kw))
    assert torch.equal(b, -a)


# --- SNM --------------------------------------------------------------------------------------------------------

@PROPS
@given(x=currents(max_T=64), theta=thetas, ratio=st.sampled_from([0.5, 1.0, 2.0]), fire_at=fire_ats,
       v0=st.integers(0, 7))
def test_snm_net_value_never_below_zero(x, theta, ratio, fire_at, v0):
    # DNISNM Eq. 21 with memory: a negative spike fires only if the net emitted value stays >= 0 afterwards
    theta_neg = theta * ratio
    s = spikes(simulate(x, theta=theta, fire_at=fire_at, theta_neg=theta_neg, memory=True, v0=v0 / 16))
    net = (theta * (s == 1).double() - theta_neg * (s == -1).double()).cumsum(0)
    assert (net >= 0).all()


@PROPS
@given(k=st.integers(-40, 40), T=st.integers(1, 64), theta=thetas, n=st.integers(1, 3))
def test_snm_net_count_is_the_rounded_integral_for_constant_input(k, T, theta, n):
    # DNI + SNM (v0 = theta/2, fire at theta): for constant input x the net spike count after T steps is
    # clip(round(T x / theta), 0, T) = clip(floor(T x / theta + 1/2), 0, T)
    x = torch.full((T, n), k / 16)
    s = spikes(simulate(x, theta=theta, theta_neg=theta, memory=True, v0=theta / 2))
    net = (s == 1).sum(0) - (s == -1).sum(0)
    want = min(max(math.floor(T * (k / 16) / theta + 0.5), 0), T)
    assert net.tolist() == [want] * n


@PROPS
@given(k=st.integers(-40, 40), T=st.integers(1, 64), theta=thetas, fire_at=fire_ats, v0_frac=st.sampled_from([0, 1]))
def test_if_constant_input_closed_form(k, T, theta, fire_at, v0_frac):
    # IF with v0 in {0, fire_at*theta/2} < fire_at*theta and constant x:
    # n_T = clip(floor((v0 + T x)/theta + 1 - fire_at), 0, T)   (Li et al. 2022, Eqs. 17 and 21)
    v0 = v0_frac * fire_at * theta / 2
    s = spikes(simulate(torch.full((T, 1), k / 16), theta=theta, fire_at=fire_at, v0=v0))
    want = min(max(math.floor((v0 + T * k / 16) / theta + 1 - fire_at), 0), T)
    assert int(s.sum()) == want


# --- ClipRound ---------------------------------------------------------------------------------------------------

@PROPS
@given(ks=st.lists(st.integers(-40, 72), min_size=1, max_size=6), T=st.integers(1, 64), theta=thetas)
def test_clipround_is_the_mean_of_the_half_threshold_neuron(ks, T, theta):
    # Li et al. 2022, Eq. 17: ClipRound(x) = theta/T clip(floor(T x/theta + 1/2), 0, T) equals the T-step mean
    # value (theta per spike) of an IF neuron firing at theta/2, for constant input x (any sign, beyond theta too)
    x = torch.tensor(ks, dtype=torch.float32) / 16
    s = spikes(simulate(x.expand(T, -1).contiguous(), theta=theta, fire_at=0.5))
    want = clip_round(x, torch.tensor(theta), T)
    assert torch.equal(s.sum(0), torch.round(want * T / theta))  # spike counts: exact
    torch.testing.assert_close(theta * s.sum(0) / T, want, rtol=1e-6, atol=0)


# --- BN folding --------------------------------------------------------------------------------------------------

@PROPS
@given(seed=st.integers(0, 2 ** 16), conv=st.booleans(), bias=st.booleans(), affine=st.booleans(),
       c_in=st.integers(1, 4), c_out=st.integers(1, 6))
def test_bn_folding_equals_the_unfolded_net(seed, conv, bias, affine, c_in, c_out):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if conv:
        lin, bn, x = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), nn.BatchNorm2d(c_out, affine=affine), \
            torch.randn(5, c_in, 6, 6, generator=g)
    else:
        lin, bn, x = nn.Linear(c_in, c_out, bias=bias), nn.BatchNorm1d(c_out, affine=affine), torch.randn(5, c_in, generator=g)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c_out, generator=g))
        bn.running_var.copy_(torch.rand(c_out, generator=g) * 4 + 0.01)
        if affine:
            bn.weight.copy_(torch.randn(c_out, generator=g))
            bn.bias.copy_(torch.randn(c_out, generator=g))
    model = nn.Sequential(lin, bn, nn.ReLU()).eval()
    with torch.no_grad():
        ref = model.double()(x.double())  # unfolded, in float64
        folded = graph.fold_bn(graph.trace(model.float()))
        assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
        torch.testing.assert_close(folded(x).double(), ref, atol=1e-4 * (1 + ref.abs().max().item()), rtol=1e-4)


# --- threshold strategies ------------------------------------------------------------------------------------------

@PROPS
@given(seed=st.integers(0, 2 ** 16), p1=st.floats(0.1, 100.0), p2=st.floats(0.1, 100.0),
       granularity=st.sampled_from(["layer", "channel"]))
def test_percentile_threshold_monotone_in_p(seed, p1, p2, granularity):
    z = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    lo, hi = sorted((p1, p2))
    a, b = thresholds.get("percentile", p=lo, granularity=granularity), \
        thresholds.get("percentile", p=hi, granularity=granularity)
    a.observe(z)
    b.observe(z)
    assert (a.compute() <= b.compute()).all()
    top = thresholds.get("max", granularity=granularity)
    top.observe(z)
    assert (b.compute() <= top.compute()).all()  # p = 100 is the max


@PROPS
@given(seed=st.integers(0, 2 ** 16), granularity=st.sampled_from(["layer", "channel", "neuron"]),
       cut=st.integers(1, 15))
def test_max_threshold_monotone_in_the_data(seed, granularity, cut):
    # more calibration data never lowers a max threshold, and the result does not depend on how it is batched
    z = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    part, whole, batched = (thresholds.get("max", granularity=granularity) for _ in range(3))
    part.observe(z[:cut])
    whole.observe(z)
    batched.observe(z[:cut])
    batched.observe(z[cut:])
    assert (part.compute() <= whole.compute()).all()
    assert torch.equal(whole.compute(), batched.compute())


@PROPS
@given(seed=st.integers(0, 2 ** 16), T=st.integers(1, 32))
def test_mmse_threshold_within_range_and_not_worse_than_max(seed, T):
    # Li et al. 2022, Eq. 18: the MMSE threshold lies on the grid (0, max] and its ClipRound error is no larger
    # than that of theta = max (the last grid point)
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed)).exp()
    s = thresholds.get("mmse", T=T, N=50)
    s.observe(z)
    th = s.compute()
    top = z.max()
    assert 0 < th <= top * (1 + 1e-6)
    err = lambda t: (clip_round(z, t, T) - z).pow(2).mean()
    assert err(th) <= err(top) + 1e-7
