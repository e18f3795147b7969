//! Real BMCs: [`redfish`] (DMTF Redfish over HTTP/HTTPS) and [`ipmi`] (IPMI 2.0 lanplus
//! through `ipmitool`). Both implement [`Power`](super::Power) and share what is here:
//! password files, the retry pause, and the fallback order of reset types.
//!
//! Credentials: passwords come from files named in the configuration, are held as
//! [`SecretValue`] (redacted in `Debug`, zeroed on drop) and never reach a log line, an error,
//! an XML document or a process's arguments.

pub mod ipmi;
pub mod openbmc;
pub mod redfish;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::secret_value::SecretValue;

/// Reads a BMC password: the first line of `path`, without its line end. A file that group
/// or others can read is used, with a warning.
pub fn read_password(node: &str, path: &Path) -> Result<SecretValue, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "node '{node}': cannot read password file {}: {e}",
            path.display()
        )
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o044 != 0 {
        tracing::warn!(
            node,
            file = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "BMC password file is readable by group or others; chmod 600 it"
        );
    }
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "node '{node}': cannot read password file {}: {e}",
            path.display()
        )
    })?;
    let bytes = SecretValue::new(bytes);
    let line = bytes.expose().split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!(
            "node '{node}': password file {} is empty",
            path.display()
        ));
    }
    Ok(SecretValue::new(line.to_vec()))
}

/// The pause before retry `attempt` (0-based): 250 ms doubling to at most 5 s, with up to a
/// quarter added at random so BMCs failing together are not retried together.
pub fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(5)).min(5000);
    Duration::from_millis(base + rand::random_range(0..=base / 4))
}

/// A power action, as the driver core asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Power on.
    On,
    /// Hard power off.
    ForceOff,
    /// ACPI-style graceful power off.
    GracefulOff,
    /// Graceful restart.
    GracefulRestart,
    /// Hard restart.
    ForceRestart,
}

impl Action {
    /// Redfish `ResetType`s that do this, best first.
    pub fn reset_types(self) -> &'static [&'static str] {
        match self {
            Action::On => &["On", "ForceOn"],
            Action::ForceOff => &["ForceOff"],
            Action::GracefulOff => &["GracefulShutdown", "PushPowerButton"],
            Action::GracefulRestart => &["GracefulRestart"],
            Action::ForceRestart => &["ForceRestart", "PowerCycle"],
        }
    }
}

/// The reset type to send: the first of the action's list the BMC advertises, or the first
/// of the list when the BMC advertises none.
pub fn pick_reset_type(action: Action, allowed: &[String]) -> Option<&'static str> {
    let wanted = action.reset_types();
    if allowed.is_empty() {
        return wanted.first().copied();
    }
    wanted
        .iter()
        .find(|w| allowed.iter().any(|a| a == *w))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_types_fall_back_in_order() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let sushy = s(&[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
        ]);
        assert_eq!(pick_reset_type(Action::On, &sushy), Some("On"));
        assert_eq!(
            pick_reset_type(Action::On, &s(&["ForceOn"])),
            Some("ForceOn")
        );
        assert_eq!(
            pick_reset_type(Action::ForceRestart, &s(&["PowerCycle", "On"])),
            Some("PowerCycle")
        );
        assert_eq!(
            pick_reset_type(Action::GracefulOff, &s(&["PushPowerButton"])),
            Some("PushPowerButton")
        );
        assert_eq!(pick_reset_type(Action::GracefulRestart, &s(&["On"])), None);
        assert_eq!(pick_reset_type(Action::ForceOff, &[]), Some("ForceOff"));
    }

    #[test]
    fn password_file_first_line_and_mode_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pw");
        std::fs::write(&p, "s3cret\r\nsecond line\n").unwrap();
        assert_eq!(read_password("n", &p).unwrap().expose(), b"s3cret");
        std::fs::write(&p, "\n").unwrap();
        let e = read_password("n", &p).unwrap_err();
        assert!(e.contains("is empty") && e.contains("node 'n'"), "{e}");
        let e = read_password("n", &d.path().join("missing")).unwrap_err();
        assert!(e.contains("cannot read password file"), "{e}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) >= Duration::from_millis(250));
        assert!(backoff(0) <= Duration::from_millis(313));
        assert!(backoff(10) <= Duration::from_millis(6250));
        assert!(backoff(10) >= Duration::from_millis(5000));
    }
}
