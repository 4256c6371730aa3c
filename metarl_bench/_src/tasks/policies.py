"""Policies, separate from tasks: a task is an environment family plus one of these.

Every policy keeps its parameters as one tensor per row, ``params`` of shape
(R, *param_shape): the tabular softmax keeps today's (S, A) logits, every other policy one
flat vector of D numbers (param_shape (D,)) that it cuts into weight matrices on the fly.
Rows never interact: each row's forward pass is a slice of one batched matmul
(``torch.baddbmm``), so the gradient of a sum of per-row surrogates with respect to the
(R, *P) leaf is the stack of the per-row gradients, from one backward pass, and second-order
autodiff (Hessian-vector products, gradients of gradients) works through it.

Shapes: observations (R, *batch, *observation_shape), actions (R, *batch, *action_shape);
``log_prob`` returns (R, *batch) and ``sample`` draws one action per observation. ``batch``
is (N,) while sampling one time step of N trajectories and (N, T) for whole trajectories.

Kinds (``make_policy``): ``"tabular"`` softmax over (state, action) logits; ``"linear"``
Gaussian a = K x + k + sigma * eps; ``"mlp"`` Gaussian MLP (tanh hidden layers, 64x64 by
default, state-independent log standard deviation); ``"categorical-mlp"`` (tanh hidden
layers, softmax over the logits of the last layer).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.draws import inverse_cdf, normal, uniform
from metarl_bench._src.core.errors import (ParameterError, ShapeError, UnsupportedError,
                                           unknown_name)


class Policy:
    """Interface every policy satisfies.

    Attributes: ``kind`` (its name in ``make_policy``), ``param_shape`` (shape of one row's
    parameters), ``discrete`` (long actions indexing a finite set, else float vectors),
    ``spec`` (the constructor arguments, for reports and task parameters).
    """

    kind: str = "policy"
    param_shape: tuple[int, ...] = ()
    discrete: bool = False
    spec: dict[str, Any] = {}

    def initial_params(self, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> torch.Tensor:
        """The initial parameters, shape ``param_shape`` (deterministic): a copy of the flat
        ``_init`` that a policy built at construction, or its own override."""
        init = getattr(self, "_init", None)
        if init is None:
            raise NotImplementedError
        return init.to(dtype=dtype, device=device).clone()

    def log_prob(self, params: torch.Tensor, observations: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        """log pi_theta(a|x) with each row's own parameters: -> (R, *batch)."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor, observations: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
        """One action per observation with each row's own parameters (no gradient)."""
        raise NotImplementedError

    def kl(self, old_params: torch.Tensor, new_params: torch.Tensor,
           observations: torch.Tensor) -> torch.Tensor:
        """KL(pi_old(.|x) || pi_new(.|x)) in closed form at each observation, each row with
        its own two parameter sets: -> (R, *batch), differentiable in both (the trust region
        of a TRPO outer step). A policy without one raises UnsupportedError."""
        raise UnsupportedError(f"policy {type(self).__name__} has no closed-form KL "
                               f"divergence (Policy.kl), which a TRPO step needs")

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.spec.items())
        return f"{type(self).__name__}({shown})"


def _check_rows(params: torch.Tensor, observations: torch.Tensor) -> None:
    if params.shape[0] != observations.shape[0]:
        raise ShapeError(f"params has {params.shape[0]} rows, observations have "
                         f"{observations.shape[0]}")


class TabularSoftmax(Policy):
    """pi_theta(a|x) = softmax(theta[x])_a, theta of shape (S, A); long states and actions."""

    kind = "tabular"
    discrete = True

    def __init__(self, n_states: int, n_actions: int, init_logits: torch.Tensor):
        self.n_states, self.n_actions = n_states, n_actions
        self.param_shape = (n_states, n_actions)
        self._init_logits = init_logits
        self.spec = dict(n_states=n_states, n_actions=n_actions)

    def initial_params(self, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> torch.Tensor:
        return self._init_logits.to(dtype=dtype, device=device).reshape(self.param_shape).clone()

    def logits(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(params.shape[0], self.n_states, self.n_actions)

    def probs(self, params: torch.Tensor) -> torch.Tensor:
        """pi(a|s) of every state, (R, S, A)."""
        return torch.softmax(self.logits(params), dim=-1)

    def log_prob(self, params: torch.Tensor, observations: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        _check_rows(params, observations)
        log_pi = torch.log_softmax(self.logits(params), dim=-1)           # (R, S, A)
        n_rows = params.shape[0]
        flat_state_action = observations * self.n_actions + actions
        return log_pi.reshape(n_rows, -1).gather(
            1, flat_state_action.reshape(n_rows, -1)).reshape(actions.shape)

    def kl(self, old_params: torch.Tensor, new_params: torch.Tensor,
           observations: torch.Tensor) -> torch.Tensor:
        _check_rows(old_params, observations)
        rows = torch.arange(old_params.shape[0], device=observations.device)
        rows = rows.reshape(-1, *([1] * (observations.dim() - 1)))
        old = torch.log_softmax(self.logits(old_params), dim=-1)[rows, observations]
        new = torch.log_softmax(self.logits(new_params), dim=-1)[rows, observations]
        return categorical_kl(old, new)

    def sample(self, params: torch.Tensor, observations: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
        params = params.detach()
        rows = torch.arange(params.shape[0], device=params.device)
        rows = rows.reshape(-1, *([1] * (observations.dim() - 1)))
        cdf = self.probs(params)[rows, observations].cumsum(-1)
        return inverse_cdf(cdf, uniform(tuple(observations.shape), generator, params))


class FlatLayout:
    """Named blocks of one flat parameter vector: ``split`` views (R, D) as (R, *shape) each."""

    def __init__(self, blocks: Sequence[tuple[str, tuple[int, ...]]]):
        self.blocks = list(blocks)
        self.sizes = [math.prod(shape) for _, shape in self.blocks]
        self.size = sum(self.sizes)

    def split(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        if params.dim() != 2 or params.shape[1] != self.size:
            raise ShapeError(f"policy parameters must have shape (R, {self.size}), got "
                             f"{tuple(params.shape)}")
        parts = torch.split(params, self.sizes, dim=1)
        return {name: part.reshape(params.shape[0], *shape)
                for (name, shape), part in zip(self.blocks, parts)}

    def join(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        """The inverse of ``split`` for one row: {name: shape} -> (D,)."""
        return torch.cat([blocks[name].reshape(-1) for name, _ in self.blocks])


def _flat_batch(observations: torch.Tensor, n_features: int) -> tuple[torch.Tensor, tuple]:
    """(R, *batch, F) -> (R, L, F) and the batch shape, so one bmm serves any batch."""
    if observations.shape[-1] != n_features:
        raise ShapeError(f"observations must end in {n_features} features, got shape "
                         f"{tuple(observations.shape)}")
    batch = tuple(observations.shape[1:-1])
    return observations.reshape(observations.shape[0], -1, n_features), batch


def _dense_stack(blocks: dict[str, torch.Tensor], n_layers: int,
                 inputs: torch.Tensor) -> torch.Tensor:
    """tanh hidden layers and a linear last layer, every row with its own weights."""
    hidden = inputs
    for layer in range(n_layers):
        hidden = torch.baddbmm(blocks[f"b{layer}"].unsqueeze(1), hidden, blocks[f"w{layer}"])
        if layer + 1 < n_layers:
            hidden = torch.tanh(hidden)
    return hidden


def _dense_blocks(sizes: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    blocks: list[tuple[str, tuple[int, ...]]] = []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        blocks += [(f"w{layer}", (fan_in, fan_out)), (f"b{layer}", (fan_out,))]
    return blocks


def _dense_init(sizes: Sequence[int], seed: int, last_scale: float) -> dict[str, torch.Tensor]:
    """torch.nn.Linear's default draws U(+-1/sqrt(fan_in)), from ``seed``; the last layer
    scaled by ``last_scale`` (a small first output makes the initial policy nearly the same
    in every state, as is usual for policy-gradient MLPs)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = {}
    n_layers = len(sizes) - 1
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / math.sqrt(fan_in)
        scale = last_scale if layer + 1 == n_layers else 1.0
        weight = (torch.rand(fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1)
        bias = (torch.rand(fan_out, generator=generator, dtype=torch.float64) * 2 - 1)
        blocks[f"w{layer}"] = weight * bound * scale
        blocks[f"b{layer}"] = bias * bound * scale
    return blocks


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor,
                      actions: torch.Tensor) -> torch.Tensor:
    """sum over the last axis of log N(a; mean, exp(log_std)**2)."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(old_mean: torch.Tensor, old_log_std: torch.Tensor, new_mean: torch.Tensor,
                new_log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(old_mean, old_std^2) || N(new_mean, new_std^2)) of diagonal Gaussians, summed over
    the last axis: log(s1/s0) + (s0^2 + (m0 - m1)^2) / (2 s1^2) - 1/2 per coordinate."""
    ratio = torch.exp(2 * (old_log_std - new_log_std))
    gap = (old_mean - new_mean) * torch.exp(-new_log_std)
    return (new_log_std - old_log_std + 0.5 * (ratio + gap * gap - 1)).sum(-1)


def categorical_kl(old_log_probs: torch.Tensor, new_log_probs: torch.Tensor) -> torch.Tensor:
    """sum_a p_old(a) (log p_old(a) - log p_new(a)) over the last axis (log-probabilities)."""
    return (torch.exp(old_log_probs) * (old_log_probs - new_log_probs)).sum(-1)


class _GaussianPolicy(Policy):
    """Shared by the Gaussian policies: a mean network and a state-independent log-std."""

    discrete = False
    observation_dim: int
    action_dim: int
    layout: FlatLayout

    def mean_and_log_std(self, params: torch.Tensor, observations: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """mean (R, *batch, A) and log_std (R, 1.., A) broadcastable against it."""
        raise NotImplementedError

    def _shaped(self, mean: torch.Tensor, log_std: torch.Tensor, rows: int,
                batch: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """A flat mean (R, B, A) and log_std (R, A) shaped as ``mean_and_log_std`` returns."""
        return (mean.reshape(rows, *batch, self.action_dim),
                log_std.reshape(rows, *([1] * len(batch)), -1))

    def log_prob(self, params: torch.Tensor, observations: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        _check_rows(params, observations)
        mean, log_std = self.mean_and_log_std(params, observations)
        return gaussian_log_prob(mean, log_std, actions)

    def kl(self, old_params: torch.Tensor, new_params: torch.Tensor,
           observations: torch.Tensor) -> torch.Tensor:
        _check_rows(old_params, observations)
        return gaussian_kl(*self.mean_and_log_std(old_params, observations),
                           *self.mean_and_log_std(new_params, observations))

    def sample(self, params: torch.Tensor, observations: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
        with torch.no_grad():
            mean, log_std = self.mean_and_log_std(params.detach(), observations)
            return mean + torch.exp(log_std) * normal(tuple(mean.shape), generator, mean)


class LinearGaussian(_GaussianPolicy):
    """a = K x + k + sigma * eps, eps ~ N(0, I); theta = (K (A, X), k (A,), log sigma (A,))
    flattened in that order, D = A*X + 2A."""

    kind = "linear"

    def __init__(self, observation_dim: int, action_dim: int, *, init_std: float = 1.0,
                 init_gain: torch.Tensor | None = None, init_bias: torch.Tensor | None = None):
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.layout = FlatLayout([("gain", (action_dim, observation_dim)),
                                  ("bias", (action_dim,)), ("log_std", (action_dim,))])
        self.param_shape = (self.layout.size,)
        self._init = self.layout.join(dict(
            gain=(torch.zeros(action_dim, observation_dim, dtype=torch.float64)
                  if init_gain is None else init_gain),
            bias=torch.zeros(action_dim, dtype=torch.float64) if init_bias is None else init_bias,
            log_std=torch.full((action_dim,), math.log(init_std), dtype=torch.float64)))
        self.spec = dict(observation_dim=observation_dim, action_dim=action_dim,
                         init_std=init_std)

    def mean_and_log_std(self, params: torch.Tensor, observations: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = self.layout.split(params)
        flat, batch = _flat_batch(observations, self.observation_dim)
        mean = torch.baddbmm(blocks["bias"].unsqueeze(1), flat, blocks["gain"].transpose(1, 2))
        return self._shaped(mean, blocks["log_std"], params.shape[0], batch)


class GaussianMLP(_GaussianPolicy):
    """a = mlp_theta(x) + sigma * eps: tanh hidden layers, a linear output, and a log-std
    vector that does not depend on the state. theta: every layer's weight (in, out) and bias,
    in order, then log sigma (A,)."""

    kind = "mlp"

    def __init__(self, observation_dim: int, action_dim: int, *,
                 hidden: Sequence[int] = (64, 64), init_std: float = 1.0, seed: int = 0):
        self.observation_dim, self.action_dim = observation_dim, action_dim
        sizes = [observation_dim, *hidden, action_dim]
        self.n_layers = len(sizes) - 1
        self.layout = FlatLayout(_dense_blocks(sizes) + [("log_std", (action_dim,))])
        self.param_shape = (self.layout.size,)
        init = _dense_init(sizes, seed, last_scale=0.01)
        init["log_std"] = torch.full((action_dim,), math.log(init_std), dtype=torch.float64)
        self._init = self.layout.join(init)
        self.spec = dict(observation_dim=observation_dim, action_dim=action_dim,
                         hidden=list(hidden), init_std=init_std, seed=seed)

    def mean_and_log_std(self, params: torch.Tensor, observations: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = self.layout.split(params)
        flat, batch = _flat_batch(observations, self.observation_dim)
        mean = _dense_stack(blocks, self.n_layers, flat)
        return self._shaped(mean, blocks["log_std"], params.shape[0], batch)


class CategoricalMLP(Policy):
    """pi_theta(a|x) = softmax(mlp_theta(x))_a over ``n_actions`` actions (long), tanh hidden
    layers; theta: every layer's weight (in, out) and bias, in order."""

    kind = "categorical-mlp"
    discrete = True

    def __init__(self, observation_dim: int, n_actions: int, *,
                 hidden: Sequence[int] = (64, 64), seed: int = 0):
        self.observation_dim, self.n_actions = observation_dim, n_actions
        sizes = [observation_dim, *hidden, n_actions]
        self.n_layers = len(sizes) - 1
        self.layout = FlatLayout(_dense_blocks(sizes))
        self.param_shape = (self.layout.size,)
        self._init = self.layout.join(_dense_init(sizes, seed, last_scale=0.01))
        self.spec = dict(observation_dim=observation_dim, n_actions=n_actions,
                         hidden=list(hidden), seed=seed)

    def log_softmax(self, params: torch.Tensor, observations: torch.Tensor) -> torch.Tensor:
        """log pi(.|x), (R, *batch, n_actions)."""
        flat, batch = _flat_batch(observations, self.observation_dim)
        logits = _dense_stack(self.layout.split(params), self.n_layers, flat)
        return torch.log_softmax(logits, -1).reshape(params.shape[0], *batch, self.n_actions)

    def log_prob(self, params: torch.Tensor, observations: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        _check_rows(params, observations)
        return self.log_softmax(params, observations).gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def kl(self, old_params: torch.Tensor, new_params: torch.Tensor,
           observations: torch.Tensor) -> torch.Tensor:
        _check_rows(old_params, observations)
        return categorical_kl(self.log_softmax(old_params, observations),
                              self.log_softmax(new_params, observations))

    def sample(self, params: torch.Tensor, observations: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
        with torch.no_grad():
            probs = torch.exp(self.log_softmax(params.detach(), observations))
            u = uniform(tuple(probs.shape[:-1]), generator, probs)
            return inverse_cdf(probs.cumsum(-1), u)


#: Policy kinds for continuous (Box) actions and for discrete ones.
CONTINUOUS_POLICIES = ("mlp", "linear")
DISCRETE_POLICIES = ("categorical-mlp",)


def hidden_sizes(hidden: Any) -> tuple[int, ...]:
    """A checked tuple of hidden-layer widths (an empty tuple: no hidden layer)."""
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        if isinstance(hidden, (str, bytes, dict)):
            raise TypeError
        sizes = tuple(hidden)
    except TypeError:
        raise ParameterError(f"hidden must be a list of layer widths (or one width), got "
                             f"{hidden!r}") from None
    return tuple(validation.positive_int("hidden", width) for width in sizes)


def make_policy(kind: str, *, observation_dim: int, action_dim: int | None = None,
                n_actions: int | None = None, hidden: Any = (64, 64), init_std: float = 1.0,
                seed: int = 0) -> Policy:
    """The policy ``kind`` for observations of ``observation_dim`` features.

    Continuous kinds (``"mlp"``, ``"linear"``) need ``action_dim``; ``"categorical-mlp"``
    needs ``n_actions``. ``hidden``: widths of the tanh layers (MLPs); ``init_std``: the
    initial standard deviation (Gaussian kinds); ``seed``: the initial weights (MLPs).
    """
    kinds = CONTINUOUS_POLICIES + DISCRETE_POLICIES
    if kind not in kinds:
        raise unknown_name("policy kind", kind, kinds)
    observation_dim = validation.positive_int("observation_dim", observation_dim)
    seed = validation.positive_int("policy_seed", seed, minimum=0)
    if kind in CONTINUOUS_POLICIES:
        action_dim = validation.positive_int("action_dim", action_dim)
        init_std = validation.finite_float("init_std", init_std, positive=True)
        if kind == "linear":
            return LinearGaussian(observation_dim, action_dim, init_std=init_std)
        return GaussianMLP(observation_dim, action_dim, hidden=hidden_sizes(hidden),
                           init_std=init_std, seed=seed)
    n_actions = validation.positive_int("n_actions", n_actions, minimum=2)
    return CategoricalMLP(observation_dim, n_actions, hidden=hidden_sizes(hidden), seed=seed)
