"""Geo planner (A2 MILP / LP + rounding with cvxpy + HiGHS), its baselines, and the OptimizerActor."""

from isthmus.optimizer.planner import GeoPlanner, InfeasibleSpec, diagnose, plan_spec

__all__ = ["GeoPlanner", "InfeasibleSpec", "diagnose", "plan_spec"]
