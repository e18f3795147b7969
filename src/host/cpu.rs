//! The CPU model APIs (`virConnectGetCPUModelNames`, `virConnectBaseline(Hypervisor)CPU`,
//! `virConnectCompare(Hypervisor)CPU`) over the nodes' configured `cpu_model`.
//!
//! A bare-metal server runs on its own CPU: `host-passthrough` is the only CPU mode (domain
//! capabilities say so), and a CPU model is the name of the servers' CPUs as configured
//! (`[[node]] cpu_model`). CPUs compare by that name; features are not known per server, so
//! they do not take part (a CPU that requires features compares as its model does).

use crate::domain::Element;
use crate::driver::Driver;
use crate::error::{from, VirError, VirResult};

/// `virCPUCompareResult`.
pub mod result {
    /// The CPUs are incompatible.
    pub const INCOMPATIBLE: i32 = 0;
    /// The host CPU is the given one.
    pub const IDENTICAL: i32 = 1;
}

/// `VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE`.
pub const COMPARE_FAIL_INCOMPATIBLE: u32 = 1;
/// `VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE | _VALIDATE_XML`.
pub const COMPARE_FLAGS: u32 = 3;
/// `VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES | _MIGRATABLE | _IGNORE_HOST`.
pub const BASELINE_FLAGS: u32 = 7;

/// A model the configuration leaves unnamed.
const UNKNOWN: &str = "unknown";

/// The distinct CPU models of the nodes with architecture `arch`, sorted.
pub fn model_names(d: &Driver, arch: &str) -> VirResult<Vec<String>> {
    let nodes = d.nodes();
    if !nodes.iter().any(|n| n.spec.arch == arch) && arch != "x86_64" {
        return Err(
            VirError::invalid_arg(&format!("cannot find architecture {arch}")).in_domain(from::CPU),
        );
    }
    let mut models: Vec<String> = nodes
        .iter()
        .filter(|n| n.spec.arch == arch && n.spec.cpu_model != UNKNOWN)
        .map(|n| n.spec.cpu_model.clone())
        .collect();
    models.sort();
    models.dedup();
    Ok(models)
}

/// The model every node shares, when they share a known one (the host CPU's `<model>`).
pub fn host_model(d: &Driver) -> Option<&str> {
    let first = d.nodes().first()?.spec.cpu_model.as_str();
    (first != UNKNOWN && d.nodes().iter().all(|n| n.spec.cpu_model == first)).then_some(first)
}

/// The parts of a CPU description that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
struct Cpu {
    mode: Option<String>,
    arch: Option<String>,
    model: Option<String>,
    vendor: Option<String>,
    /// Required features (policy `require`/`force`, or none as in a host CPU).
    features: Vec<String>,
}

fn parse_cpu(xml: &str) -> VirResult<Cpu> {
    let root =
        Element::parse(xml).map_err(|e| VirError::xml(&e.to_string()).in_domain(from::CPU))?;
    if root.name != "cpu" {
        return Err(VirError::xml(&format!(
            "expecting root element of 'cpu', not '{}'",
            root.name
        ))
        .in_domain(from::CPU));
    }
    let text = |name: &str| {
        root.child(name)
            .map(|e| e.text().trim().to_string())
            .filter(|t| !t.is_empty())
    };
    Ok(Cpu {
        mode: root.attr("mode").map(str::to_string),
        arch: text("arch"),
        model: text("model"),
        vendor: text("vendor"),
        features: root
            .children_named("feature")
            .filter(|f| matches!(f.attr("policy"), None | Some("require") | Some("force")))
            .filter_map(|f| f.attr("name").map(str::to_string))
            .collect(),
    })
}

/// `virConnectCompareCPU` / `virConnectCompareHypervisorCPU`: how the host's CPU (every
/// node's) relates to the CPU `xml` describes.
pub fn compare(d: &Driver, xml: &str, flags: u32, api: &str) -> VirResult<i32> {
    VirError::check_flags(flags, COMPARE_FLAGS, api)?;
    let cpu = parse_cpu(xml)?;
    let verdict = |why: String| -> VirResult<i32> {
        if flags & COMPARE_FAIL_INCOMPATIBLE != 0 {
            return Err(VirError::cpu_incompatible(&why));
        }
        Ok(result::INCOMPATIBLE)
    };
    if matches!(
        cpu.mode.as_deref(),
        Some("host-passthrough" | "host-model" | "maximum")
    ) {
        return Ok(result::IDENTICAL);
    }
    if let Some(arch) = &cpu.arch {
        if let Some(n) = d.nodes().iter().find(|n| &n.spec.arch != arch) {
            return verdict(format!(
                "node {} is {}, not {arch}",
                n.spec.name, n.spec.arch
            ));
        }
    }
    if let Some(model) = &cpu.model {
        if let Some(n) = d.nodes().iter().find(|n| &n.spec.cpu_model != model) {
            return verdict(format!(
                "node {} has CPU model '{}', not '{model}'",
                n.spec.name, n.spec.cpu_model
            ));
        }
    }
    Ok(result::IDENTICAL)
}

/// `virConnectBaselineCPU` / `virConnectBaselineHypervisorCPU`: the CPU every one of `xmls`
/// provides: their common model (they must name one model, or none), vendor and the
/// features all of them require.
pub fn baseline(xmls: &[String], flags: u32, api: &str) -> VirResult<String> {
    VirError::check_flags(flags, BASELINE_FLAGS, api)?;
    if xmls.is_empty() {
        return Err(VirError::invalid_arg(&format!(
            "nothing to baseline: {api} needs at least one CPU"
        ))
        .in_domain(from::CPU));
    }
    let cpus = xmls
        .iter()
        .map(|x| parse_cpu(x))
        .collect::<VirResult<Vec<Cpu>>>()?;
    let mut models: Vec<&str> = cpus.iter().filter_map(|c| c.model.as_deref()).collect();
    models.sort();
    models.dedup();
    if models.len() > 1 {
        return Err(VirError::operation_unsupported(&format!(
            "the CPUs have different models ({}); metalvirt knows no CPU model hierarchy to find a common one",
            models.join(", ")
        ))
        .in_domain(from::CPU));
    }
    let vendor = cpus[0]
        .vendor
        .as_deref()
        .filter(|v| cpus.iter().all(|c| c.vendor.as_deref() == Some(*v)));
    let common: Vec<&str> = cpus[0]
        .features
        .iter()
        .map(String::as_str)
        .filter(|f| cpus.iter().all(|c| c.features.iter().any(|g| g == f)))
        .collect();
    let mut x = String::from("<cpu mode='custom' match='exact'>\n");
    if let Some(m) = models.first() {
        x.push_str(&format!(
            "  <model fallback='forbid'>{}</model>\n",
            super::esc(m)
        ));
    }
    if let Some(v) = vendor {
        x.push_str(&format!("  <vendor>{}</vendor>\n", super::esc(v)));
    }
    for f in common {
        x.push_str(&format!(
            "  <feature policy='require' name='{}'/>\n",
            super::esc(f)
        ));
    }
    x.push_str("</cpu>\n");
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_mode_model_vendor_and_required_features() {
        let c = parse_cpu(
            "<cpu mode='custom' match='exact'><arch>x86_64</arch><model>Icelake-Server</model>\
             <vendor>Intel</vendor><feature policy='require' name='vmx'/>\
             <feature policy='disable' name='svm'/><feature name='aes'/></cpu>",
        )
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("Icelake-Server"));
        assert_eq!(c.vendor.as_deref(), Some("Intel"));
        assert_eq!(c.features, ["vmx", "aes"]);
        let e = parse_cpu("<domain/>").unwrap_err();
        assert_eq!(e.code, crate::error::code::XML_ERROR);
    }

    #[test]
    fn baseline_keeps_what_every_cpu_has() {
        let a = "<cpu><model>M</model><vendor>Intel</vendor><feature name='a'/><feature name='b'/></cpu>";
        let b = "<cpu><model>M</model><vendor>Intel</vendor><feature name='b'/></cpu>";
        let x = baseline(&[a.into(), b.into()], 1, "virConnectBaselineCPU").unwrap();
        assert_eq!(
            x,
            "<cpu mode='custom' match='exact'>\n  <model fallback='forbid'>M</model>\n  <vendor>Intel</vendor>\n  <feature policy='require' name='b'/>\n</cpu>\n"
        );
        let c = "<cpu><model>N</model></cpu>";
        let e = baseline(&[a.into(), c.into()], 0, "virConnectBaselineCPU").unwrap_err();
        assert_eq!(e.code, crate::error::code::OPERATION_UNSUPPORTED);
        let e = baseline(&[], 0, "virConnectBaselineCPU").unwrap_err();
        assert_eq!(e.code, crate::error::code::INVALID_ARG);
        let e = baseline(&[c.into()], 8, "virConnectBaselineCPU").unwrap_err();
        assert_eq!(e.code, crate::error::code::INVALID_ARG);
    }
}
