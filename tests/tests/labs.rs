//! Lab life cycle: labs side by side, `down` that leaves nothing, rollback on failure,
//! taken names refused.

use std::time::Duration;

use netns_tests::{LabGuard, assert_gone, prefix, privileged};
use netns_user::{
    config::LabConfig,
    lab::{self, Lab, LabError},
    nat::NatKind,
    probe,
    sys::netns,
};

fn all_pass(lab: &Lab) {
    let checks = probe::check(lab, Duration::from_secs(3)).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{}: {checks:#?}", lab.prefix());
}

#[test]
fn two_labs_side_by_side_and_down_of_one_leaves_the_other() {
    if !privileged("two_labs") {
        return;
    }
    let a = LabGuard::up("pa", NatKind::Iptables);
    let b = LabGuard::up("pb", NatKind::Nftables);
    all_pass(&a.lab);
    all_pass(&b.lab);

    let report = lab::down(a.prefix()).unwrap();
    assert_eq!(report.namespaces.len(), 4);
    assert!(report.pins_removed && report.state_removed);
    assert_gone(a.prefix());
    // b is untouched and still translates.
    for ns in &b.lab.state.namespaces {
        assert!(netns::exists(ns), "{ns} vanished with the other lab");
    }
    all_pass(&b.lab);
}

#[test]
fn down_leaves_nothing_even_of_a_half_built_lab() {
    if !privileged("down_half_built") {
        return;
    }
    let g = LabGuard::up("half", NatKind::Iptables);
    let p = g.prefix().to_owned();
    // Break it: one namespace already gone, as after a crash mid-way.
    assert!(netns::delete(&g.lab.ns("blue")).unwrap());
    let status = g.lab.status().unwrap();
    assert!(status.namespaces.iter().any(|n| n.name == "blue" && !n.present));

    let report = lab::down(&p).unwrap();
    assert_eq!(report.namespaces.len(), 3, "{report:?}");
    assert_gone(&p);
    // A second down finds nothing and is not an error.
    assert!(!lab::down(&p).unwrap().found_anything());
}

#[test]
fn a_failure_half_way_rolls_everything_back() {
    if !privileged("rollback") {
        return;
    }
    // Valid on paper, refused by the kernel late in `up`: after namespaces, links and
    // addresses exist.
    let mut cfg = LabConfig::reference();
    cfg.sysctls[0].key = "net.ipv4.no_such_setting".into();
    let p = prefix("rb");
    let err = Lab::up(&cfg, &p, NatKind::Iptables, &mut |_| {}).unwrap_err();
    assert!(matches!(err, LabError::Sysctl { .. }), "{err}");
    assert_gone(&p);

    // A route the kernel refuses (gateway not on the link it names) fails later still.
    let mut cfg = LabConfig::reference();
    cfg.routes[0].dev = Some("lo".into());
    let err = Lab::up(&cfg, &p, NatKind::Nftables, &mut |_| {}).unwrap_err();
    assert!(matches!(err, LabError::Netlink(_)), "{err}");
    assert_gone(&p);
}

#[test]
fn a_taken_prefix_is_refused_and_the_lab_left_alone() {
    if !privileged("taken") {
        return;
    }
    let g = LabGuard::up("tk", NatKind::Iptables);
    let err = Lab::up(
        &LabConfig::reference(),
        g.prefix(),
        NatKind::Nftables,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, LabError::NamespaceTaken(_)), "{err}");
    // Same state file, same NAT, still working.
    assert_eq!(Lab::open(g.prefix()).unwrap().state.nat, NatKind::Iptables);
    all_pass(&g.lab);

    // A stray namespace of the same name (not a lab) is refused too, and kept.
    let p = prefix("st");
    netns::create(&format!("{p}lan")).unwrap();
    let err = Lab::up(&LabConfig::reference(), &p, NatKind::Iptables, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, LabError::NamespaceTaken(ref n) if *n == format!("{p}lan")),
        "{err}"
    );
    assert!(netns::exists(&format!("{p}lan")));
    assert!(!netns::exists(&format!("{p}red")));
    netns::delete(&format!("{p}lan")).unwrap();
    assert_gone(&p);
}
