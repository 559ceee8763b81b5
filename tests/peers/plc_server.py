"""A Modbus TCP PLC stand-in for the tests: a real pymodbus server on loopback that logs
every write it receives (monotonic time, function, address, values) to a JSON-lines file.

usage: python plc_server.py PORT LOGFILE
"""
import asyncio
import json
import sys
import time

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartAsyncTcpServer

WRITES = {5: "write_coil", 15: "write_coils", 6: "write_register", 16: "write_registers"}


def main() -> None:
    port, log_path = int(sys.argv[1]), sys.argv[2]
    log = open(log_path, "a", buffering=1)

    def trace(sending: bool, pdu):
        if not sending and pdu.function_code in WRITES:
            values = [int(v) for v in (pdu.bits or [])] or list(pdu.registers or [])
            log.write(json.dumps({"t": time.monotonic(), "fn": WRITES[pdu.function_code],
                                  "address": pdu.address, "values": values}) + "\n")
        return pdu

    device = ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [False] * 64),
                                 hr=ModbusSequentialDataBlock(1, [0] * 256))
    context = ModbusServerContext(devices=device, single=True)
    asyncio.run(StartAsyncTcpServer(context, address=("127.0.0.1", port), trace_pdu=trace))


if __name__ == "__main__":
    main()
