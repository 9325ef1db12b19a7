//! Helpers for the integration tests: privilege checks that skip (or, under `CI=true`,
//! fail), unique lab prefixes, and a guard that takes a lab down however a test ends.

use std::path::PathBuf;

use netns_user::{
    config::LabConfig,
    lab::{self, Lab},
    nat::NatKind,
    netns,
};

/// Whether this test can run: root is needed for namespaces and BPF. Outside CI a test
/// without it is skipped with a reason; under `CI=true` that is a failure.
pub fn privileged(test: &str) -> bool {
    if lab::require_root().is_ok() {
        return true;
    }
    let why = format!("{test}: needs root for network namespaces and BPF");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true, so this is a failure rather than a skip");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// A prefix no other test (in this or another process) uses.
pub fn prefix(tag: &str) -> String {
    format!("nt{}{tag}-", std::process::id())
}

/// A lab that is taken down when the guard goes, even if the test panics.
pub struct LabGuard {
    pub lab: Lab,
}

impl LabGuard {
    pub fn up(tag: &str, nat: NatKind) -> LabGuard {
        Self::up_with(&LabConfig::reference(), tag, nat)
    }

    pub fn up_with(cfg: &LabConfig, tag: &str, nat: NatKind) -> LabGuard {
        let prefix = prefix(tag);
        let lab =
            Lab::up(cfg, &prefix, nat, &mut |_| {}).unwrap_or_else(|e| panic!("lab {prefix} ({nat}): {e}"));
        LabGuard { lab }
    }

    pub fn prefix(&self) -> &str {
        self.lab.prefix()
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(self.lab.prefix()) {
            eprintln!("cleanup of lab {}: {e}", self.lab.prefix());
        }
    }
}

/// Asserts that nothing of lab `prefix` is left: no namespace, pinned object or state.
pub fn assert_gone(prefix: &str) {
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let pins = netns_user::ebpf::pin_dir(prefix);
    assert!(!pins.exists(), "pinned objects left behind in {}", pins.display());
    let state = PathBuf::from(lab::STATE_ROOT).join(prefix);
    assert!(!state.exists(), "lab state left behind in {}", state.display());
    assert!(!lab::list().iter().any(|p| p == prefix), "lab still listed");
}

/// The `netns-nat` binary (built by `cargo xtask test` before the tests run).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETNS_NAT_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/netns-nat
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("netns-nat"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p netns-user`, done by `cargo xtask test`)",
        path.display()
    );
    path
}
