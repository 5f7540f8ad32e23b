"""The mutual-distillation config (eq. 5-8) and which reading of it runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qr_ds.config import rule


@dataclass
class MutualConfig:
    enabled: bool = field(default=True, metadata=rule(help="false = w/o Collab"))
    shared_dim: int = field(default=256, metadata=rule(min=1))
    max_spans: int = field(default=64, metadata=rule(min=1, help="span vectors per path (bounds the exchange)"))
    form: Literal["anchored", "paper"] = field(
        default="anchored", metadata=rule(help="anchored = states centred and unit-normalised, pulled to a detached "
                                               "ensemble whose competence weights learn which student explains "
                                               "the path better; paper = eq. 5-8 literally (rewards shrinking the "
                                               "projection and pulls the weights to uniform: docs/method.md)"))
    paths: Literal["co_routed", "all"] = field(
        default="co_routed", metadata=rule(help="where the mutual term acts: co_routed = paths routed to >= 2 "
                                                "students; all = every path (eq. 8's sum), each student forwarding "
                                                "its unrouted paths with grad at SFT weight 0 (about +50% compute at "
                                                "rate 0.5). Only 'all' can teach a student about paths it is not "
                                                "routed, and measured, little: docs/method.md, peer teaching"))
    head_lr: float = field(
        default=1e-3, metadata=rule(min=0.0, max=1.0, help="learning rate of the projection and competence heads: "
                                                           "new layers, not the student's pretrained weights"))
