//! Isolation: a whole lab life cycle leaves the machine's own namespace as it found it; a
//! lab's pinned objects and state are root's only; a second `up` racing for a prefix fails
//! cleanly; prefixes cannot name paths.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use netns_tests::{assert_gone, prefix, privileged};
use netns_user::{
    bpf,
    config::{FastPath, LabConfig},
    lab::{self, Lab, LabError},
    nat::NatKind,
    probe,
};

/// The machine's own namespace as `ip` shows it (the test process runs there), and the
/// pinned BPF objects outside netns-nat's tree.
fn host_view() -> String {
    let mut view = String::new();
    for args in [
        &["-o", "link", "show"][..],
        &["-o", "addr", "show"],
        &["route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
        &["rule", "show"],
    ] {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(out.status.success(), "ip {args:?}");
        view.push_str(&format!(
            "## ip {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    view.push_str("## pinned outside /sys/fs/bpf/netns-nat\n");
    let mut pins = Vec::new();
    walk(Path::new("/sys/fs/bpf"), &mut pins);
    view.push_str(&pins.join("\n"));
    view
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        // bpffs's own preload files come with the mount, which netns-nat makes if nobody had.
        if p.starts_with(netns_common::names::PIN_ROOT)
            || p.file_name()
                .is_some_and(|n| n == "maps.debug" || n == "progs.debug")
        {
            continue;
        }
        out.push(p.display().to_string());
        if p.is_dir() {
            walk(&p, out);
        }
    }
    out.sort();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_lab_life_cycle_leaves_the_machine_as_it_was() {
    if !privileged("isolation") {
        return;
    }
    let before = host_view();
    let p = prefix("iso");
    // The XDP mode touches the most: programs on four ports, offloads on the peers.
    let mut cfg = LabConfig::reference();
    cfg.nat.as_mut().expect("NAT").ebpf.fast_path = FastPath::Xdp;
    let lab = Lab::up(&cfg, &p, NatKind::Ebpf, &mut |_| {}).expect("up");
    let checks = probe::check(&lab, std::time::Duration::from_secs(3)).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    // Root's only: the pins (whoever opens a map can change the NAT) and the state.
    let state = PathBuf::from(lab::STATE_ROOT).join(&p);
    assert_eq!(mode(&bpf::pin_dir(&p)), 0o700);
    assert_eq!(mode(&state), 0o700);
    let during = host_view();
    lab::down(&p).expect("down");
    assert_gone(&p);
    let after = host_view();
    assert_eq!(before, during, "the running lab changed the machine's namespace");
    assert_eq!(
        before, after,
        "the lab's life cycle changed the machine's namespace"
    );
}

#[test]
fn two_ups_racing_for_one_prefix_make_one_lab() {
    if !privileged("race") {
        return;
    }
    let p = prefix("race");
    let cfg = LabConfig::reference();
    // Both released at once: without it, one `up` may be done before the other starts.
    let start = std::sync::Barrier::new(2);
    let results: Vec<Result<Lab, LabError>> = std::thread::scope(|s| {
        let ups: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    Lab::up(&cfg, &p, NatKind::Ebpf, &mut |_| {})
                })
            })
            .collect();
        ups.into_iter().map(|h| h.join().expect("no panic")).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(ToString::to_string)
        .collect();
    assert_eq!(ok, 1, "exactly one lab: {refused:?}");
    // Refused before it touched anything: the prefix's state (or a namespace) was taken.
    assert!(
        matches!(
            results.iter().find_map(|r| r.as_ref().err()),
            Some(LabError::Exists(_) | LabError::NamespaceTaken(_))
        ),
        "{refused:?}"
    );
    // The winner is whole and works.
    let lab = Lab::open(&p).unwrap();
    let checks = probe::check(&lab, std::time::Duration::from_secs(3)).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    lab::down(&p).unwrap();
    assert_gone(&p);
}

#[test]
fn prefixes_cannot_name_paths() {
    for bad in ["../x-", "a/b-", "/abs-", ".hidden-", "sp ace-", ""] {
        let e = LabConfig::validate_prefix(bad).expect_err(bad);
        assert!(e.to_string().contains("prefix"), "{bad}: {e}");
    }
    LabConfig::validate_prefix("ok-1.b_").unwrap();
}
