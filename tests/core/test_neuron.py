"""The neuron family against hand-computed sequences, closed forms and invariants."""
import math

import pytest
import torch

from snnconv_ext.core.neuron import NeuronParams, init_state, simulate, step, step_, value


def seq(*v):
    return torch.tensor(v, dtype=torch.float32)[:, None]


def test_if_hand_computed():
    # v: 0.6, 1.2->fire->0.2, 0.8, 1.4->fire->0.4
    assert simulate(seq(0.6, 0.6, 0.6, 0.6)).flatten().tolist() == [0, 1, 0, 1]
    # threshold 2: v 1.5, 3.0 -> fire -> 1.0, 2.5 -> fire -> 0.5; spikes are binary, worth theta (value())
    out = simulate(seq(1.5, 1.5, 1.5), theta=2.0)
    assert out.flatten().tolist() == [0, 1, 1]
    assert value(out, NeuronParams(theta=2.0)).flatten().tolist() == [0, 2, 2]


def test_fire_at_half_is_rounding():
    # fire at theta/2 (ttrbr Eq. 12): v 0.6 -> fire (0.6>=0.5) -> -0.4, 0.2, 0.8 fire -> -0.2
    assert simulate(seq(0.6, 0.6, 0.6), fire_at=0.5).flatten().tolist() == [1, 0, 1]


def test_signed_if_hand_computed():
    # stReLU signed IF: +1,+1 then negative input drains with negative spikes
    out = simulate(seq(1.0, 1.0, -1.0, -1.0, -1.0, 0.4), theta_neg=1.0)
    assert out.flatten().tolist() == [1, 1, -1, -1, -1, 0]


def test_snm_hand_computed_and_memory_gate():
    # SNM (DNISNM Eqs. 19-23): after two positive spikes, only two negative spikes may follow
    out = simulate(seq(2.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0), theta_neg=1.0, memory=True)
    assert out.flatten().tolist() == [1, 1, 0, -1, -1, 0, 0]
    # with no positive spike ever, no negative spike at all
    assert simulate(seq(-3.0, -3.0), theta_neg=1.0, memory=True).abs().sum() == 0


def test_dnisnm_fig3_asynchronism():
    # DNISNM Fig. 3: inputs 1, 2, 3 spikes through weights 1, 2, -1, negative ones arriving late.
    # ANN output: 1*1 + 2*2 - 3*1 = 2. Plain IF fires 3 times; SNM emits net 2.
    # Timing as Fig. 6(b) describes it: t1 one w1 spike and one w2 spike (+3), t2 the second w2 spike (+2),
    # t3-t5 the three w3 spikes (-1 each); "at t4 the membrane potential is 0 and the memory is 3 theta".
    currents = seq(3.0, 2.0, -1.0, -1.0, -1.0)
    if_out = simulate(currents)
    assert if_out.flatten().tolist() == [1, 1, 1, 0, 0] and if_out.sum().item() == 3
    p = NeuronParams(theta=1.0, theta_neg=1.0, memory=True).to(currents[0])
    st = init_state(currents[0], p)
    snm = [step_(currents[t], st, p).item() for t in range(4)]
    assert st.v.item() == 0.0 and st.m.item() == 3.0  # state at t4, as in Fig. 6(b)
    snm.append(step_(currents[4], st, p).item())
    assert snm == [1, 1, 1, 0, -1] and sum(snm) == 2  # the ANN's output


def test_fig3_under_the_dni_snm_configuration():
    # the exact neuron `dni+snm` builds (methods.get): signed, memory, firing at +-theta/2 (issue 12, item 1).
    # With the old v0 = theta/2 start and -theta negative threshold, this input gave net 3.
    from snnconv_ext.conversion.registry import get
    m = get("dni+snm")
    knobs = dict(theta=1.0, theta_neg=1.0, memory=m.memory, fire_at=m.fire_at, v0=0.5 if m.v0 == "half" else 0.0)
    out = simulate(seq(3.0, 2.0, -1.0, -1.0, -1.0), **knobs)
    assert out.sum().item() == 2.0  # the ANN's output 1*1 + 2*2 - 3*1


@pytest.mark.parametrize("T", [4, 8, 16])
def test_signed_neuron_rounds_symmetrically(T):
    # stReLU Eq. 14: with the fire point at +-theta/2 the signed neuron's count for constant input x is
    # round(T x / theta) clipped to [-T, T], for x and -x alike (ties at .5 go away from zero).
    xs = (torch.arange(-3 * T, 3 * T + 1) / (2 * T)).float()  # multiples of 1/(2T), T a power of 2: exact sums, ties hit
    out = simulate(xs.expand(T, -1).contiguous(), theta=1.0, theta_neg=1.0, fire_at=0.5).sum(0)
    a = T * xs
    expect = torch.clamp(torch.sign(a) * torch.floor(a.abs() + 0.5), -T, T)
    assert torch.equal(out, expect)
    assert torch.equal(out, -out.flip(0))  # s(-x) = -s(x)


def test_snm_asymmetric_thresholds_never_net_negative():
    # issue 12, item 2: with theta_neg != theta a negative spike is allowed only if the net emitted value
    # amplitude*theta*n_pos - amplitude*theta_neg*n_neg stays >= 0 afterwards.
    torch.manual_seed(0)
    x = torch.randn(200, 300)
    for theta, theta_neg in ((1.0, 0.7), (0.7, 1.0)):
        out = simulate(x, theta=theta, theta_neg=theta_neg, memory=True)
        net = torch.cumsum((out > 0) * theta - (out < 0) * theta_neg, 0)
        assert (net >= -1e-6).all()
        assert (out < 0).any()
    # hand example: theta 1, theta_neg 0.7: one positive spike (value 1) allows one negative (0.7) only
    out = simulate(seq(1.0, -0.7, -0.7, -0.7), theta=1.0, theta_neg=0.7, memory=True)
    assert out.flatten().tolist() == [1, -1, 0, 0]


@pytest.mark.parametrize("knobs", [
    {}, {"theta": 0.7}, {"fire_at": 0.5}, {"theta_neg": 0.5}, {"theta_neg": 1.0, "memory": True},
    {"v0": 0.35, "theta": 0.7}, {"amplitude": 0.3, "theta": torch.tensor([0.5, 1.0, 2.0])[:, None].expand(3, 40)},
    {"theta_neg": 0.6, "fire_at": 0.5, "theta": 0.9},
])
def test_charge_conservation(knobs):
    # soft reset: every unit of charge either stays on the membrane or left as a spike
    torch.manual_seed(1)
    x = torch.randn(50, 3, 40) * 0.6 + 0.2
    out = simulate(x, **knobs)
    v0 = knobs.get("v0", 0.0)
    # replay to get final v
    from snnconv_ext.core.neuron import init_state, step_
    p = NeuronParams(**{k: v for k, v in knobs.items()}).to(x[0])
    st = init_state(x[0], p)
    for t in range(x.shape[0]):
        step_(x[t], st, p)
    theta = knobs.get("theta", 1.0)
    theta_neg = knobs.get("theta_neg", theta)
    shift = (1 - knobs.get("fire_at", 1.0)) * theta if "theta_neg" not in knobs else 0.0  # stored fire point
    emitted = (out > 0) * theta - (out < 0) * theta_neg
    torch.testing.assert_close(st.v - shift, v0 + x.sum(0) - emitted.sum(0), atol=1e-4, rtol=0)


def test_amplitude_and_reset_amount():
    # Datta Eq. 8: a spike is worth beta*theta to the next layer, the membrane still loses theta
    p = NeuronParams(theta=1.0, amplitude=0.5)
    out = simulate(seq(0.6, 0.6, 0.6, 0.6), theta=1.0, amplitude=0.5)
    assert out.flatten().tolist() == [0, 1, 0, 1]
    assert value(out, p).flatten().tolist() == [0, 0.5, 0, 0.5]


def test_leak():
    # v: 1*0.5 + 0.6 = 0.6; 0.3+0.6 = 0.9; 0.45+0.6 = 1.05 -> fire
    out = simulate(seq(0.6, 0.6, 0.6), leak=0.5)
    assert out.flatten().tolist() == [0, 0, 1]


@pytest.mark.parametrize("fire_at", [1.0, 0.5])
def test_constant_input_closed_form(fire_at):
    # IF rate for constant input: N(T) = clip(floor(T x / theta + (1 - fire_at)), 0, T)  (ClipFloor / ClipRound,
    # calibration Eqs. 10 and 17). Values are chosen on a grid that float sums represent exactly.
    theta, T = 1.0, 32
    xs = torch.arange(-8, 48) / 32.0
    out = simulate(xs.expand(T, -1).contiguous(), theta=theta, fire_at=fire_at)
    n = out.sum(0)
    expect = torch.clamp(torch.floor(T * xs / theta + (1 - fire_at)), 0, T)
    assert torch.equal(n, expect)


def test_rate_approaches_relu_as_T_grows():
    xs = torch.rand(1000) * 1.5 - 0.25
    for T, tol in ((16, 1 / 16), (256, 1 / 256)):
        rate = simulate(xs.expand(T, -1).contiguous()).mean(0)  # spikes of theta = 1
        assert (rate - xs.clamp(0, 1)).abs().max() <= tol + 1e-6


def test_parameters_broadcast_per_neuron():
    theta = torch.tensor([0.5, 1.0, 2.0])
    out = simulate(torch.ones(4, 2, 3), theta=theta)
    assert out.shape == (4, 2, 3)
    assert out[:, 0].sum(0).tolist() == [4.0, 4.0, 2.0]  # v 1,2,3,4 against thresholds 0.5, 1, 2


def test_bad_parameters():
    with pytest.raises(ValueError, match="theta"):
        simulate(torch.ones(2, 1), theta=0.0)
    with pytest.raises(ValueError, match="memory"):
        simulate(torch.ones(2, 1), memory=True)
    with pytest.raises(ValueError, match="fire_at"):
        simulate(torch.ones(2, 1), fire_at=1.5)
    with pytest.raises(ValueError, match="shape"):
        simulate(torch.tensor(1.0))


class _Fast(torch.autograd.Function):
    """Heaviside forward, a triangle surrogate backward: max(0, 1 - |u|)."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * (1 - u.abs()).clamp_min(0)


def _smooth(u):  # the surrogate's own primitive, for finite differences: the integral of max(0, 1 - |u|)
    return torch.where(u < -1, 0.0, torch.where(u < 0, 0.5 * (1 + u) ** 2, torch.where(u < 1, 1 - 0.5 * (1 - u) ** 2, 1.0)))


@pytest.mark.parametrize("signed", [False, True])
def test_step_forward_equals_fast_path_and_gradient_matches_finite_differences(signed):
    torch.manual_seed(0)
    x = (torch.rand(6, 5, 7, dtype=torch.float64) - (0.5 if signed else 0.2)) * 1.2
    kn = dict(theta=torch.full((7,), 0.8, dtype=torch.float64), fire_at=0.5 if signed else 1.0,
              theta_neg=0.8 if signed else None, leak=0.9)
    p = NeuronParams(**kn).to(x[0])
    fast = simulate(x, **kn)
    st = init_state(x[0], p)
    spikes = []
    for t in range(x.shape[0]):
        s, st = step(x[t], st, p, _Fast.apply)
        spikes.append(s)
    assert torch.equal(torch.stack(spikes), fast)  # same forward as the in-place path

    # gradient w.r.t. theta through the surrogate: autograd of the spiking net equals finite differences of
    # the same computation with the surrogate's primitive in place of the Heaviside (same derivative)
    def total(theta, fn):
        q = NeuronParams(**{**kn, "theta": theta}).to(x[0])
        st = init_state(x[0], q)
        acc = 0
        for t in range(x.shape[0]):
            s, st = step(x[t], st, q, fn)
            acc = acc + (s * torch.arange(1, 8, dtype=x.dtype)).sum()
        return acc
    th = kn["theta"].clone().requires_grad_(True)
    total(th, lambda u: _smooth(u)).backward()
    g_smooth = th.grad.clone()
    eps = 1e-6
    fd = torch.stack([(total(kn["theta"] + eps * e, _smooth) - total(kn["theta"] - eps * e, _smooth)) / (2 * eps)
                      for e in torch.eye(7, dtype=torch.float64)])
    torch.testing.assert_close(g_smooth, fd, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("knobs", [dict(theta="per", fire_at=0.5), dict(theta="per", fire_at=0.5, theta_neg="per"),
                                   dict(theta="per", fire_at=0.5, theta_neg="per", memory=True),
                                   dict(theta=1.0, theta_neg=0.7, memory=True, leak="per")])
def test_blocked_in_place_loop_equals_the_functional_step(monkeypatch, knobs):
    """The in-place loop advances the batch in blocks of rows (cache blocking); spikes and final state must equal
    the functional :func:`step`'s, stepped over the whole batch, including a short last block."""
    import snnconv_ext.core.neuron as neuron
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 7, 3, 4, 5, generator=g)
    per = lambda: torch.rand(3, 4, 5, generator=g) + 0.5  # noqa: E731
    kw = {k: (per() if v == "per" else v) for k, v in knobs.items()}
    if kw.get("leak") is not None and isinstance(kw["leak"], torch.Tensor):
        kw["leak"] = kw["leak"].clamp(max=1.0)
    if kw.get("theta_neg") is not None and knobs.get("theta_neg") == "per":
        kw["theta_neg"] = kw["theta"]
    p = NeuronParams(**kw).to(x[0])
    monkeypatch.setattr(neuron, "BLOCK", 2 * 60)  # two rows per block: 7 rows -> 2, 2, 2, 1
    assert neuron._block_rows(x, p) == 2
    s, st = neuron.run(x, init_state(x[0], p), p)
    ref_state, ref = init_state(x[0], p), []
    for t in range(x.shape[0]):
        o, ref_state = step(x[t], ref_state, p)
        ref.append(o)
    assert torch.equal(s, torch.stack(ref))
    assert torch.allclose(st.v, ref_state.v, atol=1e-5)
    if p.memory:
        assert torch.allclose(st.m, ref_state.m, atol=1e-6)


def test_parameters_with_a_batch_dimension_are_not_blocked(monkeypatch):
    import snnconv_ext.core.neuron as neuron
    monkeypatch.setattr(neuron, "BLOCK", 4)
    x = torch.randn(3, 6, 4)
    assert neuron._block_rows(x, NeuronParams(theta=torch.rand(6, 4) + 0.5).to(x[0])) is None
    assert neuron._block_rows(x, NeuronParams(theta=torch.rand(4) + 0.5).to(x[0])) == 1
