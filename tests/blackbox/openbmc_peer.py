"""An OpenBMC's D-Bus objects, as phosphor-state-manager and phosphor-settingsd document
them (no real one is packaged for Debian), served on a private bus (dbus-daemon) for the
openbmc BMC driver's tests:

- xyz.openbmc_project.State.Host at /xyz/openbmc_project/state/host0:
  RequestedHostTransition (rw; ...Host.Transition.On|Off|Reboot|GracefulWarmReboot|
  ForceWarmReboot), CurrentHostState (...Host.HostState.Off|Running|TransitioningToRunning|
  TransitioningToOff|Quiesced|...);
- xyz.openbmc_project.State.Chassis at /xyz/openbmc_project/state/chassis0:
  RequestedPowerTransition (rw; ...Chassis.Transition.On|Off|PowerCycle), CurrentPowerState;
- xyz.openbmc_project.Settings at /xyz/openbmc_project/control/host0/boot
  (Control.Boot.Source BootSource, Control.Boot.Mode BootMode, Control.Boot.Type BootType) and
  .../boot/one_time (Object.Enable Enabled).

A transition request answers at once; the current state follows `--delay` seconds later,
announced by org.freedesktop.DBus.Properties.PropertiesChanged, as the real daemons do once
systemd's targets have run. Unknown enumeration values are refused with
org.freedesktop.DBus.Error.InvalidArgs.

Test hooks, on interface io.metalvirt.Test at /io/metalvirt/test (service ...State.Host):
SetPower(s "On"|"Off"|"Quiesced") changes the server out of band (a power button, a crash),
Requests() -> as lists every transition requested so far.

Run: python3 -m blackbox.openbmc_peer --address unix:path=/tmp/bus [--delay 0.3]; it prints
"ready" once its names are on the bus.
"""

import argparse
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

PROPS = "org.freedesktop.DBus.Properties"
HOST = "xyz.openbmc_project.State.Host"
CHASSIS = "xyz.openbmc_project.State.Chassis"
SOURCE = "xyz.openbmc_project.Control.Boot.Source"
MODE = "xyz.openbmc_project.Control.Boot.Mode"
TYPE = "xyz.openbmc_project.Control.Boot.Type"
ENABLE = "xyz.openbmc_project.Object.Enable"
TEST = "io.metalvirt.Test"

ENUMS = {
    (HOST, "RequestedHostTransition"): (f"{HOST}.Transition.",
                                        {"On", "Off", "Reboot", "GracefulWarmReboot",
                                         "ForceWarmReboot"}),
    (CHASSIS, "RequestedPowerTransition"): (f"{CHASSIS}.Transition.",
                                            {"On", "Off", "PowerCycle"}),
    (SOURCE, "BootSource"): (f"{SOURCE}.Sources.",
                             {"Disk", "ExternalMedia", "Network", "Default", "RemovableMedia",
                              "HTTP"}),
    (MODE, "BootMode"): (f"{MODE}.Modes.", {"Regular", "Safe", "Setup"}),
    (TYPE, "BootType"): (f"{TYPE}.Types.", {"Legacy", "EFI"}),
}
WRITABLE = set(ENUMS) | {(ENABLE, "Enabled")}


class InvalidArgs(dbus.DBusException):
    _dbus_error_name = "org.freedesktop.DBus.Error.InvalidArgs"


class PropertyObject(dbus.service.Object):
    """An object whose interfaces are property bags, with Get/Set/GetAll and
    PropertiesChanged."""

    def __init__(self, bus, path, props, on_set=None):
        super().__init__(bus, path)
        self.props = props
        self.on_set = on_set

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        try:
            return self.props[iface][name]
        except KeyError:
            raise InvalidArgs(f"no property {iface}.{name}")

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        return dbus.Dictionary(self.props.get(iface, {}), signature="sv")

    @dbus.service.method(PROPS, in_signature="ssv", out_signature="")
    def Set(self, iface, name, value):
        if (iface, name) not in WRITABLE:
            raise dbus.DBusException(f"property {iface}.{name} is read-only",
                                     name="org.freedesktop.DBus.Error.PropertyReadOnly")
        if (iface, name) in ENUMS:
            prefix, allowed = ENUMS[(iface, name)]
            if not (isinstance(value, str) and value.startswith(prefix)
                    and value[len(prefix):] in allowed):
                raise InvalidArgs(f"'{value}' is not a value of {iface}.{name}")
            value = dbus.String(value)
        else:
            value = dbus.Boolean(value)
        self.change(iface, name, value)
        if self.on_set:
            self.on_set(iface, name, str(value))

    def change(self, iface, name, value):
        self.props[iface][name] = value
        self.PropertiesChanged(iface, {name: value}, [])

    @dbus.service.signal(PROPS, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass


class Bmc:
    def __init__(self, bus, delay):
        self.delay = delay
        self.requests = []
        self.host = PropertyObject(bus, "/xyz/openbmc_project/state/host0", {
            HOST: {"RequestedHostTransition": dbus.String(f"{HOST}.Transition.Off"),
                   "CurrentHostState": dbus.String(f"{HOST}.HostState.Off")}},
            self.requested)
        self.chassis = PropertyObject(bus, "/xyz/openbmc_project/state/chassis0", {
            CHASSIS: {"RequestedPowerTransition": dbus.String(f"{CHASSIS}.Transition.Off"),
                      "CurrentPowerState": dbus.String(f"{CHASSIS}.PowerState.Off")}},
            self.requested)
        self.boot = PropertyObject(bus, "/xyz/openbmc_project/control/host0/boot", {
            SOURCE: {"BootSource": dbus.String(f"{SOURCE}.Sources.Default")},
            MODE: {"BootMode": dbus.String(f"{MODE}.Modes.Regular")},
            TYPE: {"BootType": dbus.String(f"{TYPE}.Types.EFI")}})
        self.one_time = PropertyObject(bus, "/xyz/openbmc_project/control/host0/boot/one_time",
                                       {ENABLE: {"Enabled": dbus.Boolean(False)}})

    def power(self, state):
        """Sets host and chassis to `state` (On, Off, Quiesced), announcing each change."""
        chassis = "Off" if state == "Off" else "On"
        host = {"On": "Running", "Off": "Off", "Quiesced": "Quiesced"}[state]
        self.chassis.change(CHASSIS, "CurrentPowerState",
                            dbus.String(f"{CHASSIS}.PowerState.{chassis}"))
        self.host.change(HOST, "CurrentHostState", dbus.String(f"{HOST}.HostState.{host}"))

    def later(self, fn):
        GLib.timeout_add(int(self.delay * 1000), lambda: fn() and False)

    def requested(self, iface, name, value):
        what = value.rsplit(".", 1)[1]
        self.requests.append(value)
        running = str(self.host.props[HOST]["CurrentHostState"]).endswith(".Running")
        if what == "On" and running:
            return
        if what == "On":
            self.host.change(HOST, "CurrentHostState",
                             dbus.String(f"{HOST}.HostState.TransitioningToRunning"))
            self.later(lambda: self.power("On"))
        elif what == "Off" and iface == CHASSIS:
            self.later(lambda: self.power("Off"))
        elif what == "Off":
            self.host.change(HOST, "CurrentHostState",
                             dbus.String(f"{HOST}.HostState.TransitioningToOff"))
            self.later(lambda: self.power("Off"))
        elif what in ("Reboot", "GracefulWarmReboot", "ForceWarmReboot", "PowerCycle"):
            self.host.change(HOST, "CurrentHostState",
                             dbus.String(f"{HOST}.HostState.TransitioningToRunning"))
            self.later(lambda: self.power("On"))


class Test(dbus.service.Object):
    def __init__(self, bus, bmc):
        super().__init__(bus, "/io/metalvirt/test")
        self.bmc = bmc

    @dbus.service.method(TEST, in_signature="s", out_signature="")
    def SetPower(self, state):
        self.bmc.power(str(state))

    @dbus.service.method(TEST, in_signature="", out_signature="as")
    def Requests(self):
        return dbus.Array(self.bmc.requests, signature="s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--delay", type=float, default=0.3)
    a = ap.parse_args()
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(a.address)
    names = [dbus.service.BusName(n, bus) for n in (HOST, CHASSIS, "xyz.openbmc_project.Settings")]
    bmc = Bmc(bus, a.delay)
    test = Test(bus, bmc)
    print("ready", flush=True)
    GLib.MainLoop().run()
    del names, test


if __name__ == "__main__":
    sys.exit(main())
