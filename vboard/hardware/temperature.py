"""esp32.raw_temperature(): the die's temperature sensor, which reads the chip, not the air.

The die runs about 25 degC above the air around it (the world's "air_temp_c" for the board,
45 degC without one); raw_temperature() gives it in Fahrenheit, as on the chip.

Ops: temp (``DieTemperature``).
"""

from __future__ import annotations

import math
from typing import Any, Callable


class DieTemperature:
    """``world``: asked ``world.value(board_id, "air_temp_c", now)``, when it has ``value``."""

    def __init__(self, world: Any, board_id: str) -> None:
        self._world = world
        self._board_id = board_id

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"temp": self.temp}

    def temp(self) -> int:
        """esp32.raw_temperature(): the die, about 25 degC above the air, in Fahrenheit."""
        celsius = 45.0
        value = getattr(self._world, "value", None)
        if value is not None:
            try:
                air = float(value(self._board_id, "air_temp_c", self._world.now()))
                if not math.isnan(air):
                    celsius = air + 25.0
            except (LookupError, TypeError, ValueError):
                pass
        return int(celsius * 9 / 5 + 32)
