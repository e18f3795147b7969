"""libvirt secrets through libvirt-python: what operators and nova do with them (Ceph keys,
volume passphrases), persistence with mode 0600, private values, and bad input.

Run (from the repository root; METALVIRTD defaults to target/debug/metalvirtd):
    PYTHONPATH=tests /usr/bin/python3 -m blackbox.test_secrets
"""

import os
import stat
import unittest
import xml.etree.ElementTree as ET

import libvirt

from .harness import (
    DaemonCase, expect_error, open_like_nova,
)

L = libvirt
CEPH_UUID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
VOL_UUID = "0a1b2c3d-0000-4000-8000-00000000a001"
VOLUME = "11111111-2222-3333-4444-555555555555"


def ceph(uuid=CEPH_UUID, name="client.cinder secret", private="yes", ephemeral="no"):
    return (f"<secret ephemeral='{ephemeral}' private='{private}'><uuid>{uuid}</uuid>"
            f"<description>cephx key</description>"
            f"<usage type='ceph'><name>{name}</name></usage></secret>")


def volume(uuid=VOL_UUID, vol=VOLUME, ephemeral="no"):
    return (f"<secret ephemeral='{ephemeral}' private='no'><uuid>{uuid}</uuid>"
            f"<usage type='volume'><volume>{vol}</volume></usage></secret>")


class Secrets(DaemonCase):
    daemon_kwargs = {"ceph_secret": False}

    def test_nova_volume_secret_cycle(self):
        # nova's find_secret: 66 means absent
        e = expect_error(self.conn.secretLookupByUsage, L.VIR_SECRET_USAGE_TYPE_VOLUME, VOLUME)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_SECRET)
        self.assertIn(f"no secret with matching usage '{VOLUME}'", str(e))
        sec = self.conn.secretDefineXML(volume())
        self.assertEqual(sec.UUIDString(), VOL_UUID)
        self.assertEqual(sec.usageType(), L.VIR_SECRET_USAGE_TYPE_VOLUME)
        self.assertEqual(sec.usageID(), VOLUME)
        sec.setValue(b"luks-passphrase")
        again = self.conn.secretLookupByUsage(L.VIR_SECRET_USAGE_TYPE_VOLUME, VOLUME)
        self.assertEqual(again.UUIDString(), VOL_UUID)
        self.assertEqual(again.value(), b"luks-passphrase")
        x = ET.fromstring(sec.XMLDesc(0))
        self.assertEqual((x.get("ephemeral"), x.get("private")), ("no", "no"))
        self.assertEqual(x.find("usage").get("type"), "volume")
        self.assertEqual(x.find("usage/volume").text, VOLUME)
        # delete: undefine; lookups then fail with NO_SECRET
        sec.undefine()
        e = expect_error(self.conn.secretLookupByUUIDString, VOL_UUID)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_SECRET)
        self.assertIn(f"no secret with matching uuid '{VOL_UUID}'", str(e))

    def test_private_values_stay_private_and_on_disk_0600(self):
        sec = self.conn.secretDefineXML(ceph())
        key = b"AQD1bWV0YWx2aXJ0LXByaXZhdGUta2V5LS0tLS0tLQ=="
        sec.setValue(key)
        e = expect_error(sec.value)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INVALID_SECRET)
        self.assertIn("secret is private", str(e))
        d = os.path.join(self.d.config_dir, "secrets")
        self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), 0o700)
        for f in (f"{CEPH_UUID}.xml", f"{CEPH_UUID}.base64"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode), 0o600, f)
        self.assertNotIn(key.decode(), self.d.log())
        self.assertNotIn(key.decode(), sec.XMLDesc(0))
        # survives a restart (value included)
        self.d.restart()
        conn = open_like_nova(self.d.uri)
        self.addCleanup(conn.close)
        s2 = conn.secretLookupByUsage(L.VIR_SECRET_USAGE_TYPE_CEPH, "client.cinder secret")
        self.assertEqual(s2.UUIDString(), CEPH_UUID)
        self.assertIn("<description>cephx key</description>", s2.XMLDesc(0))
        # private cannot be turned off
        e = expect_error(conn.secretDefineXML, ceph(private="no"))
        self.assertEqual(e.get_error_code(), L.VIR_ERR_INTERNAL_ERROR)
        self.assertIn("cannot change private flag on existing secret", str(e))

    def test_listing_and_filters(self):
        self.conn.secretDefineXML(ceph())
        self.conn.secretDefineXML(volume(ephemeral="yes"))
        self.conn.secretDefineXML("<secret><uuid>0a1b2c3d-0000-4000-8000-00000000a002</uuid>"
                                  "<usage type='iscsi'><target>iqn.2024-01.lab:t1</target>"
                                  "</usage></secret>")
        self.assertEqual(self.conn.numOfSecrets(), 3)
        self.assertEqual(len(self.conn.listSecrets()), 3)
        every = {s.UUIDString(): (s.usageType(), s.usageID())
                 for s in self.conn.listAllSecrets(0)}
        self.assertEqual(every[CEPH_UUID], (L.VIR_SECRET_USAGE_TYPE_CEPH, "client.cinder secret"))
        self.assertEqual(every["0a1b2c3d-0000-4000-8000-00000000a002"],
                         (L.VIR_SECRET_USAGE_TYPE_ISCSI, "iqn.2024-01.lab:t1"))
        eph = self.conn.listAllSecrets(L.VIR_CONNECT_LIST_SECRETS_EPHEMERAL)
        self.assertEqual([s.UUIDString() for s in eph], [VOL_UUID])
        priv = self.conn.listAllSecrets(L.VIR_CONNECT_LIST_SECRETS_PRIVATE)
        self.assertEqual([s.UUIDString() for s in priv], [CEPH_UUID])
        self.assertEqual(len(self.conn.listAllSecrets(
            L.VIR_CONNECT_LIST_SECRETS_NO_EPHEMERAL | L.VIR_CONNECT_LIST_SECRETS_NO_PRIVATE)), 1)
        # ephemeral ones never touch the disk
        self.assertFalse(os.path.exists(
            os.path.join(self.d.config_dir, "secrets", f"{VOL_UUID}.xml")))

    def test_bad_input_changes_nothing(self):
        self.conn.secretDefineXML(ceph())
        cases = [
            (ceph(uuid="0a1b2c3d-0000-4000-8000-00000000a003"), L.VIR_ERR_INTERNAL_ERROR,
             f"a secret with UUID {CEPH_UUID} already defined for use with client.cinder secret"),
            (ceph(name="client.other"), L.VIR_ERR_INTERNAL_ERROR,
             f"a secret with UUID {CEPH_UUID} is already defined for use with client.cinder"),
            ("<secret><usage type='ceph'/></secret>", L.VIR_ERR_INTERNAL_ERROR,
             "Ceph usage specified, but name is missing"),
            ("<secret><usage type='nfs'><name>x</name></usage></secret>",
             L.VIR_ERR_CONFIG_UNSUPPORTED, "unknown secret usage type nfs"),
            ("<secret private='maybe'/>", L.VIR_ERR_XML_ERROR, "invalid value of 'private'"),
            ("<domain/>", L.VIR_ERR_XML_ERROR, "expecting root element of 'secret'"),
            ("<secret><uuid>nope</uuid></secret>", L.VIR_ERR_INTERNAL_ERROR, "malformed uuid"),
        ]
        for xml, code, text in cases:
            e = expect_error(self.conn.secretDefineXML, xml)
            self.assertEqual(e.get_error_code(), code, f"{xml}: {e}")
            self.assertIn(text, str(e), xml)
        self.assertEqual(self.conn.numOfSecrets(), 1)
        sec = self.conn.secretLookupByUUIDString(CEPH_UUID)
        # libvirt's client refuses values over 64 KiB itself; exactly 64 KiB is fine
        e = expect_error(sec.setValue, b"x" * 65537)
        self.assertEqual(e.get_error_code(), L.VIR_ERR_RPC)
        sec.setValue(b"x" * 65536)
        e = expect_error(self.conn.secretLookupByUUIDString, "0a1b2c3d-0000-4000-8000-0000000000ff")
        self.assertEqual(e.get_error_code(), L.VIR_ERR_NO_SECRET)

    def test_read_only_connection(self):
        sec = self.conn.secretDefineXML(volume())
        sec.setValue(b"pw")
        ro = libvirt.openReadOnly(self.d.ro_uri)
        self.addCleanup(ro.close)
        s = ro.secretLookupByUUIDString(VOL_UUID)
        self.assertIn(VOLUME, s.XMLDesc(0))
        for call in (s.value, lambda: s.setValue(b"x"), s.undefine,
                     lambda: ro.secretDefineXML(ceph())):
            e = expect_error(call)
            self.assertEqual(e.get_error_code(), L.VIR_ERR_OPERATION_DENIED, e)


if __name__ == "__main__":
    unittest.main(verbosity=2)
