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
    entropy: Literal["rate", "load", "paper"] = field(
        default="rate", metadata=rule(help="the balance term lambda1 weights (eq. 9's L_entropy): rate = hold each "
                                           "student's expected rate (mean noise-free P(on)) at rate_target, by a "
                                           "binary KL whose value is taken over the recent paths (rate_window) "
                                           "and whose gradient goes through this batch: keeps every student in "
                                           "use and the rate off all-on and none, at any batch size; load = "
                                           "entropy of the students' shares of this batch's expected routing "
                                           "(the previous default: drifts to all-on once the students' gap is "
                                           "small, docs/method.md); paper = eq. 3-4 literally, on the hard "
                                           "samples per question"))
    rate_target: float = field(
        default=0.5, metadata=rule(min=0.01, max=0.99, help="entropy: rate only. The fraction of paths each "
                                                            "student should get; 0.5 = where eq. 4's entropy is "
                                                            "highest. Exclusive routing (each path to one of S "
                                                            "students) has rate 1/S: set 1/S for it at S > 2"))
    rate_window: int = field(
        default=256, metadata=rule(min=0, help="entropy: rate only. A student's rate is the current router's mean "
                                               "P(on) over the last rate_window routed paths, this batch's "
                                               "included: many batches' worth without lag; 0 = this batch alone, "
                                               "whose rate follows which styles landed in it and, at small batches, "
                                               "pulls every path towards rate_target"))
    ensure_one: bool = field(
        default=False, metadata=rule(help="give a path no student drew to its likeliest student; off by default: "
                                          "unrouted paths are rare once routing has learned, and forcing them "
                                          "biases the straight-through gradient"))
