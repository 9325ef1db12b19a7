//! The dual-stack lab (`netns-user/labs/dual-stack.toml`) in a live lab: IPv6 addresses usable
//! as soon as `up` returns (no duplicate address detection), IPv6 routed by the router from
//! red to lan untranslated, `status` showing IPv6 addresses and routes, and the scenario's
//! IPv4 exchanges (`check`) passing as in the reference lab, with the eBPF NAT and the kernel's.

use std::{
    net::{Ipv6Addr, SocketAddrV6, UdpSocket},
    time::Duration,
};

use netns_tests::{LabGuard, in_ns, netns_nat_ok, privileged};
use netns_user::{config::LabConfig, nat::NatKind};

const RED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, 0, 1);
const LAN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1, 0, 0, 0, 0, 0, 3);

fn lab(tag: &str, nat: NatKind) -> LabGuard {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../netns-user/labs/dual-stack.toml"
    ))
    .expect("the dual-stack lab file");
    let cfg = LabConfig::parse(&text).expect("the dual-stack lab parses");
    LabGuard::up_with(&cfg, tag, nat)
}

fn dual_stack_routes_ipv6_and_keeps_the_ipv4_scenario(nat: NatKind, tag: &str) {
    let g = lab(tag, nat);
    // Bound at once: a tentative address (still under DAD) cannot be.
    let lan = in_ns(&g.lab.ns("lan"), || {
        let s = UdpSocket::bind(SocketAddrV6::new(LAN6, 7600, 0, 0)).expect("lan's IPv6 address is usable");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    in_ns(&g.lab.ns("red"), || {
        let s = UdpSocket::bind(SocketAddrV6::new(RED6, 46000, 0, 0)).expect("red's IPv6 address is usable");
        for _ in 0..3 {
            s.send_to(b"over IPv6", SocketAddrV6::new(LAN6, 7600, 0, 0))
                .unwrap();
        }
    });
    let mut buf = [0u8; 64];
    let (n, from) = lan.recv_from(&mut buf).expect("red's IPv6 datagram reached lan");
    assert_eq!(&buf[..n], b"over IPv6");
    // Routed, not translated: lan sees red's own address.
    assert_eq!(from, SocketAddrV6::new(RED6, 46000, 0, 0).into());

    let (out, _) = netns_nat_ok(&["status", "--prefix", g.prefix(), "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = st.to_string();
    for want in [
        "fd00:15::1/64",
        "fd00:15::fe/64",
        "fd00:1::3/64",
        "::/0",
        "fd00:15::fe",
    ] {
        assert!(text.contains(want), "status lacks {want}: {text}");
    }
    assert!(
        !text.contains("fe80:"),
        "link-local addresses and routes are noise: {text}"
    );

    let (out, _) = netns_nat_ok(&["check", "--prefix", g.prefix()]);
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn the_dual_stack_lab_routes_ipv6_and_keeps_its_ipv4_nat_ebpf() {
    if !privileged("dual_stack_ebpf") {
        return;
    }
    dual_stack_routes_ipv6_and_keeps_the_ipv4_scenario(NatKind::Ebpf, "dse");
}

#[test]
fn the_dual_stack_lab_routes_ipv6_and_keeps_its_ipv4_nat_iptables() {
    if !privileged("dual_stack_iptables") {
        return;
    }
    dual_stack_routes_ipv6_and_keeps_the_ipv4_scenario(NatKind::Iptables, "dsi");
}
