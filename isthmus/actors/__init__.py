"""isthmus.actors: Ray actors that own devices (DeviceActor, in `isthmus.actors.device`).

Import `isthmus.actors.device` explicitly: it imports ray, which this package does not.
"""
