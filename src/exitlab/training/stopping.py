"""Early stopping and reduce-on-plateau for one phase, as a small object whose state goes into checkpoints.

Rules (``phaseN.stop_rule``): ``mean`` stops after ``patience`` epochs without a better mean validation accuracy of
the exits the phase trains; ``every`` (the paper code's rule) stops only once every trained exit has gone
``patience`` epochs without improving. Either way the weights of the epoch with the best mean score are restored.
With ``schedule: plateau`` the learning rate is multiplied by ``plateau_factor`` whenever the mean score has not
improved for ``plateau_patience`` epochs, so a phase stopped early has annealed (a cosine over the maximum number
of epochs would still be near its peak).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..runs.phase_config import PhaseConfig


@dataclass
class Stopper:
    """Where a phase stands: its best score, epochs without improvement, and the plateau learning-rate scale."""

    patience: int = 0
    rule: str = "mean"
    plateau: bool = False
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    best_score: float = -1.0
    bad: int = 0
    head_best: list[float] = field(default_factory=list)
    head_bad: list[int] = field(default_factory=list)
    lr_scale: float = 1.0
    plateau_bad: int = 0

    @classmethod
    def for_phase(cls, o: PhaseConfig) -> Stopper:
        return cls(o.patience, o.stop_rule, o.schedule == "plateau", o.plateau_patience, o.plateau_factor)

    def update(self, score: float, head_scores: list[float]) -> bool:
        """Record one epoch's validation scores; True when the mean score is a new best (keep these weights)."""
        improved = score > self.best_score
        self.best_score, self.bad = (score, 0) if improved else (self.best_score, self.bad + 1)
        if not self.head_best:
            self.head_best, self.head_bad = [-1.0] * len(head_scores), [0] * len(head_scores)
        for i, s in enumerate(head_scores):
            self.head_best[i], self.head_bad[i] = (s, 0) if s > self.head_best[i] else (self.head_best[i],
                                                                                        self.head_bad[i] + 1)
        self.plateau_bad = 0 if improved else self.plateau_bad + 1
        if self.plateau and self.plateau_bad >= self.plateau_patience:
            self.lr_scale *= self.plateau_factor
            self.plateau_bad = 0
        return improved

    @property
    def done(self) -> bool:
        if not self.patience:
            return False
        if self.rule == "every":
            return bool(self.head_bad) and min(self.head_bad) >= self.patience
        return self.bad >= self.patience

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Stopper:
        return cls(**state)
