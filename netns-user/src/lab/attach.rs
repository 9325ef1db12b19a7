//! `nat attach`: the eBPF NAT on a namespace netns-nat did not make (`ip netns add`, a
//! container, any other tool). A "lab" of one router: the state directory and pins are the
//! lab's, the namespace and everything in it are not, so `nat detach` (or `down`) removes
//! only the programs, pins, agent and state that `attach` added.

use std::{
    fs,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{Lab, LabError, LabState, Result, down, require_root};
use crate::{
    bpf,
    config::{
        Cidr, ConfigError, EbpfNatSpec, FastPath, ForwardSpec, LabConfig, LogLevel, NamespaceSpec, NatSpec,
    },
    nat::{NatError, NatKind, NatTarget},
    ops::agent,
    sys::{netlink, netns},
};

/// What `nat attach` is given.
#[derive(Debug, Clone)]
pub struct AttachSpec {
    /// The router namespace, as `ip netns list` names it.
    pub netns: String,
    pub uplink: String,
    pub internal: Vec<Cidr>,
    pub forwards: Vec<ForwardSpec>,
    pub fast_path: FastPath,
    pub log_level: LogLevel,
}

fn refuse(why: String) -> LabError {
    LabError::Nat(Box::new(NatError::Unsupported(why)))
}

/// Where an attached NAT runs, read from the kernel: the router's interfaces with an address
/// in an internal prefix (hairpin hooks), and the ports of those that are bridges (the
/// fast path's). The far ends of the ports are not known, so the fast path redirects with
/// plain bpf_redirect.
pub(super) fn target<'a>(prefix: &'a str, nat: &'a NatSpec) -> Result<NatTarget<'a>> {
    let router_ns = nat.router.clone();
    let snap = netlink::in_ns(&router_ns, |r| async move { r.snapshot().await })?;
    let internal_ifaces: Vec<String> = snap
        .links
        .iter()
        .filter(|l| {
            l.addresses.iter().any(|a| {
                a.parse::<Cidr>()
                    .is_ok_and(|c| nat.internal.iter().any(|n| n.0.contains(c.0.addr)))
            })
        })
        .map(|l| l.name.clone())
        .collect();
    let bridge_ports = snap
        .links
        .iter()
        .filter_map(|l| {
            let master = l.master.as_ref()?;
            let is_bridge = snap
                .links
                .iter()
                .any(|b| &b.name == master && b.kind.as_deref() == Some("bridge"));
            (is_bridge && internal_ifaces.contains(master)).then(|| (l.name.clone(), master.clone()))
        })
        .collect();
    Ok(NatTarget {
        prefix,
        router_ns,
        nat,
        internal_ifaces,
        bridge_ports,
        port_peers: Vec::new(),
        uplink_peer: None,
    })
}

impl Lab {
    /// Puts the eBPF NAT on existing namespace `spec.netns` as lab `prefix`. Nothing in the
    /// namespace is created or changed but the programs attached (TCX links, pinned under
    /// the lab); on error, whatever was attached is removed again.
    pub fn attach(spec: &AttachSpec, prefix: &str, progress: &mut dyn FnMut(&str)) -> Result<Lab> {
        require_root()?;
        LabConfig::validate_prefix(prefix)?;
        if !netns::exists(&spec.netns) {
            return Err(refuse(format!(
                "no namespace {:?} (see `ip netns list`; create it with `ip netns add`)",
                spec.netns
            )));
        }
        if spec.fast_path == FastPath::Xdp {
            return Err(refuse(
                "--fast-path xdp changes offloads on the far ends of the router's veths, which an \
                 attached NAT does not own: use tc (the default) or off"
                    .into(),
            ));
        }
        let config = LabConfig {
            namespaces: vec![NamespaceSpec {
                name: spec.netns.clone(),
            }],
            bridges: Vec::new(),
            veths: Vec::new(),
            routes: Vec::new(),
            sysctls: Vec::new(),
            nat: Some(NatSpec {
                router: spec.netns.clone(),
                uplink: spec.uplink.clone(),
                internal: spec.internal.clone(),
                forwards: spec.forwards.clone(),
                ebpf: EbpfNatSpec {
                    fast_path: spec.fast_path,
                    log_level: spec.log_level,
                    ..EbpfNatSpec::default()
                },
                routed_fast_path: FastPath::Off,
            }),
            attached: true,
        };
        config.validate()?;
        let nat = config.nat.as_ref().expect("made with a [nat]");

        // What the kernel has must fit: the uplink with an address, an internal interface,
        // and no NAT of ours there already (two would translate twice).
        let t = target(prefix, nat)?;
        let uplink_addrs = netlink::in_ns(
            &spec.netns,
            |r| async move { r.ipv4_addresses(&spec.uplink).await },
        )?;
        if uplink_addrs.is_empty() {
            return Err(LabError::Config(ConfigError::UplinkWithoutAddress(
                spec.uplink.clone(),
            )));
        }
        if t.internal_ifaces.is_empty() {
            return Err(refuse(format!(
                "no interface of namespace {} has an address in {}: the NAT would have no inside",
                spec.netns,
                spec.internal
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(p) = bpf::attached_programs(&spec.netns)?
            .iter()
            .find(|p| p.label.starts_with("nat_") || p.label.starts_with("xdp_fast"))
        {
            return Err(refuse(format!(
                "namespace {} already runs netns-nat's NAT ({}): `netns-nat list` shows which lab",
                spec.netns, p.label
            )));
        }
        let forwarding = netns::run_in(&spec.netns, || {
            fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        })?
        .unwrap_or_default();
        if forwarding.trim() != "1" {
            progress(&format!(
                "note: net.ipv4.ip_forward is off in {}: the NAT translates, but the router will \
                 not forward (netns-nat leaves the namespace's settings as they are)",
                spec.netns
            ));
        }

        let mut lab = Lab {
            config: config.clone(),
            state: LabState {
                prefix: prefix.to_owned(),
                nat: NatKind::Ebpf,
                // None of the namespaces is the lab's: `down` deletes none.
                namespaces: Vec::new(),
                ready: false,
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            },
        };
        lab.claim()?;
        let res = (|| -> Result<()> {
            progress(&format!(
                "attaching the eBPF NAT in {}: uplink {}, inside {}",
                spec.netns,
                spec.uplink,
                t.internal_ifaces.join(", ")
            ));
            bpf::attach_uplink_counters(&spec.netns, &spec.uplink, prefix)?;
            let backend = NatKind::Ebpf.backend().expect("the eBPF backend");
            backend.apply(&t)?;
            agent::start(prefix)?;
            Ok(())
        })();
        match res {
            Ok(()) => {
                lab.state.ready = true;
                lab.save()?;
                Ok(lab)
            }
            Err(e) => {
                progress(&format!("failed ({e}); removing what was attached"));
                if let Err(cleanup) = down(prefix) {
                    progress(&format!("cleanup after the failure also failed: {cleanup}"));
                }
                Err(e)
            }
        }
    }
}
