"""Named actors: each child of the supervisor carries its name (modbus-shard-3, device-processor-0,
pg-writer-0), so the Ray dashboard's actor list and `ray list actors` say which actor is which."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorAlreadyExistsError

NAME_FREE_TIMEOUT_S = 30.0


async def create_named(actor_class: Any, name: str, namespace: str, *args: Any,
                       resources: Mapping[str, float] | None = None) -> ActorHandle:
    """`actor_class.remote(*args)` under `name` in `namespace`, on a node with `resources` (custom
    resources the actor asks for: meterray.placement).

    One supervisor per namespace owns these names, so whoever still holds one is a predecessor of this
    very child: one the supervisor just killed (Ray frees the name only once it has marked the actor
    dead, asynchronously) or one left by a supervisor process that died. It is killed and the name taken
    over as soon as Ray frees it.
    """
    deadline = time.monotonic() + NAME_FREE_TIMEOUT_S
    while True:
        try:
            return actor_class.options(name=name, namespace=namespace, resources=dict(resources or {})).remote(*args)
        except ActorAlreadyExistsError:
            if time.monotonic() > deadline:
                raise
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        except ValueError:  # freed meanwhile
            pass
        await asyncio.sleep(0.2)
