"""Conditional routing (paper section 2.4): router MLP, straight-through Gumbel routing, losses, rates."""
from qr_ds.routing.config import RouterConfig
from qr_ds.routing.gumbel import route_probs, straight_through_route
from qr_ds.routing.losses import balance_entropy, load_entropy, rate_kl, router_objective, routing_signal
from qr_ds.routing.policy import RoutingPolicy
from qr_ds.routing.router import Router
from qr_ds.routing.rates import RoutingTally, routing_rates

__all__ = [
    "Router", "RouterConfig", "RoutingPolicy", "straight_through_route", "route_probs", "balance_entropy",
    "load_entropy", "rate_kl", "router_objective", "routing_signal", "routing_rates", "RoutingTally",
]
