"""The deployment files in systemd/ agree with each other and with the code they start.

`systemd-analyze verify` and `udevadm verify` need a systemd host; these checks run anywhere: the unit's
hardening keys, its ExecStart parsed by our own CLI parser, sysusers/tmpfiles/modules-load consistency, and
the udev rules parsed and evaluated for a few devices by a small interpreter of the rule syntax (udev(7)).
"""

from __future__ import annotations

import configparser
import fnmatch
import re
import shlex
from collections import defaultdict
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.commands import run as run_command
from gateway.config import GatewaySection, load_config
from gateway.daemon import SHUTDOWN_GRACE

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "hcrm-gateway.service"

# Directives of systemd.unit(5), .service(5), .exec(5), .kill(5), .resource-control(5) this unit may use; a
# misspelt key is only a warning to systemd, and the hardening it meant silently does not happen.
KNOWN_KEYS = {
    "Unit": {"Description", "Documentation", "Wants", "Requires", "After", "Before",
             "StartLimitIntervalSec", "StartLimitBurst", "ConditionPathExists"},
    "Service": {
        "Type", "NotifyAccess", "WatchdogSec", "ExecStart", "ExecStartPre", "Restart", "RestartSec",
        "TimeoutStartSec", "TimeoutStopSec", "KillMode", "StandardOutput", "StandardError",
        "SyslogIdentifier", "Environment", "User", "Group", "SupplementaryGroups", "UMask", "ProtectSystem",
        "ProtectHome", "PrivateTmp", "PrivateMounts", "StateDirectory", "StateDirectoryMode",
        "ConfigurationDirectory", "ConfigurationDirectoryMode", "ReadWritePaths", "WorkingDirectory",
        "DevicePolicy", "DeviceAllow", "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities",
        "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
        "ProtectClock", "ProtectHostname", "ProtectProc", "RestrictNamespaces", "RestrictRealtime",
        "RestrictSUIDSGID", "LockPersonality", "RemoveIPC", "RestrictAddressFamilies",
        "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
    },
    "Install": {"WantedBy", "Alias"},
}


def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Every (key, value) per section in file order; repeated keys (DeviceAllow=) all kept."""
    sections: dict[str, list[tuple[str, str]]] = defaultdict(list)
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: continuation lines are not used here"
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: bad section header {line!r}"
            current = line[1:-1]
            continue
        assert current is not None, f"{path.name}:{number}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                       comment_prefixes=("#", ";"))
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(UNIT.read_text())
    return parser


@pytest.fixture(scope="module")
def service_values() -> dict[str, list[str]]:
    values: dict[str, list[str]] = defaultdict(list)
    for key, value in unit_entries(UNIT)["Service"]:
        values[key].append(value)
    return values


def test_sections_and_keys_are_known():
    entries = unit_entries(UNIT)
    assert set(entries) == {"Unit", "Service", "Install"}
    for section, pairs in entries.items():
        unknown = {k for k, _ in pairs} - KNOWN_KEYS[section]
        assert not unknown, f"[{section}] unknown or misspelt keys: {sorted(unknown)}"


def test_hardening(unit):
    s = unit["Service"]
    assert s["User"] == "hcrm-gateway" and s["Group"] == "hcrm-gateway"
    assert set(s["SupplementaryGroups"].split()) == {"dialout", "plugdev"}
    assert s["ProtectSystem"] == "strict"
    assert s["ProtectHome"] == "yes"
    assert s["PrivateTmp"] == "yes"
    assert s["NoNewPrivileges"] == "yes"
    assert s["CapabilityBoundingSet"] == ""
    assert s["ReadWritePaths"] == "/var/lib/hcrm-gateway"
    assert s["StateDirectory"] == "hcrm-gateway"
    assert s["ConfigurationDirectory"] == "hcrm-gateway"
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert s.get("PrivateDevices", "no") == "no", "PrivateDevices= hides /dev/ttyUSB* and /dev/bus/usb"
    assert s["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_system_call_filter_starts_from_system_service(service_values):
    filters = service_values["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert all(f.startswith("~") for f in filters[1:]), "later lines may only take system calls away"


def test_devices_allowed_are_serial_ports_and_usb_nodes(service_values):
    assert service_values["DevicePolicy"] == ["closed"]
    allowed = {tuple(v.split()) for v in service_values["DeviceAllow"]}
    assert allowed == {("char-ttyUSB", "rw"), ("char-ttyACM", "rw"), ("char-usb_device", "rw")}


def test_stop_timeout_covers_the_daemon_shutdown(unit):
    stop = float(unit["Service"]["TimeoutStopSec"])
    assert stop == 10
    assert SHUTDOWN_GRACE + 1 <= stop, "systemd would SIGKILL the daemon during its own shutdown"


def test_notify_type_comes_with_a_watchdog(unit):
    s = unit["Service"]
    assert s["Type"] == "notify"
    assert s["NotifyAccess"] == "main"
    watchdog = int(s["WatchdogSec"])
    # gateway.sdnotify pings every WatchdogSec/2: keep that well above scheduler hiccups on a busy box.
    assert 10 <= watchdog <= 300


def test_exec_start_is_a_real_command_of_our_cli(unit):
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0] == "/usr/bin/hcrm-gateway"
    args = build_parser().parse_args(argv[1:])  # SystemExit (a test failure) on an unknown command or flag
    assert args.command == "run"
    assert args.func is run_command.run
    config = Path(args.config)
    assert config.parent == Path("/etc") / unit["Service"]["ConfigurationDirectory"]


def test_state_directory_is_the_configs_default_data_dir(unit):
    assert GatewaySection().data_dir == Path("/var/lib") / unit["Service"]["StateDirectory"]


def test_example_hardware_config_fits_the_unit(unit):
    """The production example names the unit's state directory and logs JSON for journald."""
    config = load_config(Path(__file__).resolve().parents[2] / "examples" / "hardware.yaml")
    assert config.gateway.data_dir == Path("/var/lib") / unit["Service"]["StateDirectory"]
    assert config.logging.format == "json"


# --- sysusers.d, tmpfiles.d, modules-load.d ---------------------------------------------------------------

def sysusers_lines() -> list[list[str]]:
    lines = (SYSTEMD / "hcrm-gateway.sysusers").read_text().splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_sysusers_creates_the_units_user_with_its_groups(unit):
    lines = sysusers_lines()
    assert all(fields[0] in {"u", "g", "m", "r"} for fields in lines)
    (user,) = [f for f in lines if f[0] == "u"]
    assert user[1] == unit["Service"]["User"]
    assert user[4] == "/var/lib/" + unit["Service"]["StateDirectory"]
    assert user[5] in {"/usr/sbin/nologin", "/sbin/nologin"}
    members = {f[2] for f in lines if f[0] == "m" and f[1] == user[1]}
    assert members == set(unit["Service"]["SupplementaryGroups"].split())


def test_tmpfiles_entries_are_well_formed_and_owned_by_known_users(unit):
    known_users = {"root", unit["Service"]["User"]}
    seen = {}
    for line in (SYSTEMD / "hcrm-gateway.tmpfiles").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        kind, path, mode, user, group, age = line.split()
        assert kind in {"d", "z", "Z", "f"}, line
        assert path.startswith("/"), line
        assert re.fullmatch(r"0[0-7]{3}", mode), line
        assert user in known_users and group in known_users, line
        assert age == "-" or re.fullmatch(r"\d+[smhdw]", age), line
        seen[path] = (mode, user, group)
    state = "/var/lib/" + unit["Service"]["StateDirectory"]
    assert seen[state] == (unit["Service"]["StateDirectoryMode"], "hcrm-gateway", "hcrm-gateway")
    config_dir = "/etc/" + unit["Service"]["ConfigurationDirectory"]
    # systemd leaves an existing configuration directory alone but warns when its mode differs.
    assert seen[config_dir][0] == unit["Service"]["ConfigurationDirectoryMode"]
    mode, _user, group = seen[config_dir + "/gateway.yaml"]
    assert mode == "0640" and group == "hcrm-gateway", "the config holds SIM PINs and token hashes"


def test_modules_loaded_at_boot_provide_the_allowed_device_groups(service_values):
    modules = {line.strip() for line in (SYSTEMD / "hcrm-gateway.modules").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    groups = {v.split()[0] for v in service_values["DeviceAllow"]}
    # /proc/devices: usbserial registers "ttyUSB" (major 188), cdc_acm "ttyACM" (166); usb_device (189) is
    # part of the USB core.
    provider = {"char-ttyUSB": "usbserial", "char-ttyACM": "cdc_acm", "char-usb_device": None}
    assert {provider[g] for g in groups} - {None} == modules


# --- udev rules ---------------------------------------------------------------------------------------------

RULES = SYSTEMD / "99-hcrm-gateway.rules"
_ITEM = re.compile(r'\s*([A-Z_]+)(?:\{([^}]+)\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)')
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "DRIVERS", "ATTR", "ATTRS", "ENV", "DEVPATH"}
ASSIGN_KEYS = {"GROUP", "MODE", "OWNER", "SYMLINK", "ENV", "TAG", "GOTO", "LABEL", "ATTR"}


def parse_rules(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    """Each rule line as [(key, attribute, operator, value)]; AssertionError names a malformed line."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        items, pos = [], 0
        while pos < len(line):
            m = _ITEM.match(line, pos)
            assert m, f"{RULES.name}:{number}: cannot parse at column {pos + 1}: {line[pos:pos + 40]!r}"
            items.append(m.groups())
            pos = m.end()
        for key, _attr, op, _value in items:
            if op in ("==", "!="):
                assert key in MATCH_KEYS, f"{RULES.name}:{number}: {key} cannot be matched"
            else:
                assert key in ASSIGN_KEYS, f"{RULES.name}:{number}: {key} cannot be assigned"
        rules.append(items)
    return rules


def _matches(pattern: str, value: str | None) -> bool:
    """udev(7) patterns: shell globs, with '|' separating alternatives."""
    return any(fnmatch.fnmatchcase(value or "", alt) for alt in pattern.split("|"))


def apply_rules(rules, device: dict) -> dict:
    """Run the rules over one device event like udevd would: returns the assignments that took effect.

    ``device``: action, subsystem, devtype, attr (its own sysfs attributes), parents (list of
    (subsystem, attrs) walking up), env (properties set by earlier rule files)."""
    env = dict(device.get("env", {}))
    env.setdefault("DEVTYPE", device.get("devtype", ""))
    result = {"GROUP": None, "MODE": None, "SYMLINK": [], "env": env}
    labels = {items[0][3]: i for i, items in enumerate(rules) if items[0][0] == "LABEL"}
    i = 0
    while i < len(rules):
        items = rules[i]
        i += 1
        matched = True
        for key, attr, op, value in items:
            if op not in ("==", "!="):
                continue
            if key == "ACTION":
                ok = _matches(value, device["action"])
            elif key == "SUBSYSTEM":
                ok = _matches(value, device["subsystem"])
            elif key == "SUBSYSTEMS":
                ok = any(_matches(value, sub) for sub, _ in device.get("parents", []))
            elif key == "ATTR":
                ok = _matches(value, device.get("attr", {}).get(attr))
            elif key == "ATTRS":
                ok = any(_matches(value, attrs.get(attr)) for _, attrs in device.get("parents", [])
                         if attr in attrs)
            elif key == "ENV":
                ok = _matches(value, env.get(attr, ""))
            else:
                raise AssertionError(f"the test interpreter does not know {key}")
            if ok != (op == "=="):
                matched = False
                break
        if not matched:
            continue
        for key, attr, op, value in items:
            if op in ("==", "!=") or key == "LABEL":
                continue
            value = re.sub(r"\$env\{([^}]+)\}", lambda m: env.get(m.group(1), ""), value)
            value = re.sub(r"\$attr\{([^}]+)\}", lambda m: device.get("attr", {}).get(m.group(1), ""), value)
            if key == "GOTO":
                assert value in labels, f"GOTO={value!r} has no LABEL"
                i = labels[value]
                break
            if key == "ENV":
                env[attr] = value
            elif key == "SYMLINK":
                result["SYMLINK"].append(value)
            else:
                result[key] = value
    return result


USB_SERIAL_ENV = {"ID_SERIAL_SHORT": "861234567890123", "ID_USB_INTERFACE_NUM": "02",
                  "ID_PATH_TAG": "pci-0000_00_14_0-usb-0_2_1_2"}


def tty_port(vendor: str, product: str, env: dict | None = None, action: str = "add") -> dict:
    return {"action": action, "subsystem": "tty", "attr": {},
            "parents": [("usb-serial", {}), ("usb", {"bInterfaceNumber": "02"}),
                        ("usb", {"idVendor": vendor, "idProduct": product})],
            "env": USB_SERIAL_ENV if env is None else env}


def usb_device(vendor: str, product: str, serial: str | None = None) -> dict:
    attr = {"idVendor": vendor, "idProduct": product} | ({"serial": serial} if serial else {})
    return {"action": "add", "subsystem": "usb", "devtype": "usb_device", "attr": attr,
            "parents": [("usb", attr)], "env": {}}


@pytest.fixture(scope="module")
def rules():
    return parse_rules(RULES.read_text())


def test_every_goto_has_its_label(rules):
    labels = [items[0][3] for items in rules if items[0][0] == "LABEL"]
    assert len(labels) == len(set(labels))
    gotos = {value for items in rules for key, _a, _op, value in items if key == "GOTO"}
    assert gotos <= set(labels)


@pytest.mark.parametrize("vendor, product", [("12d1", "1506"), ("19d2", "0117"), ("2c7c", "0125"),
                                             ("1e0e", "9001")])
def test_gsm_modem_ports_get_a_stable_name_dialout_and_modemmanager_ignores_them(rules, vendor, product):
    got = apply_rules(rules, tty_port(vendor, product))
    assert got["GROUP"] == "dialout" and got["MODE"] == "0660"
    assert got["env"]["ID_MM_DEVICE_IGNORE"] == "1"
    assert got["SYMLINK"] == ["hcrm/gsm-861234567890123-if02"]
    whole = apply_rules(rules, usb_device(vendor, product))
    assert whole["env"]["ID_MM_DEVICE_IGNORE"] == "1"


@pytest.mark.parametrize("vendor", ["0baf", "0572", "0803"])
def test_voice_modem_ports(rules, vendor):
    got = apply_rules(rules, tty_port(vendor, "1234"))
    assert got["GROUP"] == "dialout" and got["env"]["ID_MM_DEVICE_IGNORE"] == "1"
    assert got["SYMLINK"] == ["hcrm/voicemodem-861234567890123-if02"]


def test_a_port_without_serial_number_is_named_by_its_usb_path(rules):
    got = apply_rules(rules, tty_port("2c7c", "0125", env={"ID_PATH_TAG": "pci-0000_00_14_0-usb-0_3_1_2"}))
    assert got["SYMLINK"] == ["hcrm/gsm-path-pci-0000_00_14_0-usb-0_3_1_2"]


def test_voice_box_goes_to_plugdev(rules):
    got = apply_rules(rules, usb_device("1d50", "6120", serial="HCRM-0001"))
    assert got["GROUP"] == "plugdev" and got["MODE"] == "0660"
    assert got["SYMLINK"] == ["hcrm/box-HCRM-0001"]
    assert got["env"]["ID_MM_DEVICE_IGNORE"] == "1"
    other = apply_rules(rules, usb_device("1d50", "6089"))  # same vendor id, another open-hardware project
    assert other["GROUP"] is None and "ID_MM_DEVICE_IGNORE" not in other["env"]


def test_unrelated_devices_and_removals_are_left_alone(rules):
    ftdi = apply_rules(rules, tty_port("0403", "6001"))  # generic USB-UART adapter
    assert ftdi["GROUP"] is None and ftdi["SYMLINK"] == [] and "ID_MM_DEVICE_IGNORE" not in ftdi["env"]
    removed = apply_rules(rules, tty_port("2c7c", "0125", action="remove"))
    assert removed["SYMLINK"] == [] and removed["GROUP"] is None


def test_rule_parser_rejects_malformed_lines():
    with pytest.raises(AssertionError, match="cannot parse"):
        parse_rules('SUBSYSTEM=="tty", GROUP=dialout\n')
    with pytest.raises(AssertionError, match="cannot be matched"):
        parse_rules('GROUP=="dialout"\n')
