"""Config for the plant's I/O: one model per actuator type (a gpio actuator has no
`topic`, an mqtt one no `lines`), and where the encoder and photo-eye signals come from."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Tuple, Union

from pydantic import Field

from edge.config.base import Bool, Float, Int, Section, Str


class _Peer(Section):
    """A network peer: every request has a deadline."""

    host: Str = "127.0.0.1"
    port: Int = Field(0, ge=0, le=65535, description="0: the protocol's default")
    timeout_s: Float = Field(0.5, gt=0, le=30)


class SimulatedActuatorConfig(Section):
    type: Literal["simulated"] = "simulated"

    def output_count(self) -> Optional[int]:
        return None


class GpioActuatorConfig(Section):
    type: Literal["gpio"]
    lines: Tuple[Int, ...] = Field(min_length=1, description="output n drives lines[n] (BOARD pins with Jetson.GPIO)")
    chip: Str = Field("/dev/gpiochip0", description="libgpiod chip (off-Jetson)")
    library: Literal["auto", "jetson", "gpiod"] = "auto"
    active_low: Bool = False

    def output_count(self) -> Optional[int]:
        return len(self.lines)


class ModbusActuatorConfig(_Peer):
    type: Literal["modbus"]
    retries: Int = Field(1, ge=0, le=10)
    unit_id: Int = Field(1, ge=0, le=247)
    coil_base: Int = Field(0, ge=0, le=65535, description="output n -> coil coil_base + n; nothing outside is written")
    coil_count: Int = Field(8, ge=1, le=2000)
    register_base: Int = Field(100, ge=0, le=65532, description="heartbeat, status bits, last item id, last bin")
    heartbeat_s: Float = Field(0.5, ge=0.05, le=60, description="heartbeat register period (the PLC's watchdog "
                                                                   "should allow about 3 of them)")

    def output_count(self) -> Optional[int]:
        return self.coil_count


class MqttActuatorConfig(_Peer):
    type: Literal["mqtt"]
    topic: Str = "scrapsort/line1"
    qos: Literal[0, 1, 2] = 1
    username: Str = ""
    password_file: Str = Field("", description="the secret lives in its own file (mode 0600), never here")
    tls: Bool = False
    ca_file: Str = ""
    commands: Bool = Field(False, description="also publish ejection commands for a downstream controller")
    command_valid_ms: Float = Field(50.0, gt=0, le=60000, description="an eject command's validity (valid_until); "
                                                                      "never delivered later (v5 expiry, no re-send)")
    command_ack_ms: Float = Field(250.0, gt=0, le=10000, description="no broker acknowledgement within this: the "
                                                                     "link is presumed dead, the session dropped")
    keepalive_s: Int = Field(5, ge=1, le=600)

    def output_count(self) -> Optional[int]:
        return None


ActuatorConfig = Annotated[
    Union[SimulatedActuatorConfig, GpioActuatorConfig, ModbusActuatorConfig, MqttActuatorConfig],
    Field(discriminator="type")]
ACTUATOR_TYPES = ("simulated", "gpio", "modbus", "mqtt")


class GpioInputConfig(Section):
    """A digital input line: a photo-eye beam or a single-channel encoder pulse train."""

    type: Literal["gpio"]
    line: Int = Field(ge=0, description="line offset on the chip (BOARD pin with Jetson.GPIO)")
    chip: Str = "/dev/gpiochip0"
    library: Literal["auto", "jetson", "gpiod"] = "auto"
    active_low: Bool = False


class ModbusEncoderConfig(_Peer):
    """A PLC's high-speed counter read as a 32-bit value from two holding registers."""

    type: Literal["modbus"]
    unit_id: Int = Field(1, ge=0, le=247)
    address: Int = Field(0, ge=0, le=65534, description="first of two holding registers (high word first)")
    poll_s: Float = Field(0.005, gt=0, le=1, description="how often the count is read")


EncoderInput = Annotated[Union[GpioInputConfig, ModbusEncoderConfig], Field(discriminator="type")]


class InputsConfig(Section):
    """Plant signals the line reads. Left empty on the simulated conveyor, which provides both."""

    encoder: Optional[EncoderInput] = None
    photo_eye: Optional[GpioInputConfig] = None
