"""Model versions (placeholder: fp32 only; compression lands next)."""

from __future__ import annotations

from typing import Any

__all__ = ["version_names", "build_version"]


def version_names(name: str) -> list[str]:
    return ["fp32"]


def build_version(name: str, version: str = "fp32", size: str = "full") -> tuple[Any, Any]:
    from isthmus.models.zoo import build, example_input

    return build(name, size), example_input(name, size)
