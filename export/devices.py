"""Getting the device inventory out: the export document's ``devices`` section and the database.

The inventory (analysis/devices.py) is fed on the pipeline thread; everything here reads it
either on that thread (the periodic tick, the end of the run) or under the flow table's lock,
which the pipeline holds while it feeds packets.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from db.repositories.device_repo import upsert_devices
from utils.logger import get_logger

log = get_logger(__name__)

#: seconds (wall clock) between device upserts while a run goes on
PERSIST_INTERVAL = 10.0


def device_section(inventory: Any, lock: Any = None) -> list[dict[str, Any]]:
    """One dict per device (MAC), the ``devices`` section of the export document."""
    if inventory is None:
        return []
    if lock is None:
        return [d.as_dict() for d in inventory.devices()]
    with lock:
        return [d.as_dict() for d in inventory.devices()]


class DevicePersistence:
    """Upserts the inventory's rows through the database writer now and then, and at the end.

    Args:
        inventory: the run's DeviceInventory.
        submit: the writer's ``submit`` (queues a callable taking the write connection).
        interval: seconds (wall clock) between upserts.
        clock: monotonic clock (tests pass their own).
    """

    def __init__(self, inventory: Any, submit: Callable[[Callable[[Any], Any]], None],
                 interval: float = PERSIST_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inventory = inventory
        self.submit = submit
        self.interval = interval
        self.clock = clock
        self._last = clock()
        self._signature: tuple[int, float] = (0, 0.0)
        self.upserts = 0

    def on_tick(self, now: float) -> None:
        """Periodic chore on the pipeline thread."""
        if self.clock() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        self._last = self.clock()
        devs = self.inventory.devices()
        sig = (len(devs), max((d.last_seen for d in devs), default=0.0))
        if sig == self._signature:
            return                 # nothing new since the last upsert
        self._signature = sig
        rows = self.inventory.db_rows()
        if rows:
            self.submit(lambda conn: upsert_devices(conn, rows))
            self.upserts += 1


def attach_device_persistence(components: Any, writer: Any,
                              periodic: list[Callable[[float], None]]) -> DevicePersistence | None:
    """Hook for Components.on_database: persist devices through ``writer`` while the run lasts."""
    inv = getattr(components, "devices", None)
    if inv is None:
        return None
    p = DevicePersistence(inv, writer.submit)
    periodic.append(p.on_tick)
    # on_finish runs after the pipeline retired its flows and before the session is closed
    # (which closes the writer), so the last rows still get written.
    components.on_finish.append(p.flush)
    return p
