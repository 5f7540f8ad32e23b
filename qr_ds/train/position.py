"""Where training stands: the data position and the budget spent, a stateful component that every
checkpoint saves and a resume restores, like the router's."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Position:
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    micro_step: int = 0
    step: int = 0  # optimizer steps done
    tokens_seen: list[float] = field(default_factory=list)  # per student, trained on since step 0: the budget

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0

    def after_micro_step(self, tokens: list[float]) -> None:
        """One batch done; ``tokens``: what each student trained on in it."""
        self.tokens_seen = [a + b for a, b in zip(self.tokens_seen or [0.0] * len(tokens), tokens)]
        self.batch += 1
        self.micro_step += 1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(vars(Position(**state)))  # a key Position does not know is refused
