"""docs/spec.md keeps up with the pydantic models of the Spec and the Plan: every field is documented."""

import typing
from pathlib import Path

from pydantic import BaseModel

from isthmus.platform.triton import _DTYPES
from isthmus.spec import Plan, Spec

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec.md"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """`root` and every pydantic model its fields hold (through list[...], dict[..., ...], X | None)."""
    found, todo = [], [root]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                tp = stack.pop()
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    todo.append(tp)
                stack.extend(typing.get_args(tp))
    return found


def test_every_spec_and_plan_field_is_documented():
    text = DOC.read_text()
    models = _models(Spec) + _models(Plan)
    names = {m.__name__ for m in models}
    assert names >= {"Spec", "Region", "InstanceType", "EdgeSite", "Device", "Link", "Source", "DataVersion",
                     "Model", "ModelVersion", "Artifact", "SplitPoint", "Service",
                     "Plan", "PlanRoute", "PlanInstance", "PlanService", "SolverInfo"}, names
    missing = [f"{m.__name__}.{f}" for m in models for f in m.model_fields if f"`{f}`" not in text]
    assert not missing, f"fields missing from {DOC}: {missing}"
    for model in models:
        assert f"({model.__name__})" in text or f"(`{model.__name__}`)" in text, model.__name__
    assert all(f"`{dtype}`" in text for dtype in _DTYPES), "an artifact dtype is missing from the docs"


def test_docs_are_self_contained():
    text = DOC.read_text()
    assert "shared/" not in text and "DESIGN.md" not in text
