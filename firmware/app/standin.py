# A stand-in distance source for the shaft role where no sonar is attached: the host runner
# (testbed/hostnode.py, gateway tests) has no board and no sensors. Only used when the node's
# configuration has a "standin" section ({"dist_mm", "swing_mm", "period_s"}): a constant
# distance, or a slow triangle wave around it for demos. Real nodes use the JSN-SR04T.

import time


class StandInDistance:
    def __init__(self, settings):
        self.dist_mm = int(settings.get("dist_mm", 1500))
        self.swing_mm = int(settings.get("swing_mm", 0))
        self.period_s = max(2, int(settings.get("period_s", 600)))
        self._t0 = time.time()

    def read(self):
        """Distance from the sensor to the water surface, in mm."""
        if not self.swing_mm:
            return self.dist_mm
        phase = int(time.time() - self._t0) % self.period_s
        half = self.period_s // 2
        ramp = phase if phase < half else self.period_s - phase
        return self.dist_mm - self.swing_mm + 2 * self.swing_mm * ramp // half
