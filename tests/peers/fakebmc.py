"""IPMI 2.0 BMCs served by pyghmi, one per UDP port given on the command line.

Power and the raw boot-flags parameter live in memory, so `bootparam get 5` reads back
the persistent/EFI bits a client set (pyghmi's stock Bmc drops them). A power cycle comes
back on after one second, like a real chassis.
"""
import sys
import threading

import pyghmi.ipmi.bmc as bmc


class FakeBmc(bmc.Bmc):
    def __init__(self, port, user, password):
        super().__init__({user: password}, port=port, address="127.0.0.1")
        self.power = "off"
        self.bootdev = "default"
        self.raw_boot5 = None

    def get_power_state(self):
        return self.power

    def power_on(self):
        self.power = "on"

    def power_off(self):
        self.power = "off"

    def power_shutdown(self):
        self.power = "off"

    def power_reset(self):
        pass

    def power_cycle(self):
        self.power = "off"
        threading.Timer(1.0, lambda: setattr(self, "power", "on")).start()

    def cold_reset(self):
        pass

    def get_boot_device(self):
        return self.bootdev

    def set_boot_device(self, bootdevice):
        self.bootdev = bootdevice

    def set_system_boot_options(self, request, session):
        if request["data"][0] & 0x7F == 5:
            self.raw_boot5 = list(request["data"][1:6])
        return super().set_system_boot_options(request, session)

    def get_system_boot_options(self, request, session):
        if request["data"][0] & 0x7F == 5 and self.raw_boot5:
            return session.send_ipmi_response(data=[1, 5] + self.raw_boot5)
        return super().get_system_boot_options(request, session)


if __name__ == "__main__":
    # argv: USER PASSWORD_FILE PORT...
    user, pwfile, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(pwfile) as f:
        password = f.read().strip()
    bmcs = [FakeBmc(int(p), user, password) for p in ports]
    print("listening", flush=True)
    bmc.Bmc.listen(timeout=30)
