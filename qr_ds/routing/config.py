"""The router's config: what it sees, how it learns, and which reading of eq. 3-4 and 9 it uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qr_ds.config import rule


@dataclass
class RouterConfig:
    enabled: bool = field(default=True, metadata=rule(help="false = every path to every student (w/o Route)"))
    hidden: int = field(default=256, metadata=rule(min=1))
    tau: float = field(default=1.0, metadata=rule(min=1e-3, max=100.0, help="Gumbel-softmax temperature of the "
                                                                           "straight-through gradient"))
    lr: float = field(default=1e-3, metadata=rule(min=0.0, max=1.0))
    signal: Literal["relative", "raw"] = field(
        default="relative", metadata=rule(help="what the router minimises per routed (path, student): relative = "
                                               "the loss minus the path's mean over students and the student's "
                                               "mean over the batch (which student suits which path); raw = eq. 9 "
                                               "literally (pushes every path away from every student)"))
    entropy: Literal["load", "paper"] = field(
        default="load", metadata=rule(help="load = entropy of each student's share of the expected routing, from "
                                           "noise-free probabilities (keeps every student in use without pulling a "
                                           "path's routing to 50/50); paper = eq. 3-4 literally, on the hard "
                                           "samples per question (docs/architecture.md: why it drowns the signal)"))
    ensure_one: bool = field(
        default=False, metadata=rule(help="give a path no student drew to its likeliest student; off by default: "
                                          "unrouted paths are rare once routing has learned, and forcing them "
                                          "biases the straight-through gradient"))
