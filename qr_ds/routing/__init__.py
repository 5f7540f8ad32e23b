"""Conditional routing (paper section 2.4): router MLP, straight-through Gumbel routing, the registered
signals and balance forms, the gain critic, the routing policies and their rates."""
from qr_ds.routing.balances import BALANCES, register_balance
from qr_ds.routing.config import RouterConfig
from qr_ds.routing.gumbel import route_probs, straight_through_route
from qr_ds.routing.losses import balance_entropy, load_entropy, range_kl, rate_kl
from qr_ds.routing.objective import router_objective
from qr_ds.routing.policy import AllPaths, FixedRouting, RoutingPolicy, make_policy
from qr_ds.routing.rates import RoutingTally, routing_rates
from qr_ds.routing.router import Router
from qr_ds.routing.signals import SIGNALS, register_signal, routing_signal

__all__ = [
    "Router", "RouterConfig", "RoutingPolicy", "AllPaths", "FixedRouting", "make_policy", "straight_through_route",
    "route_probs", "balance_entropy", "load_entropy", "rate_kl", "range_kl", "router_objective", "routing_signal",
    "routing_rates", "RoutingTally", "SIGNALS", "BALANCES", "register_signal", "register_balance",
]
