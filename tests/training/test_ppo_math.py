"""The pieces of the home-made PPO (training/ppo.py) against values worked out by hand.

float64 tensors, so the hand-computed numbers compare to 1e-9."""

from __future__ import annotations

import math

import pytest
import torch

from training.ppo import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    masked_mean,
    masked_whiten,
    reply_mask,
)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(actual: torch.Tensor | float, expected: list[list[float]] | float) -> None:
    actual = actual if isinstance(actual, torch.Tensor) else torch.tensor(actual)
    torch.testing.assert_close(
        actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9
    )


def test_gae_and_returns() -> None:
    # gamma = 0.9, lam = 0.5, so gamma * lam = 0.45.
    # Row 0, three reply tokens: rewards [1, 0, 2], values [0.5, 1.0, 0.0].
    #   t=2: delta = 2 + 0.9*0   - 0.0 =  2.0         A2 =  2.0
    #   t=1: delta = 0 + 0.9*0.0 - 1.0 = -1.0         A1 = -1.0 + 0.45*2.0    = -0.1
    #   t=0: delta = 1 + 0.9*1.0 - 0.5 =  1.4         A0 =  1.4 + 0.45*(-0.1) =  1.355
    #   returns = A + V = [1.855, 0.9, 2.0]
    # Row 1, two reply tokens then padding (mask [1, 1, 0]): the padded reward 5
    # and value 7 are ignored, the value after the last reply token is 0.
    #   t=2: masked                                   A2 =  0
    #   t=1: delta = 3 + 0.9*0   - 1 =  2.0           A1 =  2.0
    #   t=0: delta = 1 + 0.9*1   - 2 = -0.1           A0 = -0.1 + 0.45*2.0 = 0.8
    #   returns = [2.8, 3.0, 0]
    rewards = t([[1, 0, 2], [1, 3, 5]])
    values = t([[0.5, 1.0, 0.0], [2, 1, 7]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    close(advantages, [[1.355, -0.1, 2.0], [0.8, 2.0, 0.0]])
    close(returns, [[1.855, 0.9, 2.0], [2.8, 3.0, 0.0]])


def test_gae_with_lambda_one_and_no_discount_is_return_minus_value() -> None:
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t.
    # rewards [0, 0, 1], values [0.2, 0.4, 0.6] -> returns-to-go [1, 1, 1],
    # A = [0.8, 0.6, 0.4], returns = [1, 1, 1].
    advantages, returns = compute_gae(
        t([[0, 0, 1]]), t([[0.2, 0.4, 0.6]]), t([[1, 1, 1]]), gamma=1.0, lam=1.0
    )
    close(advantages, [[0.8, 0.6, 0.4]])
    close(returns, [[1.0, 1.0, 1.0]])


def test_clipped_surrogate_loss_and_its_gradient() -> None:
    # cliprange 0.2, so ratios are clipped to [0.8, 1.2]. Per token, the loss is
    # max(-A * r, -A * clip(r)):
    #   r = 1.5, A = +1:  max(-1.5, -1.2) = -1.2  (clipped: no gradient)
    #   r = 0.5, A = -1:  max( 0.5,  0.8) =  0.8  (clipped: no gradient)
    #   r = 1.1, A = +2:  max(-2.2, -2.2) = -2.2  (inside the range)
    #   r = 1.5, A = -1:  max( 1.5,  1.2) =  1.5  (clipping would help: not taken)
    #   fifth token masked out (r = 3, A = 5 would give -6.0)
    # loss = (-1.2 + 0.8 - 2.2 + 1.5) / 4 = -0.275; clipfrac = 2 / 4 = 0.5.
    # d loss / d logprob = -A * r / 4 on unclipped tokens: [0, 0, -0.55, 0.375, 0].
    ratios = [1.5, 0.5, 1.1, 1.5, 3.0]
    old = t([[-1.0, -2.0, -0.5, -3.0, -1.0]])
    logprobs = (old + torch.log(t([ratios]))).requires_grad_(True)
    advantages = t([[1.0, -1.0, 2.0, -1.0, 5.0]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, clipfrac = clipped_policy_loss(logprobs, old, advantages, mask, cliprange=0.2)
    close(loss, -0.275)
    close(clipfrac, 0.5)
    loss.backward()
    assert logprobs.grad is not None
    close(logprobs.grad, [[0.0, 0.0, -0.55, 0.375, 0.0]])


def test_clipped_surrogate_is_minus_mean_advantage_on_policy() -> None:
    # Before any update the ratio is 1 everywhere: loss = -mean(A) = -(1 - 3 + 5) / 3.
    logprobs = t([[-1.0, -2.0, -0.5]])
    loss, clipfrac = clipped_policy_loss(
        logprobs, logprobs.clone(), t([[1.0, -3.0, 5.0]]), t([[1, 1, 1]]), cliprange=0.2
    )
    close(loss, -1.0)
    close(clipfrac, 0.0)


def test_clipped_value_loss() -> None:
    # cliprange_value 0.2: the clipped prediction is old + clip(new - old, -0.2, 0.2);
    # per token max((V - R)^2, (V_clipped - R)^2):
    #   V = 1.0, old = 0.5, R = 2.0: clipped 0.7 -> max(1.0, 1.69) = 1.69
    #   V = 1.0, old = 0.9, R = 0.0: clipped 1.0 -> max(1.0, 1.0)  = 1.0
    #   V = 0.0, old = 0.5, R = 0.2: clipped 0.3 -> max(0.04, 0.01) = 0.04
    #   fourth token masked out
    # loss = 0.5 * (1.69 + 1.0 + 0.04) / 3 = 0.455
    values = t([[1.0, 1.0, 0.0, 9.0]])
    old = t([[0.5, 0.9, 0.5, 0.0]])
    returns = t([[2.0, 0.0, 0.2, -9.0]])
    mask = t([[1, 1, 1, 0]])
    close(clipped_value_loss(values, old, returns, mask, cliprange_value=0.2), 0.455)


def test_adaptive_kl_controller() -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    # KL 9 is 50% above target; the error is clipped to +0.2:
    # 0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512 = 0.100512
    ctl.update(9.0, 256)
    assert ctl.value == pytest.approx(0.100512, abs=1e-12)
    # KL 5.4 is 10% below target: * (1 - 0.1 * 1000 / 10000) = * 0.99 -> 0.09950688
    ctl.update(5.4, 1000)
    assert ctl.value == pytest.approx(0.09950688, abs=1e-12)
    # At target nothing moves.
    ctl.update(6.0, 5000)
    assert ctl.value == pytest.approx(0.09950688, abs=1e-12)
    # Far below target (KL 0) the error is clipped to -0.2: * (1 - 0.2 * 5000 / 10000) = * 0.9
    ctl.update(0.0, 5000)
    assert ctl.value == pytest.approx(0.089556192, abs=1e-12)


def test_adaptive_kl_controller_moves_towards_the_target() -> None:
    high = AdaptiveKLController(0.2, target=2.0, horizon=100)
    low = AdaptiveKLController(0.2, target=2.0, horizon=100)
    for _ in range(20):
        high.update(8.0, 10)  # too much KL: the penalty grows, 1.02 per update
        low.update(0.5, 10)  # too little: it shrinks, 0.98 per update
    assert high.value == pytest.approx(0.2 * 1.02**20)
    assert low.value == pytest.approx(0.2 * 0.98**20)


def test_fixed_kl_controller_never_moves() -> None:
    ctl = FixedKLController(0.3)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.3


def test_masked_mean_and_whiten() -> None:
    # Unmasked values [1, 2, 3]: mean 2, population variance 2/3.
    x = t([[1.0, 2.0, 3.0, 100.0]])
    mask = t([[1, 1, 1, 0]])
    close(masked_mean(x, mask), 2.0)
    s = math.sqrt(2 / 3 + 1e-8)
    close(masked_whiten(x, mask), [[-1 / s, 0.0, 1 / s, 0.0]])
    close(masked_whiten(x, mask, shift_mean=False), [[2 - 1 / s, 2.0, 2 + 1 / s, 0.0]])


def test_reply_mask_stops_after_the_first_eos() -> None:
    # eos = 2: tokens up to and including the first 2 count; everything after it does not.
    replies = torch.tensor([[5, 7, 2, 9, 2], [5, 6, 7, 8, 9], [2, 4, 4, 4, 4]])
    assert reply_mask(replies, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    # Several end tokens: whichever comes first ends the reply.
    assert reply_mask(torch.tensor([[5, 9, 7, 2]]), [2, 9]).tolist() == [[1, 1, 0, 0]]
