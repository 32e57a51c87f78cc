# Shaft water level: distance from a sensor in the shaft's lid down to the water surface,
# turned into the water level above the shaft floor.

from app.standin import StandInDistance


class Shaft:
    def __init__(self, cfg):
        s = cfg.section("shaft")
        self.depth_mm = int(s.get("depth_mm", 3000))
        self.source = StandInDistance(cfg.section("standin"))

    def measure(self):
        """Records for one uplink: (name, value) in the vocabulary's wire units."""
        dist_mm = self.source.read()
        level_mm = self.depth_mm - dist_mm
        if level_mm < 0:
            level_mm = 0
        return (("level", level_mm), ("dist", dist_mm))
