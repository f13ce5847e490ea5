"""Per-exit metrics of a causal LM with exits on held-out text: perplexity, top-1 agreement with the final exit,
and the acceptance rate of self-speculative decoding drafting from that exit."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.causal import is_causal
from ..models.core import MultiExitModel, eval_mode
from .speculative import self_speculative


@torch.no_grad()
def perplexity_and_agreement(model: MultiExitModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16
                             ) -> tuple[list[float], list[float]]:
    """Per exit (final last): the perplexity ``exp(mean next-token cross-entropy)`` on chunks ``x`` with targets
    ``y`` (``[N, T]``), and the fraction of positions whose top-1 token equals the final exit's."""
    if not is_causal(model):
        raise ConfigError("per-exit LM metrics take a causal LM with exits (exitlab.from_hf_causal)")
    nll = torch.zeros(model.num_exits, dtype=torch.float64)
    agree = torch.zeros(model.num_exits, dtype=torch.float64)
    device = next(model.parameters()).device
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i: i + batch_size].to(device), y[i: i + batch_size].to(device)
            logits = torch.stack(model(xb)).float()  # [E, B, T, V]
            E, V = logits.shape[0], logits.shape[-1]
            ce = F.cross_entropy(logits.reshape(-1, V), yb.repeat(E, 1).reshape(-1), reduction="none")
            nll += ce.view(E, -1).double().sum(1).cpu()
            top = logits.argmax(-1)  # [E, B, T]
            agree += (top == top[-1:]).view(E, -1).double().sum(1).cpu()
    n = y.numel()
    return [math.exp(v / n) for v in nll.tolist()], (agree / n).tolist()


def acceptance_rates(model: MultiExitModel, prompts: list[list[int]], new_tokens: int = 32, draft_tokens: int = 4
                     ) -> list[float]:
    """Per IC, the share of draft tokens the full model accepts when self-speculative decoding drafts from it
    (greedy; ``prompts`` decoded together as one batch)."""
    return [self_speculative(model, prompts, new_tokens, draft_layer=e, draft_tokens=draft_tokens).acceptance
            for e in model.exits]


def lm_exit_metrics(model: MultiExitModel, x: torch.Tensor, y: torch.Tensor, *, prompts: int = 8,
                    prompt_tokens: int = 16, new_tokens: int = 32, draft_tokens: int = 4) -> list[dict]:
    """One record per exit (final last): ``layer`` (0-based, the layer it reads), ``perplexity``, ``agreement``
    (top-1 with the final exit) and ``acceptance`` (self-speculative drafting from it; None for the final exit).
    Prompts are the first ``prompt_tokens`` tokens of the first ``prompts`` held-out chunks."""
    if prompt_tokens > x.shape[1]:
        raise ConfigError(f"prompt_tokens {prompt_tokens} is longer than the chunks ({x.shape[1]} tokens)")
    ppl, agree = perplexity_and_agreement(model, x, y)
    starts = x[:prompts, :prompt_tokens].tolist()
    accept = acceptance_rates(model, starts, new_tokens, draft_tokens) + [None]
    layers = list(model.exits) + [len(model.backbone.layers) - 1]
    return [{"layer": layer, "perplexity": p, "agreement": a, "acceptance": r}
            for layer, p, a, r in zip(layers, ppl, agree, accept)]
