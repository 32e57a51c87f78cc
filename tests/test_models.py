"""Device models at their bus interface, byte for byte against the datasheets (no VM needed)."""

import math
import struct

import pytest

from vboard.models.base import Nack
from vboard.models.battery import Battery, open_circuit_v
from vboard.models.bh1750 import BH1750
from vboard.models.common import PULSE_TIMEOUT_IN_PULSE, PULSE_TIMEOUT_WAITING, UartTx
from vboard.models.ina219 import INA219
from vboard.models.jsnsr04t import JSNSR04T, frame, speed_of_sound
from vboard.models.lamp import Lamp
from vboard.models.ld2410 import LD2410, command_frame
from vboard.models.qmc5883l import QMC5883L
from vboard.models.wiring import models_for, wire
from vboard.world import World

T0 = 1_750_000_000.0
B = "node-1"


@pytest.fixture
def world():
    return World(seed=7, start_s=T0, clock=lambda: 0.0)


def h(text):
    return bytes.fromhex(text)


# -- BH1750 ---------------------------------------------------------------------------------

def bh_counts(dev, t):
    hi, lo = dev.i2c_read(2, t)
    return hi << 8 | lo


def test_bh1750_continuous_h_res_waits_for_the_measurement_time(world):
    world.set_value(B, "lux", 1000.0)
    dev = BH1750(world, B)
    dev.i2c_write(b"\x01", T0)                      # power on
    dev.i2c_write(b"\x10", T0)                      # continuously H-resolution
    assert bh_counts(dev, T0 + 0.119) == 0          # nothing measured yet: the reset value
    counts = bh_counts(dev, T0 + 0.121)
    assert counts == pytest.approx(1200, rel=0.03)  # lux * 1.2
    world.set_value(B, "lux", 500.0)
    assert bh_counts(dev, T0 + 0.239) == counts     # still the first result
    assert bh_counts(dev, T0 + 0.241) == pytest.approx(600, rel=0.03)


def test_bh1750_result_is_big_endian_without_register_pointer(world):
    world.set_value(B, "lux", 28067.0)              # the datasheet's example: 0x8390
    dev = BH1750(world, B, accuracy=1.2)
    dev.i2c_write(b"\x20", T0)
    raw = dev.i2c_read(2, T0 + 0.2)
    assert raw[0] in (0x82, 0x83, 0x84) and abs((raw[0] << 8 | raw[1]) - 0x8390) < 400


def test_bh1750_mtreg_scales_counts_and_time(world):
    world.set_value(B, "lux", 100.0)
    dev = BH1750(world, B)
    dev.i2c_write(bytes([0x40 | (254 >> 5)]), T0)   # MT[7:5]
    dev.i2c_write(bytes([0x60 | (254 & 0x1F)]), T0)  # MT[4:0]
    assert dev.mtreg == 254
    dev.i2c_write(b"\x20", T0)                      # one-time H
    t_meas = 0.120 * 254 / 69
    assert bh_counts(dev, T0 + t_meas - 0.002) == 0
    assert bh_counts(dev, T0 + t_meas + 0.001) == pytest.approx(100 * 1.2 * 254 / 69, rel=0.03)


def test_bh1750_h_res2_and_l_res(world):
    world.set_value(B, "lux", 1000.0)
    dev = BH1750(world, B)
    dev.i2c_write(b"\x11", T0)                      # continuous H-res2: half-lux steps
    assert bh_counts(dev, T0 + 0.121) == pytest.approx(2400, rel=0.03)
    dev.i2c_write(b"\x13", T0 + 1)                  # continuous L-res: 16 ms
    assert bh_counts(dev, T0 + 1.015) == pytest.approx(2400, rel=0.03)   # not yet
    low = bh_counts(dev, T0 + 1.017)
    assert low == pytest.approx(1200, rel=0.03) and low % 4 == 0


def test_bh1750_one_time_mode_powers_down(world):
    world.set_value(B, "lux", 50.0)
    dev = BH1750(world, B)
    dev.i2c_write(b"\x23", T0)                      # one-time L
    first = bh_counts(dev, T0 + 0.02)
    assert first == pytest.approx(60, abs=4)
    assert not dev.powered and dev.mode is None
    world.set_value(B, "lux", 5000.0)
    assert bh_counts(dev, T0 + 5) == first          # no further measurement


def test_bh1750_reset_only_when_powered_and_saturation(world):
    world.set_value(B, "lux", 100000.0)
    dev = BH1750(world, B)
    dev.i2c_write(b"\x20", T0)
    assert bh_counts(dev, T0 + 0.2) == 65535        # saturated
    dev.i2c_write(b"\x07", T0 + 0.3)                # reset: ignored in power down
    assert bh_counts(dev, T0 + 0.3) == 65535
    dev.i2c_write(b"\x01", T0 + 0.4)
    dev.i2c_write(b"\x07", T0 + 0.4)
    assert bh_counts(dev, T0 + 0.4) == 0


def test_bh1750_addresses_nack_and_lamp_light(world):
    with pytest.raises(ValueError):
        BH1750(world, B, address=0x24)
    world.set_value(B, "lux", 0.0)
    dev = BH1750(world, B, address=0x5C, extra_lux=[lambda t: 10.0])
    dev.i2c_write(b"\x20", T0)
    assert bh_counts(dev, T0 + 0.2) == pytest.approx(12, abs=3)
    world.inject(B, "bh1750_silent", start_s=10, duration_s=5)
    with pytest.raises(Nack):
        dev.i2c_write(b"\x01", T0 + 11)
    with pytest.raises(Nack):
        dev.i2c_read(2, T0 + 12)
    dev.i2c_read(2, T0 + 16)


# -- LD2410 ---------------------------------------------------------------------------------

def frames(data, head=b"\xf4\xf3\xf2\xf1"):
    """Split a byte stream into complete frames starting with ``head``."""
    out = []
    i = data.find(head)
    while i >= 0 and i + 6 <= len(data):
        (length,) = struct.unpack_from("<H", data, i + 4)
        end = i + 6 + length + 4
        if end > len(data):
            break
        out.append(data[i:end])
        i = data.find(head, end)
    return out


def basic(frame_bytes):
    state, m_cm, m_e, s_cm, s_e, det = struct.unpack_from("<BHBHBH", frame_bytes, 8)
    return {"state": state, "m_cm": m_cm, "m_e": m_e, "s_cm": s_cm, "s_e": s_e, "det": det}


@pytest.fixture
def radar(world):
    world.set_value(B, "moving_target_cm", math.nan)
    world.set_value(B, "stationary_target_cm", math.nan)
    dev = LD2410(world, B, out_gpio=27)
    dev.uart_read(T0)
    return dev


def test_ld2410_reports_basic_frames_at_its_rate(radar):
    data = radar.uart_read(T0 + 1.0)
    got = frames(data)
    assert 9 <= len(got) <= 11
    assert got[0] == h("F4F3F2F1 0D00 02 AA 00 0000 00 0000 00 0000 55 00 F8F7F6F5")
    assert radar.baudrate == 256000


def test_ld2410_frames_arrive_byte_by_byte_at_256000_baud(radar):
    radar.uart_read(T0 + 0.95)
    tick = T0 + 1.0
    partial = radar.uart_read(tick + 10 * 10 / 256000 + 1e-6)
    assert partial == h("F4F3F2F1 0D00 02 AA 00 00")
    rest = radar.uart_read(tick + 0.01)
    assert len(partial + rest) == 23


def test_ld2410_moving_and_standing_targets(world, radar):
    world.set_value(B, "moving_target_cm", 300.0)
    f = basic(frames(radar.uart_read(T0 + 0.5))[-1])
    assert f["state"] & 1 and abs(f["m_cm"] - 300) <= 8 and f["m_e"] > 50
    world.set_value(B, "moving_target_cm", math.nan)
    world.set_value(B, "stationary_target_cm", 250.0)
    f = basic(frames(radar.uart_read(T0 + 1.0))[-1])
    assert f["state"] == 2 and abs(f["s_cm"] - 250) <= 8 and f["det"] == f["s_cm"]


def test_ld2410_holds_presence_for_the_no_one_duration(world, radar):
    world.set_value(B, "moving_target_cm", 200.0)
    assert radar.pin_input(27, T0 + 0.5) == 1
    world.set_value(B, "moving_target_cm", math.nan)
    assert radar.pin_input(27, T0 + 5.3) == 1       # default no-one duration: 5 s
    assert radar.pin_input(27, T0 + 5.7) == 0
    f = basic(frames(radar.uart_read(T0 + 6.0))[-1])
    assert f["state"] == 0


def test_ld2410_configuration_session_byte_exact(radar):
    radar.uart_read(T0 + 0.2)
    radar.uart_write(command_frame(0x00A0), T0 + 0.2)          # ignored: not configuring
    assert not frames(radar.uart_read(T0 + 0.25), b"\xfd\xfc\xfb\xfa")
    radar.uart_write(h("FDFCFBFA 0400 FF00 0100 04030201"), T0 + 0.3)
    acks = frames(radar.uart_read(T0 + 0.35), b"\xfd\xfc\xfb\xfa")
    assert acks == [h("FDFCFBFA 0800 FF01 0000 0100 4000 04030201")]
    assert not frames(radar.uart_read(T0 + 1.0))                # no reports while configuring
    radar.uart_write(h("FDFCFBFA 0200 6100 04030201"), T0 + 1.0)
    radar.uart_write(h("FDFCFBFA 0200 A000 04030201"), T0 + 1.0)
    acks = frames(radar.uart_read(T0 + 1.1), b"\xfd\xfc\xfb\xfa")
    assert acks == [
        h("FDFCFBFA 1C00 6101 0000 AA 08 08 08 323228 1E 14 0F 0F 0F 0F"
          " 000028281E1E141414 0500 04030201"),
        h("FDFCFBFA 0C00 A001 0000 0001 0201 16240622 04030201"),      # V1.02.22062416
    ]
    radar.uart_write(h("FDFCFBFA 0200 FE00 04030201"), T0 + 1.1)
    data = radar.uart_read(T0 + 1.6)
    assert frames(data, b"\xfd\xfc\xfb\xfa") == [h("FDFCFBFA 0400 FE01 0000 04030201")]
    assert len(frames(data)) >= 4


def test_ld2410_max_gates_limit_detection(world, radar):
    radar.uart_write(command_frame(0x00FF, b"\x01\x00"), T0 + 0.1)
    # The datasheet's example: max gates 8/8, no-one duration 5 s.
    radar.uart_write(h("FDFCFBFA 1400 6000 0000 08000000 0100 08000000 0200 05000000"
                       " 04030201"), T0 + 0.2)
    radar.uart_write(command_frame(0x0060, struct.pack("<HIHIHI", 0, 3, 1, 3, 2, 1)),
                     T0 + 0.3)
    radar.uart_write(command_frame(0x0060, struct.pack("<HIHIHI", 0, 9, 1, 3, 2, 1)),
                     T0 + 0.4)                                  # gate 9 does not exist
    acks = frames(radar.uart_read(T0 + 0.5), b"\xfd\xfc\xfb\xfa")
    assert [a[6:10] for a in acks[1:]] == [h("60010000"), h("60010000"), h("60010100")]
    assert radar.config.max_move_gate == 3 and radar.config.no_one_s == 1
    radar.uart_write(command_frame(0x00FE), T0 + 0.5)
    world.set_value(B, "moving_target_cm", 500.0)               # gate 6: beyond gate 3
    assert radar.pin_input(27, T0 + 1.5) == 0
    world.set_value(B, "moving_target_cm", 200.0)               # gate 2
    assert radar.pin_input(27, T0 + 2.0) == 1


def test_ld2410_engineering_frames(world, radar):
    world.set_value(B, "moving_target_cm", 160.0)              # gate 2
    for word in (0x00FF, 0x0062, 0x00FE):
        radar.uart_write(command_frame(word, b"\x01\x00" if word == 0xFF else b""), T0 + 0.1)
    f = frames(radar.uart_read(T0 + 1.0))[-1]
    assert f[4:6] == b"\x23\x00" and f[6:8] == b"\x01\xaa" and f[-6:] == h("5500F8F7F6F5")
    assert f[17:19] == b"\x08\x08"
    moving = list(f[19:28])
    assert moving.index(max(moving)) == 2
    assert f[38] == 1                                           # OUT level


def test_ld2410_restart_applies_baud_rate_and_silence_fault(world, radar):
    radar.uart_write(command_frame(0x00FF, b"\x01\x00"), T0 + 0.1)
    radar.uart_write(command_frame(0x00A1, b"\x05\x00"), T0 + 0.2)
    radar.uart_write(command_frame(0x00A3), T0 + 0.3)
    acks = frames(radar.uart_read(T0 + 0.4), b"\xfd\xfc\xfb\xfa")
    assert [a[6:10] for a in acks] == [h("FF010000"), h("A1010000"), h("A3010000")]
    assert radar.baudrate == 115200 and not radar.config_mode
    assert frames(radar.uart_read(T0 + 2.0))                    # reporting again after boot
    world.inject(B, "ld2410_silent", start_s=3)
    radar.uart_read(T0 + 3.05)
    assert radar.uart_read(T0 + 5.0) == b""


# -- QMC5883L -------------------------------------------------------------------------------

def qmc_read(dev, reg, n, t):
    dev.i2c_write(bytes([reg]), t)
    return dev.i2c_read(n, t)


def xyz(raw):
    return struct.unpack("<hhh", raw[:6])


@pytest.fixture
def mag(world):
    for axis, v in zip("xyz", (20.0, -5.0, -40.0)):
        world.set_value(B, "mag_%s_ut" % axis, v)
    world.set_value(B, "air_temp_c", 21.0)
    return QMC5883L(world, B, drdy_gpio=34)


def test_qmc5883l_chip_id_standby_and_continuous(mag):
    assert qmc_read(mag, 0x0D, 1, T0) == b"\xff"
    assert qmc_read(mag, 0x06, 1, T0 + 1) == b"\x00"            # standby: nothing measured
    mag.i2c_write(b"\x0b\x01", T0 + 1)                          # SET/RESET period
    mag.i2c_write(b"\x09\x01", T0 + 1)                          # continuous, 10 Hz, 2 G, OSR 512
    assert qmc_read(mag, 0x06, 1, T0 + 1.09)[0] & 1 == 0
    assert qmc_read(mag, 0x06, 1, T0 + 1.11)[0] & 1 == 1        # DRDY
    assert mag.pin_input(34, T0 + 1.11) == 1
    x, y, z = xyz(qmc_read(mag, 0x00, 6, T0 + 1.12))
    assert x == pytest.approx(2400, abs=150) and y == pytest.approx(-600, abs=150)
    assert z == pytest.approx(-4800, abs=150)                   # 12000 LSB/G = 120 LSB/uT
    assert qmc_read(mag, 0x06, 1, T0 + 1.13)[0] & 1 == 0        # cleared by reading data
    assert mag.pin_input(34, T0 + 1.13) == 0
    temp = struct.unpack("<h", qmc_read(mag, 0x07, 2, T0 + 1.13))[0]
    assert temp == pytest.approx(2100, abs=30)                  # ~100 LSB/degC


def test_qmc5883l_range_overflow_and_dor(world, mag):
    world.set_value(B, "mag_z_ut", -300.0)                       # 3 G: beyond 2 G's 16 bits
    mag.i2c_write(b"\x09\x0d", T0)                              # continuous 200 Hz 2 G
    status = qmc_read(mag, 0x06, 1, T0 + 0.012)[0]
    assert status & 0x07 == 0x01 | 0x02 | 0x04                  # DRDY, OVL, DOR (skipped one)
    assert xyz(qmc_read(mag, 0x00, 6, T0 + 0.012))[2] == -32768
    assert qmc_read(mag, 0x06, 1, T0 + 0.012)[0] & 0x05 == 0    # DRDY, DOR cleared; OVL stays
    mag.i2c_write(b"\x09\x1d", T0 + 0.1)                        # 8 G: 30 LSB/uT
    assert qmc_read(mag, 0x06, 1, T0 + 0.106)[0] & 0x02 == 0
    assert xyz(qmc_read(mag, 0x00, 6, T0 + 0.106))[2] == pytest.approx(-9000, abs=60)


def test_qmc5883l_pointer_roll_over_and_soft_reset(mag):
    mag.i2c_write(b"\x09\x01", T0)
    plain = qmc_read(mag, 0x00, 9, T0 + 0.2)                    # runs on into temperature
    mag.i2c_write(b"\x0a\x40", T0 + 0.2)                        # ROL_PNT
    rolled = qmc_read(mag, 0x00, 9, T0 + 0.3)
    assert rolled[7:9] == rolled[0:2]                           # 06 -> 00
    assert plain[7:9] != plain[0:2]
    mag.i2c_write(b"\x0a\x01", T0 + 0.3)                        # INT_ENB=1: DRDY pin off
    assert mag.pin_input(34, T0 + 0.45) == 0
    mag.i2c_write(b"\x0a\x80", T0 + 0.5)                        # soft reset
    assert qmc_read(mag, 0x09, 3, T0 + 0.5) == b"\x00\x00\x00"
    assert qmc_read(mag, 0x06, 1, T0 + 1.0) == b"\x00"          # standby again


def test_qmc5883l_nack_when_silent(world, mag):
    world.inject(B, "qmc5883l_silent", start_s=0)
    with pytest.raises(Nack):
        qmc_read(mag, 0x0D, 1, T0 + 1)


# -- JSN-SR04T ------------------------------------------------------------------------------

TRIG, ECHO, POWER = 5, 18, 26


@pytest.fixture
def sonar(world):
    world.set_value(B, "distance_mm", 1500.0)
    world.set_value(B, "air_temp_c", 20.0)
    return JSNSR04T(world, B, trig_gpio=TRIG, echo_gpio=ECHO, power_gpio=POWER)


def ping(dev, t, high_s=12e-6, timeout_us=30000):
    dev.pin_output(TRIG, 1, t)
    dev.pin_output(TRIG, 0, t + high_s)
    return dev.pulse_us(ECHO, 1, timeout_us, t + high_s)


def test_jsnsr04t_echo_is_the_round_trip_at_the_speed_of_sound(world, sonar):
    expect = 2 * 1.5 / speed_of_sound(20.0) * 1e6                # ~8741 us
    assert ping(sonar, T0) == pytest.approx(expect, abs=40)
    world.set_value(B, "air_temp_c", -10.0)
    cold = ping(sonar, T0 + 1)
    assert cold == pytest.approx(2 * 1.5 / speed_of_sound(-10.0) * 1e6, abs=40)
    assert cold > expect + 300


def test_jsnsr04t_echo_level_and_short_trigger(sonar):
    assert ping(sonar, T0, high_s=5e-6) == PULSE_TIMEOUT_WAITING   # < 10 us: no measurement
    sonar.pin_output(TRIG, 1, T0 + 1)
    sonar.pin_output(TRIG, 0, T0 + 1 + 10e-6)
    assert sonar.pin_input(ECHO, T0 + 1 + 10e-6) == 0
    assert sonar.pin_input(ECHO, T0 + 1 + 0.002) == 1
    assert sonar.pin_input(ECHO, T0 + 1 + 0.02) == 0


def test_jsnsr04t_no_echo_out_of_range_and_in_blind_zone(world, sonar):
    assert (PULSE_TIMEOUT_WAITING, PULSE_TIMEOUT_IN_PULSE) == (-1, -2)   # base.py's contract
    world.set_value(B, "distance_mm", 6000.0)
    assert ping(sonar, T0) == PULSE_TIMEOUT_IN_PULSE             # ECHO stays high 60 ms
    assert ping(sonar, T0 + 1, timeout_us=100000) == pytest.approx(60000, abs=5)
    world.set_value(B, "distance_mm", 150.0)
    assert ping(sonar, T0 + 2, timeout_us=100000) == pytest.approx(60000, abs=5)


def test_jsnsr04t_condensation_echo_rate(world, sonar):
    world.inject(B, "jsnsr04t_condensation", start_s=0, rate=0.3, min_mm=260, max_mm=380)
    spurious = 0
    n = 400
    for i in range(n):
        width = ping(sonar, T0 + 1 + i * 0.1)
        mm = width / 1e6 * speed_of_sound(20.0) / 2 * 1000
        if mm < 400:
            assert 255 <= mm <= 385
            spurious += 1
        else:
            assert mm == pytest.approx(1500, abs=20)
    assert spurious / n == pytest.approx(0.3, abs=0.07)


def test_jsnsr04t_silent_and_power_switch(world, sonar):
    world.inject(B, "jsnsr04t_silent", start_s=10, duration_s=1)
    assert ping(sonar, T0 + 10.5) == PULSE_TIMEOUT_WAITING
    sonar.pin_output(POWER, 0, T0 + 20)
    assert ping(sonar, T0 + 20.1) == PULSE_TIMEOUT_WAITING
    sonar.pin_output(POWER, 1, T0 + 21)
    assert ping(sonar, T0 + 21.1) == PULSE_TIMEOUT_WAITING     # still booting
    assert ping(sonar, T0 + 21.3) > 0


def test_jsnsr04t_uart_trigger_mode_frame(world):
    world.set_value(B, "distance_mm", 1234.0)
    world.set_value(B, "air_temp_c", 20.0)
    dev = JSNSR04T(world, B, mode="uart_trigger")
    assert dev.baudrate == 9600
    dev.uart_write(b"\x55", T0)
    assert dev.uart_read(T0 + 0.005) == b""                     # still measuring
    data = dev.uart_read(T0 + 0.05)
    assert len(data) == 4 and data[0] == 0xFF
    assert data[3] == (0xFF + data[1] + data[2]) & 0xFF
    mm = data[1] << 8 | data[2]
    assert mm == pytest.approx(1234 * 340.0 / speed_of_sound(20.0), abs=12)   # fixed 340 m/s
    assert frame(0x1234) == h("FF 12 34 45")
    world.set_value(B, "distance_mm", 9000.0)
    dev.uart_write(b"\x55", T0 + 1)
    assert dev.uart_read(T0 + 1.2) == h("FF 00 00 FF")          # no echo


def test_jsnsr04t_uart_auto_mode_streams_every_100ms(world):
    world.set_value(B, "distance_mm", 800.0)
    dev = JSNSR04T(world, B, mode="uart_auto")
    dev.uart_read(T0)
    data = dev.uart_read(T0 + 1.0)
    assert len(data) // 4 in (9, 10, 11) and len(data) % 4 == 0
    assert all(data[i] == 0xFF for i in range(0, len(data), 4))
    assert ping(dev, T0 + 2) == PULSE_TIMEOUT_WAITING           # TRIG/ECHO unused in UART mode


# -- INA219 and the lamp ----------------------------------------------------------------------

def ina_read(dev, reg, t):
    dev.i2c_write(bytes([reg]), t)
    return int.from_bytes(dev.i2c_read(2, t), "big")


def ina_write(dev, reg, value, t):
    dev.i2c_write(bytes([reg]) + value.to_bytes(2, "big"), t)


@pytest.fixture
def lamp(world):
    world.set_value(B, "supply_v", 24.0)
    return Lamp(world, B, 25, rated_w=40.0, standby_w=0.5, leak_lux=8.0)


def test_ina219_power_on_defaults_and_uncalibrated_current(world, lamp):
    dev = INA219(world, B, 0x40, shunt_ohm=0.1, load=lamp)
    lamp.pwm(25, 1000, 65535, T0)
    assert ina_read(dev, 0x00, T0) == 0x399F
    bus = ina_read(dev, 0x02, T0 + 0.01)
    assert bus >> 3 == pytest.approx(6000, abs=10) and bus & 0x2    # 24 V / 4 mV, CNVR
    assert ina_read(dev, 0x04, T0 + 0.01) == 0 and ina_read(dev, 0x03, T0 + 0.01) == 0


def test_ina219_current_and_power_from_calibration(world, lamp):
    dev = INA219(world, B, 0x40, shunt_ohm=0.1, load=lamp)
    lamp.pwm(25, 1000, 65535, T0)
    ina_write(dev, 0x05, 4096, T0)                  # Current_LSB 100 uA with 0.1 ohm
    amps = 40.5 / 24.0
    shunt = ina_read(dev, 0x01, T0 + 0.01)
    assert shunt == pytest.approx(amps * 0.1 / 10e-6, abs=6)
    current = ina_read(dev, 0x04, T0 + 0.01)
    assert current == (shunt * 4096) >> 12
    bus = ina_read(dev, 0x02, T0 + 0.01) >> 3
    assert ina_read(dev, 0x03, T0 + 0.01) == current * bus // 5000
    assert ina_read(dev, 0x03, T0 + 0.01) * 20 * 100e-6 == pytest.approx(40.5, rel=0.01)
    assert ina_read(dev, 0x02, T0 + 0.01) & 0x2 == 0    # CNVR cleared by reading power
    lamp.pwm(25, 1000, 32768, T0 + 1)
    assert ina_read(dev, 0x04, T0 + 1.01) * 100e-6 == pytest.approx(20.5 / 24, rel=0.02)
    world.inject(B, "lamp_failure", start_s=2)
    assert ina_read(dev, 0x04, T0 + 2.01) == pytest.approx(0, abs=3)
    assert lamp.lux_at_sensor(T0 + 2.01) == 0


def test_ina219_pga_limit_overflow_and_negative_current(world):
    class Load:
        amps = 1.0

        def electrical(self, t):
            return 12.0, self.amps
    load = Load()
    dev = INA219(world, B, 0x41, shunt_ohm=0.1, load=load)
    ina_write(dev, 0x00, 0x019F, T0)                # PGA /1 (+-40 mV), 32 V, 12-bit, continuous
    assert ina_read(dev, 0x01, T0 + 0.01) == 4000   # 100 mV clipped to the range
    load.amps = -0.2
    assert ina_read(dev, 0x01, T0 + 0.02) == pytest.approx(0x10000 - 2000, abs=6)
    ina_write(dev, 0x00, 0x399F, T0 + 1)
    ina_write(dev, 0x05, 0xFFFF, T0 + 1)
    load.amps = 3.0
    assert ina_read(dev, 0x05, T0 + 1) == 0xFFFE     # bit 0 is void
    assert ina_read(dev, 0x02, T0 + 1.01) & 0x1     # OVF: the current does not fit
    with pytest.raises(ValueError):
        INA219(world, B, 0x50)


def test_ina219_conversion_time_triggered_mode_and_reset(world, lamp):
    dev = INA219(world, B, 0x40, load=lamp)
    ina_write(dev, 0x00, 0x3FFF, T0)                # 128 samples each: 2 x 68.10 ms
    assert ina_read(dev, 0x02, T0 + 0.130) & 0x2 == 0
    assert ina_read(dev, 0x02, T0 + 0.137) & 0x2
    ina_write(dev, 0x00, 0x399B, T0 + 1)            # shunt and bus, triggered
    assert ina_read(dev, 0x02, T0 + 1.0005) & 0x2 == 0
    assert ina_read(dev, 0x02, T0 + 1.0011) & 0x2
    ina_read(dev, 0x03, T0 + 1.002)                 # power read clears CNVR
    assert ina_read(dev, 0x02, T0 + 2) & 0x2 == 0   # and no new conversion without a trigger
    ina_write(dev, 0x05, 4096, T0 + 2)
    ina_write(dev, 0x00, 0x8000, T0 + 2)            # reset
    assert ina_read(dev, 0x00, T0 + 2) == 0x399F and ina_read(dev, 0x05, T0 + 2) == 0
    dev.i2c_write(b"\x00", T0 + 3)
    assert dev.i2c_read(2, T0 + 3) == dev.i2c_read(2, T0 + 3) == b"\x39\x9f"   # pointer stays
    world.inject(B, "ina219_silent", start_s=4)
    with pytest.raises(Nack):
        dev.i2c_read(2, T0 + 4)


# -- battery ----------------------------------------------------------------------------------

def test_battery_divider_scripted_and_discharging(world):
    bat = Battery(world, B, 35, chemistry="2xAA-lithium")
    world.set_value(B, "battery_v", 3.0)
    assert bat.adc_uv(35, T0) == pytest.approx(1_500_000, abs=8000)
    world.set_value(B, "battery_v", None)
    full = bat.adc_uv(35, T0)
    assert full == pytest.approx(1_800_000, abs=8000)
    world.set_draw(B, 300.0, T0)                    # 300 mA: 3000 mAh gone in 10 h
    assert bat.voltage(T0 + 5 * 3600) == pytest.approx(open_circuit_v("2xAA-lithium", 0.5))
    assert bat.voltage(T0 + 11 * 3600) == pytest.approx(2.0)
    lipo = Battery(world, "other", 35, chemistry="lipo-1s", r_top_ohm=220e3)
    assert lipo.adc_uv(35, T0) == pytest.approx(4.2 * 100 / 320 * 1e6, abs=8000)
    with pytest.raises(ValueError):
        Battery(world, B, chemistry="lead-acid")


# -- helpers and the factory ------------------------------------------------------------------

def test_uart_tx_timing():
    tx = UartTx(9600)
    end = tx.send(b"abcd", 10.0)
    assert end == pytest.approx(10.0 + 4 * 10 / 9600)
    assert tx.take(10.0 + 2.5 * 10 / 9600) == b"ab"
    tx.send(b"ef", 10.0)                            # queued behind the busy line
    assert tx.take(20.0) == b"cdef"


def test_models_for_each_role_uses_the_board_pins(world):
    lighting = models_for("lighting", B, world)
    assert [(k, w) for k, w, _ in lighting] == [("i2c", (22, 21)), ("i2c", (22, 21)), ("uart", 2),
                                                ("pin", 27), ("pwm", 25)]
    assert {d.address for k, _, d in lighting if k == "i2c"} == {0x23, 0x40}
    parking = models_for("parking", B, world)
    assert [(k, w) for k, w, _ in parking] == [("i2c", (22, 21)), ("pin", 34), ("adc", 35)]
    shaft = models_for("shaft", B, world, "lolin-d32")
    assert [(k, w) for k, w, _ in shaft] == [("uart", 2), ("pin", 5), ("pin", 18),
                                             ("pin", 26), ("adc", 35)]
    with pytest.raises(KeyError):
        models_for("tram", B, world)


def test_wire_attaches_through_the_hardware_layer(world):
    class Hardware:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda where, device: self.calls.append((name, where, type(device).__name__))
    hw = Hardware()
    wire(hw, "lighting", B, world)
    assert hw.calls == [("attach_i2c", (22, 21), "BH1750"), ("attach_i2c", (22, 21), "INA219"),
                        ("attach_uart", 2, "LD2410"), ("attach_pin", 27, "LD2410"),
                        ("attach_pwm", 25, "Lamp")]


def test_lighting_models_couple_lamp_power_and_light(world):
    world.set_value(B, "lux", 2.0)
    devices = {type(d).__name__: d for _, _, d in models_for("lighting", B, world)}
    devices["Lamp"].pwm(25, 1000, 65535, T0)
    light = devices["BH1750"]
    light.i2c_write(b"\x20", T0)
    assert bh_counts(light, T0 + 0.2) == pytest.approx((2 + 8) * 1.2, abs=3)


def test_noise_fault_widens_the_sonar_spread(world, sonar):
    def spread(start):
        widths = [ping(sonar, T0 + start + i * 0.1) for i in range(100)]
        mean = sum(widths) / len(widths)
        return math.sqrt(sum((w - mean) ** 2 for w in widths) / len(widths))
    calm = spread(1)
    world.inject(B, "jsnsr04t_noise", start_s=100, factor=5.0)
    assert spread(100) > 3 * calm
