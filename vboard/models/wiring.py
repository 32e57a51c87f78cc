"""What to attach to a board of a given node role, and where.

``models_for(role, board_id, world)`` returns ``(kind, where, device)`` triples, where kind is
``"i2c"`` (where: the bus's ``(scl, sda)`` GPIOs, so I2C(0), I2C(1) and SoftI2C on those pins
all reach the device), ``"uart"`` (where: UART id), ``"pin"``, ``"adc"`` or ``"pwm"`` (where:
GPIO). ``wire(hardware, role, board_id, world)`` makes them and attaches each with the
hardware layer's ``attach_i2c``, ``attach_uart``, ``attach_pin``, ``attach_adc`` and
``attach_pwm``. GPIOs come from the board definition's ``pins[role]`` (boards/definitions.py);
the I2C sensors sit on the i2c_scl/i2c_sda pins (22/21) and the UART devices on UART 2 (the
ESP32's default TX 17 / RX 16, the pins the definitions name for the radar and the sonar).

Per-board choices come from the scenario's board params (``[[boards]]`` entries):
``sonar_mode`` ("pulse", "uart_auto", "uart_trigger"), ``battery`` ("lipo-1s",
"2xAA-lithium"), ``bh1750_address`` (0x23/0x5C), ``ina219_address``, ``shunt_ohm``,
``lamp_w``.

    lighting: BH1750 (I2C 0x23), INA219 (I2C 0x40) on the lamp's supply, LD2410 (uart 2 and
              its OUT on radar_out), Lamp (pwm on pwm_led; its light reaches the BH1750)
    parking:  QMC5883L (I2C 0x0D, DRDY on mag_drdy), Battery (adc on batt_adc, 2xAA lithium)
    shaft:    JSN-SR04T (uart 2, pins sonar_trig/sonar_echo, supply on sensor_power),
              Battery (adc on batt_adc, LiPo)
"""

from __future__ import annotations

from typing import Any

from boards.definitions import Board
from boards.definitions import board as board_definition
from vboard.models.battery import Battery
from vboard.models.bh1750 import BH1750
from vboard.models.ina219 import INA219
from vboard.models.jsnsr04t import JSNSR04T
from vboard.models.lamp import Lamp
from vboard.models.ld2410 import LD2410
from vboard.models.qmc5883l import QMC5883L
from vboard.world import World

UART_ID = 2
ROLES = ("lighting", "parking", "shaft")

Attachment = tuple[str, Any, Any]          # (kind, GPIO / UART id / (scl, sda), device)


def models_for(role: str, board_id: str, world: World,
               board: Board | str = "esp32-devkitc") -> list[Attachment]:
    if role not in ROLES:
        raise KeyError("unknown node role %r; roles: %s" % (role, ", ".join(ROLES)))
    if isinstance(board, str):
        board = board_definition(board)
    pins = board.pins[role]
    params = world.board(board_id).params
    i2c = (pins["i2c_scl"], pins["i2c_sda"]) if "i2c_scl" in pins else None

    if role == "lighting":
        lamp = Lamp(world, board_id, pins["pwm_led"], rated_w=float(params.get("lamp_w", 40.0)))
        light = BH1750(world, board_id, int(params.get("bh1750_address", 0x23)),
                       extra_lux=[lamp.lux_at_sensor])
        power = INA219(world, board_id, int(params.get("ina219_address", 0x40)),
                       shunt_ohm=float(params.get("shunt_ohm", 0.1)), load=lamp)
        radar = LD2410(world, board_id, pins["radar_out"])
        return [("i2c", i2c, light), ("i2c", i2c, power), ("uart", UART_ID, radar),
                ("pin", pins["radar_out"], radar), ("pwm", pins["pwm_led"], lamp)]

    if role == "parking":
        mag = QMC5883L(world, board_id, drdy_gpio=pins["mag_drdy"])
        battery = Battery(world, board_id, pins["batt_adc"],
                          chemistry=params.get("battery", "2xAA-lithium"))
        return [("i2c", i2c, mag), ("pin", pins["mag_drdy"], mag),
                ("adc", pins["batt_adc"], battery)]

    sonar = JSNSR04T(world, board_id, mode=params.get("sonar_mode", "pulse"),
                     trig_gpio=pins["sonar_trig"], echo_gpio=pins["sonar_echo"],
                     power_gpio=pins["sensor_power"])
    battery = Battery(world, board_id, pins["batt_adc"],
                      chemistry=params.get("battery", "lipo-1s"))
    return [("uart", UART_ID, sonar), ("pin", pins["sonar_trig"], sonar),
            ("pin", pins["sonar_echo"], sonar), ("pin", pins["sensor_power"], sonar),
            ("adc", pins["batt_adc"], battery)]


def attach(hardware: Any, attachments: list[Attachment]) -> None:
    """Hand each device to the hardware layer's attach_<kind>(where, device)."""
    for kind, where, device in attachments:
        getattr(hardware, "attach_" + kind)(where, device)


def wire(hardware: Any, role: str, board_id: str, world: World,
         board: Board | str = "esp32-devkitc") -> list[Attachment]:
    """Make the devices of ``role`` for ``board_id`` and attach them; returns them too."""
    attachments = models_for(role, board_id, world, board)
    attach(hardware, attachments)
    return attachments
