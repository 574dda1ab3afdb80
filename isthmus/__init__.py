"""Isthmus: plan and run DNN inference across cloud regions and edge devices at minimum cost."""

from isthmus.spec import Plan, Spec, SpecError, dump_spec, load_plan, load_spec, parse_spec

__all__ = ["Plan", "Spec", "SpecError", "dump_spec", "load_plan", "load_spec", "parse_spec"]
__version__ = "0.1.0"
