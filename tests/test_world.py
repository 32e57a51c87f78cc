"""The world model: clock, quantities following scenarios, determinism, faults."""

import math
import re
import time

import pytest

from vboard.scenarios import BOARD_PARAMS, HERE, Scenario
from vboard.world import World

T0 = 1_750_000_000.0


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


# -- clock ----------------------------------------------------------------------------------

def test_now_starts_at_wall_time_and_is_monotonic():
    before = time.time()
    world = World()
    t1 = world.now()
    t2 = world.now()
    assert before - 1 <= t1 <= time.time() + 1
    assert t2 >= t1


def test_speed_factor_and_changing_speed_keeps_time_continuous():
    clock = FakeClock()
    world = World(speed=10.0, start_s=T0, clock=clock)
    assert world.now() == T0
    clock.t += 2.0
    assert world.now() == pytest.approx(T0 + 20.0)
    world.speed = 0.5
    assert world.speed == 0.5
    assert world.now() == pytest.approx(T0 + 20.0)
    clock.t += 4.0
    assert world.now() == pytest.approx(T0 + 22.0)
    clock.t -= 10.0                                 # a clock that jumps back
    assert world.now() == pytest.approx(T0 + 22.0)
    assert world.elapsed() == pytest.approx(22.0)
    with pytest.raises(ValueError):
        World(speed=0)


def test_scenario_start_sets_the_clock():
    world = World(scenario="golden-mile", clock=FakeClock())
    assert world.now() == pytest.approx(1762183800.0)         # 2025-11-03 16:30 +01:00


# -- determinism ------------------------------------------------------------------------------

def test_noise_is_reproducible_per_seed_and_independent_of_call_order():
    a, b, c = (World(seed=s, start_s=T0) for s in (1, 1, 2))
    times = [T0 + i * 0.37 for i in range(50)]
    first = [a.gauss("n", "k", t) for t in times]
    second = [b.gauss("n", "k", t) for t in reversed(times)][::-1]
    assert first == second
    assert first != [c.gauss("n", "k", t) for t in times]
    samples = [a.gauss("n", "stat", T0 + i) for i in range(4000)]
    mean = sum(samples) / len(samples)
    sd = math.sqrt(sum((x - mean) ** 2 for x in samples) / len(samples))
    assert abs(mean) < 0.06 and sd == pytest.approx(1.0, abs=0.05)
    assert all(0 <= a.uniform("n", "u", T0 + i) < 1 for i in range(100))


def test_two_worlds_with_one_seed_see_the_same_street():
    a = World(seed=3, scenario="golden-mile", clock=FakeClock())
    b = World(seed=3, scenario="golden-mile", clock=FakeClock())
    for t in range(0, 600, 7):
        for name in ("lux", "air_temp_c", "target_distance_cm"):
            va, vb = a.value("lamp-03", name, a.t0 + t), b.value("lamp-03", name, b.t0 + t)
            assert va == vb or (math.isnan(va) and math.isnan(vb))


# -- quantities -------------------------------------------------------------------------------

def test_daylight_follows_the_time_of_day():
    sc = Scenario()
    sc.daylight.sunrise, sc.daylight.sunset, sc.daylight.utc_offset_h = "07:00", "19:00", 0
    sc.daylight.clouds = 0.0
    midnight = 1_749_945_600.0                      # 2025-06-15 00:00 UTC
    world = World(scenario=sc, start_s=midnight)
    lux = {h: world.value("b", "lux", midnight + h * 3600) for h in (0, 6, 7, 8, 12, 18, 19, 22)}
    assert lux[0] == pytest.approx(1.0, rel=0.01) and lux[22] == pytest.approx(1.0, rel=0.01)
    assert lux[12] == pytest.approx(20000, rel=0.01)
    assert lux[0] < lux[6] < lux[7] < lux[8] < lux[12]
    assert lux[12] > lux[18] > lux[19] > lux[22]
    dusk = [world.value("b", "lux", midnight + 19 * 3600 + m * 60) for m in range(0, 40, 5)]
    assert dusk == sorted(dusk, reverse=True)


def test_scripted_values_override_the_model():
    sc = Scenario()
    sc.value("b", "air_temp_c", [(0, 10.0), (100, 20.0)])
    sc.value("*", "supply_v", 12.0)
    sc.value("b", "lux", [(0, 1.0), (10, 500.0)], interp="step")
    world = World(scenario=sc, start_s=T0)
    assert world.value("b", "air_temp_c", T0 + 50) == pytest.approx(15.0)
    assert world.value("b", "air_temp_c", T0 + 500) == 20.0
    assert world.value("other", "supply_v", T0) == 12.0
    assert world.value("b", "lux", T0 + 9.9) == 1.0 and world.value("b", "lux", T0 + 10) == 500
    world.set_value("b", "air_temp_c", -3.0)
    assert world.value("b", "air_temp_c", T0 + 50) == -3.0
    world.set_value("b", "air_temp_c", None)
    assert world.value("b", "air_temp_c", T0 + 50) == pytest.approx(15.0)
    with pytest.raises(KeyError):
        world.value("b", "humidity", T0)


def test_people_walk_past_the_lamps_in_order():
    world = World(scenario="golden-mile", clock=FakeClock())
    first_seen = {}
    for t in range(0, 200):
        for i in range(1, 7):
            lamp = "lamp-0%d" % i
            if lamp not in first_seen and world.value(lamp, "presence", world.t0 + t):
                first_seen[lamp] = t
    order = [first_seen[lamp] for lamp in sorted(first_seen)]
    assert len(order) == 6 and order == sorted(order)
    # 30 m apart at 1.4 m/s: about 21 s from one lamp to the next
    assert (order[-1] - order[0]) / 5 == pytest.approx(30 / 1.4, abs=2)
    t = world.t0 + first_seen["lamp-02"] + 2
    d = world.value("lamp-02", "moving_target_cm", t)
    assert 300 <= d <= 600 and math.isnan(world.value("lamp-02", "stationary_target_cm", t))


def test_someone_pausing_is_a_stationary_target():
    sc = Scenario()
    sc.board("lamp", street="s", position_m=10.0)
    sc.pedestrian("s", start_s=0, speed_mps=1.0, from_m=0, to_m=30, pauses=[(10.0, 60.0)])
    world = World(scenario=sc, start_s=T0)
    assert math.isnan(world.value("lamp", "stationary_target_cm", T0 + 5))
    standing = world.value("lamp", "stationary_target_cm", T0 + 40)
    assert standing == pytest.approx(math.hypot(1.5, 3.0) * 100)
    assert math.isnan(world.value("lamp", "moving_target_cm", T0 + 40))
    assert world.value("lamp", "presence", T0 + 200) == 0


def test_rain_fills_the_shaft_and_the_drain_empties_it():
    world = World(scenario="rain", clock=FakeClock())
    level = [world.value("shaft-01", "level_mm", world.t0 + t) for t in range(0, 8000, 100)]
    assert level[0] == 300
    peak = max(level)
    assert peak == pytest.approx(300 + (55 - 15) * 20, abs=5)    # 20 min at +40 mm/min
    assert level.index(peak) * 100 == pytest.approx(1500, abs=100)
    assert level[-1] == 300                                      # drained back to the sump
    t = world.t0 + 1000
    assert world.value("shaft-01", "distance_mm", t) == pytest.approx(
        3000 - world.value("shaft-01", "level_mm", t))
    assert world.value("shaft-02", "level_mm", world.t0 + 5000) < peak


def test_shaft_level_is_capped_below_the_sensor():
    sc = Scenario()
    sc.board("s", depth_mm=1000, base_level_mm=100)
    sc.add_rain("s", start_s=0, duration_s=3600, rise_mm_per_min=100)
    world = World(scenario=sc, start_s=T0)
    assert world.value("s", "level_mm", T0 + 3000) == pytest.approx(850)


def test_cars_change_the_field_of_their_bay_and_a_little_of_the_neighbour():
    world = World(scenario="parking", clock=FakeClock())
    t0 = world.t0
    empty = [world.value("bay-01", "mag_%s_ut" % a, t0 + 30) for a in "xyz"]
    parked = [world.value("bay-01", "mag_%s_ut" % a, t0 + 200) for a in "xyz"]
    change = math.dist(empty, parked)
    assert 15 <= change <= 80
    assert world.value("bay-01", "occupied", t0 + 200) == 1
    assert world.value("bay-01", "occupied", t0 + 1000) == 0
    # bay-02 stays empty until 300 s but sees its neighbour's car a little
    n_empty = [world.value("bay-02", "mag_%s_ut" % a, t0 + 30) for a in "xyz"]
    n_near = [world.value("bay-02", "mag_%s_ut" % a, t0 + 200) for a in "xyz"]
    assert 0.5 < math.dist(n_empty, n_near) < 0.3 * change
    # bay-03 is 5 m away: beyond the neighbour reach
    far = [world.value("bay-03", "mag_%s_ut" % a, t0 + t) for a in "xyz" for t in (30, 200)]
    assert far[0::2] == pytest.approx(far[1::2], abs=0.2)


def test_energy_accounting():
    world = World(scenario="parking", clock=FakeClock())
    t0 = world.t0
    assert world.value("bay-01", "battery_used_mah", t0 + 3600) == pytest.approx(0.05)
    assert world.value("bay-04", "battery_used_mah", t0) == pytest.approx(2700)
    world.set_draw("bay-01", 100.0, t0 + 3600)
    assert world.value("bay-01", "battery_used_mah", t0 + 7200) == pytest.approx(100.05)
    assert math.isnan(world.value("bay-01", "battery_v", t0))


# -- faults -----------------------------------------------------------------------------------

def test_scenario_faults_switch_on_and_off_at_their_times():
    world = World(scenario="faults", clock=FakeClock())
    t0 = world.t0
    assert not world.fault("lamp-01", "bh1750_silent", t0 + 59)
    assert world.fault("lamp-01", "bh1750_silent", t0 + 60)
    assert not world.fault("lamp-01", "bh1750_silent", t0 + 120)
    assert world.fault("lamp-01", "wifi_lost", t0 + 500)
    assert world.fault_params("shaft-01", "jsnsr04t_condensation", t0 + 100)["rate"] == 0.4
    assert world.powercut_after_writes("shaft-01", t0 + 899) is None
    assert world.powercut_after_writes("shaft-01", t0 + 900) == 5
    assert world.fault("shaft-01", "brownout", t0 + 800.5)
    assert not world.fault("lamp-01", "jsnsr04t_silent", t0 + 710)


def test_faults_injected_and_cleared_from_python():
    clock = FakeClock()
    world = World(speed=2.0, start_s=T0, clock=clock)
    world.inject("n", "wifi_lost", duration_s=30)
    assert world.fault("n", "wifi_lost")
    clock.t += 16                                   # 32 simulated seconds
    assert not world.fault("n", "wifi_lost")
    world.inject("*", "brownout")
    assert world.fault("any-board", "brownout")
    world.inject("n", "powercut", after_writes=3)
    assert world.powercut_after_writes("n") == 3
    world.clear("n")
    assert world.powercut_after_writes("n") is None and world.fault("n", "brownout")


# -- scenario files ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(HERE.glob("*.toml")), ids=lambda p: p.stem)
def test_example_scenarios_load_and_name_their_roles(path):
    sc = Scenario.load(path)
    assert sc.boards and all(b.role in ("lighting", "parking", "shaft")
                             for b in sc.boards.values())
    world = World(scenario=sc, clock=FakeClock())
    for board in sc.boards:
        for name in ("lux", "air_temp_c", "distance_mm", "mag_z_ut", "battery_used_mah"):
            assert not math.isnan(world.value(board, name, world.t0 + 60))


def test_golden_mile_has_six_lamps_along_the_street():
    sc = Scenario.named("golden-mile")
    lamps = sorted(sc.boards.values(), key=lambda b: b.position_m)
    assert len(lamps) == 6 and len({b.street for b in lamps}) == 1


def test_bad_scenarios_are_refused_with_the_file_name(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[boats]]\nid = "b"\n')
    with pytest.raises(ValueError, match="bad.toml.*boats"):
        Scenario.load(bad)
    with pytest.raises(KeyError, match="golden-mile"):
        Scenario.named("nowhere")


def test_python_api_and_toml_describe_the_same_scenario(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("""
[[boards]]
id = "lamp"
street = "s"
position_m = 5

[[pedestrians]]
street = "s"
start_s = 1
count = 2
every_s = 10

[[faults]]
board = "lamp"
name = "bh1750_silent"
start_s = 3
duration_s = 4
""")
    sc = Scenario()
    sc.board("lamp", street="s", position_m=5)
    sc.pedestrian("s", start_s=1, count=2, every_s=10)
    sc.fault("lamp", "bh1750_silent", start_s=3, duration_s=4)
    a, b = World(scenario=path, start_s=T0), World(scenario=sc, start_s=T0)
    for t in range(0, 60, 3):
        assert a.value("lamp", "presence", T0 + t) == b.value("lamp", "presence", T0 + t)
        assert a.fault("lamp", "bh1750_silent", T0 + t) == b.fault("lamp", "bh1750_silent",
                                                                   T0 + t)


def test_load_scenario_after_making_the_world():
    world = World(speed=5.0, seed=2, clock=FakeClock())
    world.inject("shaft-01", "wifi_lost")
    world.load_scenario(HERE / "rain.toml")
    assert world.scenario.name == "rain" and not world.fault("shaft-01", "wifi_lost")
    assert world.value("shaft-01", "level_mm", world.t0 + 1500) > 1000
    world.load_scenario("golden-mile")                          # has a start time
    assert world.now() == pytest.approx(1762183800.0)


def test_a_misspelt_board_parameter_is_refused_not_ignored(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('[[boards]]\nid = "shaft-01"\nrole = "shaft"\ndepht_mm = 2000\n')
    with pytest.raises(ValueError, match=r"typo\.toml: board shaft-01: unknown parameter\(s\) "
                                         r"depht_mm \(known: .*depth_mm"):
        Scenario.load(path)


def test_the_declared_board_parameters_are_the_documented_and_the_read_ones():
    """BOARD_PARAMS, the README's table and what world.py and the model wiring read agree:
    a parameter read but not declared would be refused in every scenario, one declared but
    never read would be accepted and do nothing."""
    table = (HERE / "README.md").read_text().split("Board parameters", 1)[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| (`.*?) \|", table, re.M))
    documented = {name for cell in documented for name in re.findall(r"`(\w+)`", cell)}
    vboard = HERE.parent
    read = set()
    for source, patterns in (
            (vboard / "world.py", (r"self\.param\([^,]+,\s*\"(\w+)\"",
                                   r"spec\.params\.get\(\"(\w+)\"", r"\bp\.get\(\"(\w+)\"")),
            (vboard / "models" / "wiring.py", (r"params\.get\(\"(\w+)\"",))):
        text = source.read_text()
        for pattern in patterns:
            read |= set(re.findall(pattern, text))
    assert documented == set(BOARD_PARAMS)
    assert read == set(BOARD_PARAMS)
