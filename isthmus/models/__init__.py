"""isthmus.models: the model zoo, digits training, compression (model versions) and TorchScript export."""

from isthmus.models.zoo import ZOO_NAMES, build, example_input

__all__ = ["ZOO_NAMES", "build", "example_input"]
