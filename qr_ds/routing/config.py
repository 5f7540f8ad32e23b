"""The router's config: what it sees, how it learns, and which reading of eq. 3-4 and 9 it uses."""
from __future__ import annotations

from dataclasses import dataclass, field

from qr_ds.config import ConfigError, rule
from qr_ds.routing.balances import BALANCES
from qr_ds.routing.signals import SIGNALS


# The learning-gain form, the default (docs/method.md): every known-answer case solved, and on the demo
# task (5 seeds) no worse than the fit form for either student and 33 points better for one.
GAIN_FORM = {"signal": "gain", "entropy": "range", "logit_decay": 0.01, "prior_on": 0.97}
# The fit form: the default before issue 30, one switch away (docs/method.md).
FIT_FORM = {"signal": "relative", "entropy": "rate", "logit_decay": 0.0, "prior_on": 0.5}


@dataclass
class RouterConfig:
    enabled: bool = field(default=True, metadata=rule(help="false = every path to every student (w/o Route)"))
    hidden: int = field(default=256, metadata=rule(min=1))
    tau: float = field(default=1.0, metadata=rule(min=1e-3, max=100.0, help="Gumbel-softmax temperature of the "
                                                                           "straight-through gradient"))
    lr: float = field(default=1e-3, metadata=rule(min=0.0, max=1.0))
    logit_decay: float = field(
        default=GAIN_FORM["logit_decay"], metadata=rule(min=0.0, help="weight of the mean squared on/off logit gap: keeps P(on) off "
                                                 "exactly 0 or 1 (about 0.96 at a unit signal with 0.01, the "
                                                 "gain form's value), where the straight-through gradient "
                                                 "vanishes and routing locks in"))
    prior_on: float = field(
        default=GAIN_FORM["prior_on"], metadata=rule(min=0.01, max=0.99, help="the P(on) logit_decay pulls each (path, student) "
                                                            "towards where the signal is silent: 0.5 = undecided; "
                                                            "near 1 = every path to every student (w/o Route) "
                                                            "until the evidence says a path does not help"))
    signal: str = field(
        default=GAIN_FORM["signal"], metadata=rule(choices=tuple(SIGNALS), help="what the router minimises per routed (path, "
                                      "student): " + "; ".join(f"{k} = {v.help}" for k, v in SIGNALS.items())))
    entropy: str = field(
        default=GAIN_FORM["entropy"], metadata=rule(choices=tuple(BALANCES), help="the balance term lambda1 weights (eq. 9's "
                                       "L_entropy): " + "; ".join(f"{k} = {v.help}" for k, v in BALANCES.items())))
    rate_min: float = field(
        default=0.25, metadata=rule(min=0.0, max=1.0, help="entropy: range only. The lowest recent rate a "
                                                           "student may have before the balance pulls it back "
                                                           "(no student starved, routing never all-off)"))
    rate_max: float = field(
        default=1.0, metadata=rule(min=0.0, max=1.0, help="entropy: range only. The highest; 1.0 = a student "
                                                          "may take every path its gain asks for"))
    gain_forget: float = field(
        default=0.99, metadata=rule(min=0.5, max=1.0, help="signal: gain only. The critic's forgetting per "
                                                           "optimizer step (0.99: half-life ~69 steps), so a "
                                                           "gain that fades or turns is followed"))
    gain_kinds: int = field(default=16, metadata=rule(min=1, help="signal: gain only. Kinds of path (k-means "
                                                                  "centroids of the pool's embeddings) the critic "
                                                                  "learns a gain for"))
    gain_heldout: str = field(
        default="right", metadata=rule(choices=("right", "all"), help="signal: gain only. The fresh paths whose "
                                       "loss change is the gain: right = all but, per student, a path cut at its "
                                       "max_len whose part before the cut states a wrong answer (a gain towards "
                                       "what the filter checks, not towards a wrong answer the pool repeats); "
                                       "all = every path of the next batch (with data.drop_cut_wrong, but for "
                                       "the same paths, which a student never trains on nor is probed on). The "
                                       "same where no cut path states a wrong answer"))
    gain_scale: str = field(
        default="evidence", metadata=rule(choices=("evidence", "peak"), help="signal: gain only. How a predicted "
                                          "gain becomes the router's signal: evidence = its z-score (gain over "
                                          "its standard error) / 2, clipped to [-1, 1], so a kind whose sign the "
                                          "measurements cannot tell sits at prior_on; peak = the gain over the "
                                          "largest recent RMS of the predictions"))
    gain_floor: float = field(
        default=2.0, metadata=rule(min=0.0, help="gain_scale: evidence only. The z-score a kind's gain must pass "
                                                 "before it moves the router: signal = sign(z) * (|z| - floor) / 2, "
                                                 "clipped to [-1, 1]. 2 = a sign resolved at the 5% level per kind; "
                                                 "of 16 kinds x 2 students with no gain, 1 - 0.954^32 = ~78% of runs "
                                                 "would have some |z| > 2 by chance if the z-scores were independent "
                                                 "(0: the linear z / 2 of before, under which such kinds moved "
                                                 "P(on) by half a unit)"))
    gain_holdout: float = field(
        default=0.0, metadata=rule(min=0.0, max=0.5, help="signal: gain only. The fraction of questions no "
                                                           "student trains on; their paths measure the held-out "
                                                           "change every optimizer step of training (one forward "
                                                           "without grad of a batch per student per step). 0 = "
                                                           "the next batch, fresh in the first epoch only, is "
                                                           "measured, and the critic keeps what it learned there. "
                                                           "Measured on the demo's harm variant at 0.1 (2 seeds): "
                                                           "late steps raise held-out loss for every kind, the "
                                                           "rates fall to rate_min and accuracy with them "
                                                           "(docs/method.md); a tool for a relative signal, not "
                                                           "a setting to use as is"))
    gain_epochs: str = field(
        default="first", metadata=rule(choices=("first", "all"), help="signal: gain, gain_holdout 0 only. When "
                                       "the next batch is measured: first = the first epoch only, while its "
                                       "paths are fresh (the critic keeps what it learned there); all = every "
                                       "epoch, where later the paths were trained on and a step's change on them "
                                       "is its interference with what the student memorised. Measured on the "
                                       "demo's harm_long variant (5 seeds, with gain_relative): not a harm "
                                       "detector there; kinds of either sign reach |z| 13.5-16.6 by seed, and "
                                       "routing drops random kinds (docs/demo-study/routing-harm-long)"))
    gain_relative: bool = field(
        default=False, metadata=rule(help="gain_scale: evidence only. Move the router by each kind's deviation "
                                          "from the mean gain over all kinds (its z-score) instead of by its "
                                          "whole gain: a change every kind shares, such as memorised paths "
                                          "forgotten a little by any step late in training, moves no kind, "
                                          "and where no kind differs every path sits at prior_on. With "
                                          "gain_epochs: all on the demo the mean gain stayed near 0 and no "
                                          "kind's z moved by more than 0.75 (docs/demo-study/routing-harm-long)"))
    gain_every: int = field(
        default=1, metadata=rule(min=1, help="signal: gain only. Measure the held-out change every N optimizer "
                                             "steps: each measurement costs one forward without grad of the "
                                             "next batch per student"))
    rate_target: float = field(
        default=0.5, metadata=rule(min=0.01, max=0.99, help="entropy: rate only. The fraction of paths each "
                                                            "student should get; 0.5 = where eq. 4's entropy is "
                                                            "highest. Exclusive routing (each path to one of S "
                                                            "students) has rate 1/S: set 1/S for it at S > 2"))
    rate_window: int = field(
        default=256, metadata=rule(min=0, help="entropy: rate and range. A student's rate is the current router's "
                                               "mean P(on) over the last rate_window routed paths that the data "
                                               "lets it train on (data.drop_cut_wrong), this batch's included: "
                                               "many batches' worth without lag; 0 = this batch alone, "
                                               "whose rate follows which styles landed in it and, at small batches, "
                                               "pulls every path towards rate_target"))
    ensure_one: bool = field(
        default=False, metadata=rule(help="give a path no student drew to its likeliest student; off by default: "
                                          "unrouted paths are rare once routing has learned, and forcing them "
                                          "biases the straight-through gradient"))
    fixed: dict[str, list[str]] = field(
        default_factory=dict, metadata=rule(help="student name -> the path styles it trains on, fixed, with no "
                                                 "router (an oracle arm: an assignment chosen from a probe); "
                                                 "a student left out trains on every style"))
    withhold: dict[str, str] = field(
        default_factory=dict, metadata=rule(help="student name -> a file of path ids (one a line) it never trains "
                                                 "on, fixed, with no router: the oracle arm of a study whose harm is "
                                                 "per path, not per style; with fixed, a path must pass both. Ids "
                                                 "not in the run's pool (filtered out) are ignored; a file none of "
                                                 "whose ids is in it is refused"))

    @property
    def assigned(self) -> bool:
        """Routing fixed by the config (router.fixed or router.withhold): nothing is learned."""
        return bool(self.fixed or self.withhold)

    def validate(self, key: str = "router") -> None:
        if self.gain_epochs == "all" and self.gain_holdout > 0:
            raise ConfigError(f"config key '{key}.gain_epochs': 'all' measures the next batch every epoch; with "
                              f"{key}.gain_holdout {self.gain_holdout} the held-out questions are measured every "
                              f"step already (leave gain_epochs at 'first')")
        if self.gain_relative and self.gain_scale != "evidence":
            raise ConfigError(f"config key '{key}.gain_relative': true needs {key}.gain_scale 'evidence' "
                              f"(got '{self.gain_scale}'); the relative form is a z-score of each kind's deviation")
        if self.gain_holdout > 0 and self.gain_every > 1:
            raise ConfigError(f"config key '{key}.gain_every': {self.gain_every} with {key}.gain_holdout "
                              f"{self.gain_holdout}; a held-out batch is measured every step (set gain_every: 1)")
        if self.rate_min > self.rate_max:
            raise ConfigError(f"config key '{key}.rate_min': {self.rate_min} is above {key}.rate_max "
                              f"({self.rate_max}); the range balance needs rate_min <= rate_max")
