//! Typed reads of a normalized definition.

use super::*;

impl DomainDef {
    /// The whole (normalized) element tree.
    pub fn root(&self) -> &Element {
        &self.root
    }

    fn child_text(&self, name: &str) -> Option<&str> {
        self.root.child(name).and_then(first_text)
    }

    /// The domain name.
    pub fn name(&self) -> &str {
        self.child_text("name").unwrap_or("")
    }

    /// The domain UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.child_text("uuid")
            .and_then(|t| uuid::Uuid::parse_str(t).ok())
            .unwrap_or_default()
    }

    /// The domain type (`kvm` or `qemu`).
    pub fn virt_type(&self) -> &str {
        self.root.attr("type").unwrap_or("")
    }

    /// Maximum memory (`<memory>`) in KiB.
    pub fn memory_kib(&self) -> u64 {
        self.child_text("memory")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }

    /// Current memory (`<currentMemory>`) in KiB.
    pub fn current_memory_kib(&self) -> u64 {
        self.child_text("currentMemory")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| self.memory_kib())
    }

    /// Maximum vCPU count (`<vcpu>`).
    pub fn max_vcpus(&self) -> u32 {
        self.child_text("vcpu")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1)
    }

    /// Current vCPU count (`<vcpu current>`, default the maximum).
    pub fn current_vcpus(&self) -> u32 {
        self.root
            .child("vcpu")
            .and_then(|v| v.attr("current"))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| self.max_vcpus())
    }

    fn os_type_el(&self) -> Option<&Element> {
        self.root.child("os").and_then(|os| os.child("type"))
    }

    /// The OS type (always `hvm`).
    pub fn os_type(&self) -> &str {
        self.os_type_el().and_then(first_text).unwrap_or("hvm")
    }

    /// The guest architecture (`<os><type arch>`, default `x86_64`).
    pub fn arch(&self) -> &str {
        self.os_type_el()
            .and_then(|t| t.attr("arch"))
            .unwrap_or("x86_64")
    }

    /// The machine type (`<os><type machine>`), if given.
    pub fn machine(&self) -> Option<&str> {
        self.os_type_el().and_then(|t| t.attr("machine"))
    }

    /// Boot devices from `<os><boot dev>`, in order.
    pub fn boot_devs(&self) -> Vec<String> {
        self.root
            .child("os")
            .map(|os| {
                os.children_named("boot")
                    .filter_map(|b| b.attr("dev"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The firmware the domain asks for: `efi` (`<os firmware='efi'>`, a pflash or OVMF
    /// `<loader>`), `bios` (`<os firmware='bios'>`, a rom `<loader>`), or None.
    pub fn firmware(&self) -> Option<&'static str> {
        let os = self.root.child("os")?;
        match os.attr("firmware") {
            Some("efi") => return Some("efi"),
            Some("bios") => return Some("bios"),
            _ => {}
        }
        let loader = os.child("loader")?;
        let path = loader.text().to_ascii_lowercase();
        if loader.attr("type") == Some("pflash") || path.contains("ovmf") || path.contains("efi") {
            Some("efi")
        } else if loader.attr("type") == Some("rom") {
            Some("bios")
        } else {
            None
        }
    }

    /// The `<title>` text.
    pub fn title(&self) -> Option<String> {
        self.root.child("title").map(Element::text)
    }

    /// The `<description>` text.
    pub fn description(&self) -> Option<String> {
        self.root.child("description").map(Element::text)
    }

    pub(super) fn live_aliases(&self) -> Vec<Option<String>> {
        match self.root.child("devices") {
            Some(devices) => devices::live_aliases(devices, self.machine()),
            None => Vec::new(),
        }
    }

    /// Views of all `<disk>` devices.
    pub fn disks(&self) -> Vec<DiskDef> {
        let Some(devices) = self.root.child("devices") else {
            return Vec::new();
        };
        let aliases = self.live_aliases();
        devices
            .elements()
            .enumerate()
            .filter(|(_, e)| e.name == "disk")
            .map(|(i, e)| devices::disk_view(i, e, aliases.get(i).cloned().flatten()))
            .collect()
    }

    /// Views of all `<interface>` devices.
    pub fn interfaces(&self) -> Vec<InterfaceDef> {
        let Some(devices) = self.root.child("devices") else {
            return Vec::new();
        };
        let aliases = self.live_aliases();
        devices
            .elements()
            .enumerate()
            .filter(|(_, e)| e.name == "interface")
            .map(|(i, e)| devices::interface_view(i, e, aliases.get(i).cloned().flatten()))
            .collect()
    }
}
