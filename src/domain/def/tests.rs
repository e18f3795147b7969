//! Unit tests of the domain definition.

use super::super::fixture_tests::CountingRng;
use super::*;

const MINIMAL: &str = "<domain type='kvm'><name>vm1</name><memory>1048576</memory>\
    <os><type>hvm</type></os></domain>";

fn parse(xml: &str) -> DomainDef {
    DomainDef::parse_with_rng(xml, &mut CountingRng(1)).expect("valid domain XML")
}

fn parse_err(xml: &str) -> String {
    DomainDef::parse_with_rng(xml, &mut CountingRng(1))
        .expect_err("invalid domain XML")
        .message
}

#[test]
fn minimal_gets_defaults() {
    let def = parse(MINIMAL);
    assert_eq!(def.name(), "vm1");
    assert_eq!(def.virt_type(), "kvm");
    assert_eq!(def.memory_kib(), 1_048_576);
    assert_eq!(def.current_memory_kib(), 1_048_576);
    assert_eq!(def.max_vcpus(), 1);
    assert_eq!(def.current_vcpus(), 1);
    assert_eq!(def.os_type(), "hvm");
    assert_eq!(def.arch(), "x86_64");
    assert_eq!(def.machine(), None);
    assert_eq!(def.uuid().get_version_num(), 4);
    let xml = def.to_xml(&FormatOpts::inactive());
    assert!(
        xml.starts_with("<domain type='kvm'>\n  <name>vm1</name>\n  <uuid>"),
        "{xml}"
    );
    assert!(xml.contains("<memory unit='KiB'>1048576</memory>\n  <currentMemory unit='KiB'>1048576</currentMemory>\n  <vcpu placement='static'>1</vcpu>"), "{xml}");
    assert!(xml.contains("<type arch='x86_64'>hvm</type>"), "{xml}");
    // output parses back to the same definition
    assert_eq!(DomainDef::parse(&xml).expect("reparse"), def);
}

#[test]
fn memory_units() {
    let cases = [
        ("", "4", 4),
        ("b", "1", 1),
        ("bytes", "1025", 2),
        ("KB", "1000", 977),
        ("k", "7", 7),
        ("KiB", "7", 7),
        ("MB", "1", 977),
        ("M", "2", 2048),
        ("MiB", "2", 2048),
        ("GB", "1", 976_563),
        ("G", "2", 2_097_152),
        ("GiB", "2", 2_097_152),
        ("gib", "1", 1_048_576),
        ("TB", "1", 976_562_500),
        ("T", "1", 1_073_741_824),
        ("TiB", "1", 1_073_741_824),
    ];
    for (unit, value, kib) in cases {
        let xml = format!(
            "<domain type='kvm'><name>m</name><memory unit='{unit}'>{value}</memory><os><type>hvm</type></os></domain>"
        );
        assert_eq!(parse(&xml).memory_kib(), kib, "{value} {unit}");
    }
    assert!(
        parse_err(&MINIMAL.replace("<memory>1048576", "<memory unit='XB'>1"))
            .contains("unknown suffix 'XB'")
    );
    assert!(parse_err(&MINIMAL.replace("1048576", "-1")).contains("Invalid value '-1'"));
    assert!(
        parse_err(&MINIMAL.replace("<memory>1048576", "<memory unit='EiB'>100000"))
            .contains("too large")
    );
}

#[test]
fn current_memory_rules() {
    let x = MINIMAL.replace(
        "</memory>",
        "</memory><currentMemory unit='MiB'>512</currentMemory>",
    );
    assert_eq!(parse(&x).current_memory_kib(), 524_288);
    let x = MINIMAL.replace("</memory>", "</memory><currentMemory>0</currentMemory>");
    assert_eq!(parse(&x).current_memory_kib(), 1_048_576);
    let x = MINIMAL.replace(
        "</memory>",
        "</memory><currentMemory>2000000</currentMemory>",
    );
    assert!(parse_err(&x).contains("exceeds maximum"));
}

#[test]
fn vcpu_rules() {
    let with = |v: &str| MINIMAL.replace("<os>", &format!("{v}<os>"));
    let def = parse(&with("<vcpu current='2' cpuset='0-3'>4</vcpu>"));
    assert_eq!((def.max_vcpus(), def.current_vcpus()), (4, 2));
    let xml = def.to_xml(&FormatOpts::inactive());
    assert!(
        xml.contains("<vcpu placement='static' cpuset='0-3' current='2'>4</vcpu>"),
        "{xml}"
    );
    let def = parse(&with("<vcpu current='4'>4</vcpu>"));
    assert!(def
        .to_xml(&FormatOpts::inactive())
        .contains("<vcpu placement='static'>4</vcpu>"));
    assert!(parse_err(&with("<vcpu>0</vcpu>")).contains("greater than 0"));
    assert!(parse_err(&with("<vcpu>two</vcpu>")).contains("must be an integer"));
    assert!(
        parse_err(&with("<vcpu current='5'>4</vcpu>")).contains("must not be less than current")
    );
    assert!(parse_err(&with("<vcpu placement='magic'>4</vcpu>")).contains("'placement'"));
}

#[test]
fn root_type_name_uuid_checks() {
    assert!(parse_err("<domian type='kvm'/>")
        .contains("expecting root element of 'domain', not 'domian'"));
    assert!(
        parse_err(&MINIMAL.replace(" type='kvm'", "")).contains("missing domain type attribute")
    );
    assert!(parse_err(&MINIMAL.replace("'kvm'", "'foo'")).contains("invalid domain type foo"));
    assert!(parse_err(&MINIMAL.replace("'kvm'", "'xen'")).contains("unsupported domain type 'xen'"));
    assert_eq!(
        parse(&MINIMAL.replace("'kvm'", "'qemu'")).virt_type(),
        "qemu"
    );
    assert!(
        parse_err(&MINIMAL.replace("<name>vm1</name>", "")).contains("missing name information")
    );
    assert!(parse_err(&MINIMAL.replace("vm1", "  ")).contains("missing name information"));
    assert!(parse_err(&MINIMAL.replace("vm1", "a/b")).contains("name a/b cannot contain '/'"));
    let with_uuid = |u: &str| MINIMAL.replace("</name>", &format!("</name><uuid>{u}</uuid>"));
    let def = parse(&with_uuid(" 6BA7B8109DAD11D180B400C04FD430C8 "));
    assert_eq!(
        def.uuid().to_string(),
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    );
    let def = parse(&with_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8"));
    assert_eq!(
        def.uuid().to_string(),
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    );
    for bad in [
        "xyz",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8aa",
        "6ba7b81-09dad-11d1-80b4-00c04fd430c8",
    ] {
        assert!(
            parse_err(&with_uuid(bad)).contains("malformed uuid element"),
            "{bad}"
        );
    }
    // empty <uuid/> is generated, like libvirt
    assert_eq!(parse(&with_uuid("")).uuid().get_version_num(), 4);
    // live-only id attribute is dropped
    let def = parse(&MINIMAL.replace("type='kvm'", "id='5' type='kvm'"));
    assert!(def
        .to_xml(&FormatOpts::inactive())
        .starts_with("<domain type='kvm'>\n"));
}

#[test]
fn singletons_must_be_unique() {
    let e = parse_err(&MINIMAL.replace("</name>", "</name><name>again</name>"));
    assert_eq!(e, "element <name> must appear only once in <domain>");
    let e = parse_err(&MINIMAL.replace("</os>", "</os><devices/><devices/>"));
    assert!(e.contains("<devices>"), "{e}");
}

#[test]
fn os_checks() {
    assert!(parse_err(&MINIMAL.replace("<os><type>hvm</type></os>", ""))
        .contains("an os <type> must be specified"));
    assert!(parse_err(&MINIMAL.replace(">hvm<", ">xen<")).contains("unsupported OS type 'xen'"));
    assert!(parse_err(&MINIMAL.replace(">hvm<", ">dos<")).contains("unknown OS type 'dos'"));
    let def = parse(&MINIMAL.replace("<type>hvm", "<type machine='q35' arch='aarch64'>hvm"));
    assert_eq!(def.arch(), "aarch64");
    assert_eq!(def.machine(), Some("q35"));
    assert!(def
        .to_xml(&FormatOpts::inactive())
        .contains("<type arch='aarch64' machine='q35'>hvm</type>"));
}

fn with_devices(devs: &str) -> String {
    MINIMAL.replace("</domain>", &format!("<devices>{devs}</devices></domain>"))
}

#[test]
fn device_defaults_and_checks() {
    let def = parse(&with_devices(
        "<interface type='network'><source network='default'/><target dev='vnet3'/></interface>\
         <disk type='file'><source file='/a.img'/><target dev='sdb'/></disk>\
         <disk type='file' device='floppy'><source file='/f.img'/><target dev='fda'/></disk>\
         <controller type='usb'/><controller type='usb' index='0'/>",
    ));
    let nics = def.interfaces();
    assert_eq!(nics.len(), 1);
    let mac = nics[0].mac.clone().expect("generated mac");
    assert!(mac.starts_with("52:54:00:"), "{mac}");
    assert_eq!(nics[0].target_dev, None, "vnet names are dropped");
    let disks = def.disks();
    assert_eq!(disks[0].target_bus.as_deref(), Some("scsi"));
    assert_eq!(disks[1].target_bus.as_deref(), Some("fdc"));
    let xml = def.to_xml(&FormatOpts::inactive());
    assert!(xml.contains("<target dev='sdb' bus='scsi'/>"), "{xml}");
    assert!(xml.contains("<controller type='usb' index='1'/>"), "{xml}");

    let e = parse_err(&with_devices(
        "<interface type='network'><mac address='zz:54:00:00:00:01'/></interface>",
    ));
    assert!(
        e.contains("unable to parse mac address 'zz:54:00:00:00:01'"),
        "{e}"
    );
    let e = parse_err(&with_devices(
        "<interface type='network'><mac address='01:00:5e:00:00:01'/></interface>",
    ));
    assert!(e.contains("multicast"), "{e}");
    let e = parse_err(&with_devices("<disk><source file='/a'/><target dev='vda'/></disk><disk><source file='/b'/><target dev='vda'/></disk>"));
    assert_eq!(e, "target 'vda' duplicated for disk sources '/a' and '/b'");
    let e = parse_err(&with_devices("<disk><source file='/a'/></disk>"));
    assert!(
        e.contains("missing target information for device <disk>"),
        "{e}"
    );
    let e = parse_err(&with_devices(
        "<disk><source file='/a'/><target dev='foo'/></disk>",
    ));
    assert!(e.contains("Unknown disk name 'foo'"), "{e}");
    let e = parse_err(&with_devices("<disk><target dev='vda'/><alias name='ua-x'/></disk><interface type='network'><alias name='ua-x'/></interface>"));
    assert_eq!(e, "non unique alias detected: ua-x");
    let e = parse_err(&with_devices(
        "<disk><target dev='vda'/><alias name='ua-a b'/></disk>",
    ));
    assert!(e.contains("invalid alias name 'ua-a b'"), "{e}");
    let e = parse_err(&with_devices(
        "<controller type='usb' index='0'/><controller type='usb' index='0'/>",
    ));
    assert!(
        e.contains("Multiple 'usb' controllers with index '0'"),
        "{e}"
    );
}

#[test]
fn aliases_user_and_generated() {
    let def = parse(&with_devices(
        "<disk><target dev='vdb'/><alias name='virtio-disk9'/><address type='pci' bus='0x00' slot='0x05'/></disk>\
         <disk><target dev='vda'/><alias name='ua-boot'/></disk>\
         <interface type='network'><mac address='52:54:00:00:00:01'/></interface>\
         <graphics type='vnc' passwd='secret'/>",
    ));
    let inactive = def.to_xml(&FormatOpts::inactive());
    assert!(
        !inactive.contains("virtio-disk9"),
        "non-ua alias dropped: {inactive}"
    );
    assert!(inactive.contains("<alias name='ua-boot'/>"));
    assert!(!inactive.contains("passwd"));
    let secure = def.to_xml(&FormatOpts {
        secure: true,
        ..FormatOpts::inactive()
    });
    assert!(secure.contains("passwd='secret'"));
    let live = def.to_xml(&FormatOpts::live(7, "node-1"));
    assert!(live.starts_with("<domain type='kvm' id='7'>"), "{live}");
    // alias goes before <address>
    assert!(
        live.contains("<alias name='virtio-disk1'/>\n      <address type='pci'"),
        "{live}"
    );
    assert!(live.contains("<alias name='ua-boot'/>"));
    assert!(live.contains("<alias name='net0'/>"));
    assert!(
        live.contains(
            "<metalvirt:node xmlns:metalvirt='https://metalvirt.dev/xmlns/1' name='node-1'/>"
        ),
        "{live}"
    );
    assert_eq!(live, def.to_xml(&FormatOpts::live(7, "node-1")), "stable");
    let views = def.disks();
    assert_eq!(views[0].live_alias.as_deref(), Some("virtio-disk1"));
    assert_eq!(views[1].alias.as_deref(), Some("ua-boot"));
    // inactive wins over live
    let both = def.to_xml(&FormatOpts {
        inactive: true,
        ..FormatOpts::live(7, "node-1")
    });
    assert_eq!(both, inactive);
}

#[test]
fn bound_node_and_pin() {
    let mut def = parse(MINIMAL);
    assert_eq!(def.node_pin(), None);
    def.set_bound_node(Some("node-9"));
    assert_eq!(def.bound_node(), Some("node-9"));
    let live = def.to_xml(&FormatOpts::live(1, ""));
    assert!(live.contains("name='node-9'"), "{live}");
    assert!(!def.to_xml(&FormatOpts::inactive()).contains("node-9"));

    let pinned = MINIMAL.replace(
        "</name>",
        "</name><metadata><mv:node xmlns:mv='https://metalvirt.dev/xmlns/1' name='node-2'/></metadata>",
    );
    let def = parse(&pinned);
    assert_eq!(def.node_pin().as_deref(), Some("node-2"));
    let live = def.to_xml(&FormatOpts::live(1, "node-2"));
    assert_eq!(live.matches("node-2").count(), 1, "{live}");
    assert!(def.to_xml(&FormatOpts::inactive()).contains("<mv:node"));
    let bad = pinned.replace(" name='node-2'", "");
    assert!(parse_err(&bad).contains("'name' attribute of <mv:node>"));
}

#[test]
fn title_and_description() {
    let mut def = parse(MINIMAL);
    def.set_description(Some("multi\nline & <stuff>"))
        .expect("desc");
    def.set_title(Some("My VM")).expect("title");
    assert_eq!(def.title().as_deref(), Some("My VM"));
    assert!(def.set_title(Some("a\nb")).is_err());
    let xml = def.to_xml(&FormatOpts::inactive());
    let uuid_at = xml.find("<uuid>").expect("uuid");
    let title_at = xml.find("<title>").expect("title");
    let desc_at = xml.find("<description>").expect("description");
    let mem_at = xml.find("<memory").expect("memory");
    assert!(
        uuid_at < title_at && title_at < desc_at && desc_at < mem_at,
        "{xml}"
    );
    assert!(xml.contains("<description>multi\nline &amp; &lt;stuff&gt;</description>"));
    let back = DomainDef::parse(&xml).expect("reparse");
    assert_eq!(back.description().as_deref(), Some("multi\nline & <stuff>"));
    def.set_title(None).expect("title");
    def.set_description(Some("")).expect("desc");
    assert_eq!((def.title(), def.description()), (None, None));
}

#[test]
fn custom_metadata() {
    let nova = "http://openstack.org/xmlns/libvirt/nova/1.1";
    let xml = MINIMAL.replace(
        "</name>",
        &format!("</name><metadata xmlns:nova='{nova}'><nova:instance><nova:name>vm</nova:name></nova:instance>\
          <other xmlns='urn:x'><a/></other></metadata>"),
    );
    let mut def = parse(&xml);
    let got = def.metadata_element(nova).expect("nova metadata");
    // As libvirt returns it: outside its namespace.
    assert_eq!(got, "<instance>\n  <name>vm</name>\n</instance>");
    assert!(def
        .metadata_element("urn:x")
        .expect("urn:x")
        .starts_with("<other>"));
    assert_eq!(def.metadata_element("urn:none"), None);

    def.set_metadata_element(
        "urn:app",
        "app",
        Some("<foo:cfg xmlns:foo='urn:old' k='v'><foo:x/></foo:cfg>"),
    )
    .expect("set");
    let got = def.metadata_element("urn:app").expect("app");
    assert!(got.starts_with("<cfg xmlns:foo='urn:old' k='v'>"), "{got}");
    // replacing
    def.set_metadata_element("urn:app", "app", Some("<cfg/>"))
        .expect("set");
    assert_eq!(def.metadata_element("urn:app").as_deref(), Some("<cfg/>"));
    assert!(def
        .set_metadata_element("urn:app", "app", Some("<cfg>"))
        .is_err());
    assert!(def
        .set_metadata_element("urn:app", "1bad", Some("<cfg/>"))
        .is_err());
    // removing everything drops <metadata>
    for uri in [nova, "urn:x", "urn:app"] {
        def.set_metadata_element(uri, "k", None).expect("remove");
    }
    assert!(def.root().child("metadata").is_none());
    // creating <metadata> at its canonical place
    def.set_metadata_element(METALVIRT_NS, "metalvirt", Some("<node name='n1'/>"))
        .expect("pin");
    assert_eq!(def.node_pin().as_deref(), Some("n1"));
    assert!(def
        .set_metadata_element(METALVIRT_NS, "metalvirt", Some("<node/>"))
        .is_err());
}

#[test]
fn reorders_top_level() {
    let xml = "<domain type='kvm'><devices/><os><type>hvm</type></os><zzz/>\
               <memory>1024</memory><name>x</name><clock offset='utc'/></domain>";
    let def = parse(xml);
    let names: Vec<_> = def.root().elements().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "name",
            "uuid",
            "memory",
            "currentMemory",
            "vcpu",
            "os",
            "clock",
            "on_poweroff",
            "on_reboot",
            "on_crash",
            "devices",
            "zzz"
        ]
    );
}

#[test]
fn unit_scale_table() {
    assert_eq!(unit_scale(""), Some(1024));
    assert_eq!(unit_scale("KB"), Some(1000));
    assert_eq!(unit_scale("pib"), Some(1 << 50));
    assert_eq!(unit_scale("kiB"), Some(1024));
    assert_eq!(unit_scale("KiBB"), None);
    assert_eq!(unit_scale("x"), None);
}

/// Found by the domain_xml fuzz target: a running domain with a serial port and the
/// console that mirrors it (nova's usual pair) could not be read back from its status
/// file ("non unique alias detected: serial0"), so a daemon restart would have undone it.
#[test]
fn live_serial_and_its_console_share_an_alias_and_parse_back() {
    let mut d = parse(
        "<domain type='kvm'><name>c</name><memory>1024</memory>\
         <os><type>hvm</type></os><devices>\
         <serial type='pty'><target port='0'/></serial>\
         <console type='pty'><target type='serial' port='0'/></console>\
         </devices></domain>",
    );
    d.make_live();
    let raw = FormatOpts {
        live: None,
        secure: true,
        inactive: false,
    };
    let x = d.to_xml(&raw);
    assert_eq!(x.matches("<alias name='serial0'/>").count(), 2, "{x}");
    let back = DomainDef::parse_live(&x).expect("the live XML parses back");
    assert_eq!(back.to_xml(&raw), x);
    // Two serial ports with one alias are still refused.
    let e = parse_err(
        "<domain type='kvm'><name>c</name><memory>1024</memory><os><type>hvm</type></os>\
         <devices><serial type='pty'><alias name='ua-s'/></serial>\
         <serial type='pty'><alias name='ua-s'/></serial></devices></domain>",
    );
    assert!(e.contains("non unique alias"), "{e}");
}
