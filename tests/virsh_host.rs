//! Black-box tests: what virsh users reach besides domains — networks, storage pools, node
//! devices, host interfaces, network filters, the CPU model commands and guest time — on the
//! simulated lab, with the real `virsh`.

mod common;

use common::Daemon;

/// The rows of a virsh table (after the header and its dashes).
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip_while(|l| !l.trim_start().starts_with('-'))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn networks_are_the_nodes_bridges_read_only() {
    let d = Daemon::start("");
    let list = rows(&d.virsh_ok(&["net-list", "--all"]));
    assert_eq!(list, [["br-int", "active", "yes", "yes"]], "{list:?}");
    assert!(rows(&d.virsh_ok(&["net-list", "--inactive"])).is_empty());

    let xml = d.virsh_ok(&["net-dumpxml", "br-int"]);
    assert!(xml.contains("<bridge name='br-int'/>"), "{xml}");
    assert!(xml.contains("<virtualport type='openvswitch'/>"), "{xml}");
    assert!(xml.contains("<forward mode='bridge'/>"), "{xml}");
    let uuid = d.virsh_ok(&["net-uuid", "br-int"]).trim().to_string();
    assert_eq!(
        d.virsh_ok(&["net-name", &uuid]).trim(),
        "br-int",
        "lookup by uuid"
    );
    let info = d.virsh_ok(&["net-info", "br-int"]);
    assert!(
        info.contains("Bridge:         br-int") && info.contains("Persistent:     yes"),
        "{info}"
    );

    let e = d.virsh_err(&["net-info", "br-ex"]);
    assert!(
        e.contains("Network not found: no network with matching name 'br-ex'"),
        "{e}"
    );
    let f = d.file(
        "net.xml",
        "<network><name>n1</name><bridge name='virbr9'/></network>",
    );
    let e = d.virsh_err(&["net-define", f.to_str().unwrap()]);
    assert!(
        e.contains("this function is not supported by the connection driver: virNetworkDefineXML")
            && e.contains("Neutron/OVN"),
        "{e}"
    );
    let e = d.virsh_err(&["net-destroy", "br-int"]);
    assert!(e.contains("virNetworkDestroy"), "{e}");
    // Read-only connections see them too, and may not change them.
    let out = common::virsh(&d.ro_uri(), &["net-list", "--all"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("br-int"));
}

#[test]
fn storage_interfaces_and_filters_are_empty_and_lookups_miss() {
    let d = Daemon::start("");
    for cmd in [
        &["pool-list", "--all"][..],
        &["pool-list", "--all", "--details"],
        &["iface-list", "--all"],
        &["nwfilter-list"],
        &["nwfilter-binding-list"],
    ] {
        let out = d.virsh_ok(cmd);
        assert!(rows(&out).is_empty(), "{cmd:?}: {out}");
    }
    let e = d.virsh_err(&["pool-info", "default"]);
    assert!(
        e.contains("Storage pool not found: no storage pool with matching name 'default'"),
        "{e}"
    );
    let e = d.virsh_err(&["vol-info", "/var/lib/libvirt/images/x.qcow2"]);
    assert!(e.contains("Storage volume not found"), "{e}");
    let e = d.virsh_err(&["iface-dumpxml", "eth0"]);
    assert!(e.contains("Interface not found"), "{e}");
    let e = d.virsh_err(&["nwfilter-dumpxml", "clean-traffic"]);
    assert!(
        e.contains("Network filter not found: no nwfilter with matching name 'clean-traffic'"),
        "{e}"
    );
    let f = d.file(
        "pool.xml",
        "<pool type='dir'><name>p</name><target><path>/tmp</path></target></pool>",
    );
    let e = d.virsh_err(&["pool-define", f.to_str().unwrap()]);
    assert!(
        e.contains("virStoragePoolDefineXML") && e.contains("Cinder"),
        "{e}"
    );
}

#[test]
fn node_devices_are_the_computer_and_the_nic_functions() {
    let d = Daemon::start("[sim]\nnodes = 2\n");
    let out = d.virsh_ok(&["nodedev-list"]);
    let names: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    // The computer and 16 functions on each of the two nodes.
    assert_eq!(names.len(), 1 + 2 * 16, "{out}");
    assert!(names.contains(&"computer"));
    assert!(names.contains(&"pci_0000_03_00_0") && names.contains(&"pci_0001_03_01_7"));
    let pci = d.virsh_ok(&["nodedev-list", "--cap", "pci"]);
    assert_eq!(pci.lines().filter(|l| !l.is_empty()).count(), 32, "{pci}");
    assert!(d
        .virsh_ok(&["nodedev-list", "--cap", "net"])
        .trim()
        .is_empty());
    let tree = d.virsh_ok(&["nodedev-list", "--tree"]);
    assert!(tree.starts_with("computer"), "{tree}");
    assert!(tree.contains("pci_0001_03_01_7"), "{tree}");

    let xml = d.virsh_ok(&["nodedev-dumpxml", "pci_0001_03_01_7"]);
    for want in [
        "<parent>computer</parent>",
        "<capability type='pci'>",
        "<domain>1</domain>",
        "<slot>1</slot>",
        "<function>7</function>",
        "pf0vf15 on node-2",
        "<numa node='1'/>",
    ] {
        assert!(xml.contains(want), "{want}: {xml}");
    }
    let xml = d.virsh_ok(&["nodedev-dumpxml", "computer"]);
    assert!(xml.contains("<capability type='system'>"), "{xml}");

    for missing in [
        "pci_0002_03_00_0",
        "pci_0000_03_02_0",
        "pci_0000_03_00_00",
        "usb_1",
    ] {
        let e = d.virsh_err(&["nodedev-dumpxml", missing]);
        assert!(
            e.contains(&format!(
                "Node device not found: no node device with matching name '{missing}'"
            )),
            "{e}"
        );
    }
    let f = d.file(
        "dev.xml",
        "<device><parent>computer</parent><capability type='mdev'><type id='x'/></capability></device>",
    );
    let e = d.virsh_err(&["nodedev-create", f.to_str().unwrap()]);
    assert!(e.contains("virNodeDeviceCreateXML"), "{e}");
}

#[test]
fn cpu_models_compare_and_baseline_by_the_nodes_model() {
    let d = Daemon::start("");
    let models = d.virsh_ok(&["cpu-models", "x86_64"]);
    assert_eq!(models.trim(), "Simulated Xeon (metalvirt sim)", "{models}");
    let e = d.virsh_err(&["cpu-models", "sparc64"]);
    assert!(e.contains("cannot find architecture sparc64"), "{e}");

    let same = d.file(
        "same.xml",
        "<cpu mode='custom' match='exact'><model>Simulated Xeon (metalvirt sim)</model></cpu>",
    );
    let out = d.virsh_ok(&["hypervisor-cpu-compare", same.to_str().unwrap()]);
    assert!(out.contains("identical"), "{out}");
    let pass = d.file("pass.xml", "<cpu mode='host-passthrough'/>");
    let out = d.virsh_ok(&["hypervisor-cpu-compare", pass.to_str().unwrap()]);
    assert!(out.contains("identical"), "{out}");
    let other = d.file(
        "other.xml",
        "<cpu mode='custom' match='exact'><model>Icelake-Server</model></cpu>",
    );
    let out = d.virsh(&["hypervisor-cpu-compare", other.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("incompatible"), "{text}");
    let e = d.virsh_err(&["hypervisor-cpu-compare", other.to_str().unwrap(), "--error"]);
    assert!(
        e.contains("the CPU is incompatible with host CPU: node node-1 has CPU model"),
        "{e}"
    );

    // The host CPU of the capabilities, baselined: its model.
    let caps = d.virsh_ok(&["capabilities"]);
    let host_cpu = &caps[caps.find("<cpu>").unwrap()..caps.find("</cpu>").unwrap() + 6];
    let f = d.file("host-cpu.xml", host_cpu);
    let out = d.virsh_ok(&["hypervisor-cpu-baseline", f.to_str().unwrap()]);
    assert!(
        out.contains("<model fallback='forbid'>Simulated Xeon (metalvirt sim)</model>"),
        "{out}"
    );
}

#[test]
fn guest_time_is_refused_cleanly() {
    let d = Daemon::start("");
    let f = d.file("bm1.xml", &common::domain_xml("bm1", ""));
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    let e = d.virsh_err(&["domtime", "bm1"]);
    assert!(e.contains("domain is not running"), "{e}");
    d.virsh_ok(&["start", "bm1"]);
    let e = d.virsh_err(&["domtime", "bm1", "--sync"]);
    assert!(
        e.contains("Operation not supported") && e.contains("no guest agent"),
        "{e}"
    );
    assert!(
        !d.log().contains("unknown procedure"),
        "every call above is known"
    );
}

/// `key=value` lines of one domain's `virsh domstats` block.
fn stats_of(out: &str, dom: &str) -> std::collections::BTreeMap<String, String> {
    out.split("Domain: ")
        .find(|b| b.starts_with(&format!("'{dom}'")))
        .unwrap_or_else(|| panic!("no stats for {dom}: {out}"))
        .lines()
        .skip(1)
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn domstats_reports_state_memory_vcpus_nics_and_disks() {
    let d = Daemon::start("");
    for name in ["bm1", "bm2"] {
        let f = d.file(&format!("{name}.xml"), &common::domain_xml(name, ""));
        d.virsh_ok(&["define", f.to_str().unwrap()]);
    }
    d.virsh_ok(&["start", "bm1"]);

    let all = d.virsh_ok(&["domstats"]);
    let run = stats_of(&all, "bm1");
    assert_eq!(run["state.state"], "1", "running");
    assert_eq!(run["state.reason"], "1", "booted");
    assert_eq!(run["vcpu.current"], run["vcpu.maximum"]);
    assert!(run["balloon.maximum"].parse::<u64>().unwrap() > 0);
    assert_eq!(run["net.count"], "1");
    assert!(run["net.0.rx.bytes"].parse::<u64>().unwrap() > 0, "{run:?}");
    assert_eq!(run["block.count"], "1");
    assert_eq!(run["block.0.name"], "vda");
    assert!(
        run["block.0.rd.reqs"].parse::<u64>().unwrap() > 0,
        "{run:?}"
    );
    assert!(
        run["block.0.capacity"].parse::<u64>().unwrap() > 0,
        "{run:?}"
    );
    // A shut-off domain has no hardware to read: state, memory, vCPUs and disk names only.
    let off = stats_of(&all, "bm2");
    assert_eq!(off["state.state"], "5");
    assert!(!off.contains_key("net.count") && !off.contains_key("block.0.rd.reqs"));
    assert_eq!(off["block.0.name"], "vda");

    // The server's own sensors, from the power watcher's last reading (a simulated server
    // of 64 threads draws 90 + 1.5 W each).
    common::wait_for(10, "a sensor reading", || {
        d.virsh_ok(&["domstats", "bm1"])
            .contains("metalvirt.power.watts")
    });
    let run = stats_of(&d.virsh_ok(&["domstats", "bm1"]), "bm1");
    assert_eq!(run["metalvirt.power.watts"], "186.000000", "{run:?}");
    assert_eq!(run["metalvirt.inlet.celsius"], "24.000000", "{run:?}");
    assert!(run["metalvirt.sensors.age.ms"].parse::<u64>().unwrap() < 10_000);
    assert!(!off.keys().any(|k| k.starts_with("metalvirt.")), "{off:?}");

    // Filters and groups.
    let only = d.virsh_ok(&["domstats", "--list-running", "--state"]);
    assert!(only.contains("'bm1'") && !only.contains("'bm2'"), "{only}");
    assert!(
        !only.contains("block.") && !only.contains("metalvirt."),
        "{only}"
    );
    // The list form (virDomainListGetStats), by name.
    let one = d.virsh_ok(&["domstats", "bm2", "--block"]);
    assert!(
        one.contains("block.count=1") && !one.contains("'bm1'"),
        "{one}"
    );
    // Groups a bare-metal server has none of: left out, or refused with --enforce.
    assert!(!d
        .virsh_ok(&["domstats", "--cpu-total"])
        .contains("cpu.time"));
    let e = d.virsh_err(&["domstats", "--cpu-total", "--enforce"]);
    assert!(
        e.contains("Stats types bits 0x2 are not supported by this daemon"),
        "{e}"
    );
}
