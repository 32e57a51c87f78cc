"""Gateway per-frame work: validating SenML-CBOR and rendering SenML JSON.

Baseline: bare cbor2.loads + json.dumps of the same frame (what any decoder must do at least).
"""

from __future__ import annotations

import json

import cbor2

from bench.common import Result, rate
from gateway import senml

FRAME = cbor2.dumps([{-3: 1_795_000_000, 0: "level", 2: 1234}, {0: "temp", 2: 1150},
                     {0: "batt", 2: 3012}])


def run() -> list[Result]:
    baseline = rate(lambda: json.dumps(cbor2.loads(FRAME)))
    ours = rate(lambda: senml.to_json("shaft-01", senml.decode(FRAME, 1_795_000_100.0)))
    return [Result("senml.decode + to_json", ours, "frames/s", "cbor2+json", baseline)]
