"""Named actors: each child of the supervisor carries its name (modbus-shard-3, device-processor-0,
pg-writer-0), so the Ray dashboard's actor list and `ray list actors` say which actor is which."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorAlreadyExistsError

NAME_FREE_TIMEOUT_S = 30.0


async def create_named(actor_class: Any, name: str, namespace: str, *args: Any) -> ActorHandle:
    """`actor_class.remote(*args)` under `name` in `namespace`.

    One supervisor per namespace owns these names, so whoever still holds one is a predecessor of this
    very child: one the supervisor just killed (Ray frees the name only once it has marked the actor
    dead, asynchronously) or one left by a supervisor process that died. It is killed and the name taken
    over as soon as Ray frees it.
    """
    deadline = time.monotonic() + NAME_FREE_TIMEOUT_S
    while True:
        try:
            return actor_class.options(name=name, namespace=namespace).remote(*args)
        except ActorAlreadyExistsError:
            if time.monotonic() > deadline:
                raise
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        except ValueError:  # freed meanwhile
            pass
        await asyncio.sleep(0.2)
