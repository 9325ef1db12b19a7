//! A lab: namespaces, links, addresses, routes and sysctls built from a [`LabConfig`] over
//! rtnetlink, a NAT backend in the router, and the state that `down` and `status` read.
//!
//! Everything is created inside namespaces the lab owns; the machine's own namespace is
//! only ever read. A failure part-way removes whatever was made.

use std::{
    fs, io,
    os::fd::AsRawFd as _,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use crate::sys::netlink::{NetlinkError, NsSnapshot};
use crate::{
    bpf::{self, EbpfError, UplinkCounters},
    config::{self, ConfigError, FastPath, LabConfig, LogLevel},
    nat::{NatError, NatKind, NatTarget},
    ops::agent::{self, AgentError, Resumed},
    sys::netlink,
    sys::netns::{self, NetnsError},
};

mod attach;
pub use attach::AttachSpec;

/// Where labs keep their state, one directory per prefix (tmpfs: gone at reboot, as are
/// the namespaces themselves).
pub use crate::sys::paths::{STATE_ROOT, state_dir};
/// The prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "nn-";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("netns-nat needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_BPF): run it as root")]
    NotRoot,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "a lab with prefix {0:?} already exists: use another --prefix, or remove it with \
         `netns-nat down --prefix {0}`"
    )]
    Exists(String),
    #[error(
        "namespace {0} already exists (another lab, or something else on this machine): \
         choose another --prefix"
    )]
    NamespaceTaken(String),
    #[error("no lab with prefix {0:?} (see `netns-nat list`)")]
    NoSuchLab(String),
    #[error("--nat {0} needs a [nat] section in the lab file")]
    NoNatSection(NatKind),
    #[error(
        "[nat] routed_fast_path is the forwarding of --nat none; with --nat {0} use [nat.ebpf] \
         fast_path (the eBPF NAT's own)"
    )]
    RoutedWithNat(NatKind),
    #[error("lab state {path}: {detail}")]
    State { path: PathBuf, detail: String },
    #[error("sysctl {key} in namespace {ns}: {source}")]
    Sysctl {
        ns: String,
        key: String,
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    // Boxed: these carry aya's errors and would make every lab Result large.
    #[error(transparent)]
    Nat(Box<NatError>),
    #[error(transparent)]
    Ebpf(Box<EbpfError>),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl From<NatError> for LabError {
    fn from(e: NatError) -> Self {
        LabError::Nat(Box::new(e))
    }
}

impl From<EbpfError> for LabError {
    fn from(e: EbpfError) -> Self {
        LabError::Ebpf(Box::new(e))
    }
}

type Result<T, E = LabError> = std::result::Result<T, E>;

/// Refuses to go on unless running as root.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// The IPv6 default of a namespace's new links: whether they run duplicate address
/// detection.
const NO_DAD: &str = "/proc/sys/net/ipv6/conf/default/accept_dad";

/// What a lab records about itself in `STATE_ROOT/<prefix>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    pub prefix: String,
    pub nat: NatKind,
    /// Full names of every namespace the lab creates (written before the first is made, so
    /// `down` finds a half-built lab's too).
    pub namespaces: Vec<String>,
    /// Whether `up` finished.
    pub ready: bool,
    /// Seconds since the Unix epoch when `up` started.
    pub created_unix: u64,
}

/// A lab that exists (or is being built).
#[derive(Debug, Clone)]
pub struct Lab {
    pub config: LabConfig,
    pub state: LabState,
}

fn state_err(path: &Path, detail: impl ToString) -> LabError {
    LabError::State {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// Prefixes of the labs on this machine.
pub fn list() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(STATE_ROOT)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("state.json").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

impl Lab {
    /// Full name of lab namespace `name` (`prefix` + `name`).
    pub fn ns(&self, name: &str) -> String {
        self.config.netns_name(&self.state.prefix, name)
    }

    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// Builds the lab and applies `nat`. `progress` hears about each step. On error,
    /// everything made so far is removed before the error is returned.
    pub fn up(config: &LabConfig, prefix: &str, nat: NatKind, progress: &mut dyn FnMut(&str)) -> Result<Lab> {
        require_root()?;
        LabConfig::validate_prefix(prefix)?;
        config.validate()?;
        if nat != NatKind::None && config.nat.is_none() {
            return Err(LabError::NoNatSection(nat));
        }
        if nat != NatKind::None && config.nat.as_ref().is_some_and(|n| !n.routed_fast_path.is_off()) {
            return Err(LabError::RoutedWithNat(nat));
        }
        let lab = Lab {
            config: config.clone(),
            state: LabState {
                prefix: prefix.to_owned(),
                nat,
                namespaces: config
                    .namespaces
                    .iter()
                    .map(|n| format!("{prefix}{}", n.name))
                    .collect(),
                ready: false,
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            },
        };
        // Taken namespaces are refused before anything is written, so the error leaves the
        // other lab (or whatever owns the name) alone.
        if let Some(taken) = lab.state.namespaces.iter().find(|n| netns::exists(n)) {
            return Err(LabError::NamespaceTaken(taken.clone()));
        }
        lab.claim()?;
        match lab.build(progress) {
            Ok(()) => {
                let mut lab = lab;
                lab.state.ready = true;
                lab.save()?;
                Ok(lab)
            }
            Err(e) => {
                progress(&format!("failed ({e}); removing what was made"));
                if let Err(cleanup) = down(prefix) {
                    progress(&format!("cleanup after the failure also failed: {cleanup}"));
                }
                Err(e)
            }
        }
    }

    /// Reads a lab's state and config.
    pub fn open(prefix: &str) -> Result<Lab> {
        let dir = state_dir(prefix);
        let state_path = dir.join("state.json");
        let text = fs::read_to_string(&state_path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LabError::NoSuchLab(prefix.to_owned()),
            _ => state_err(&state_path, e),
        })?;
        let state: LabState = serde_json::from_str(&text).map_err(|e| state_err(&state_path, e))?;
        let cfg_path = dir.join("lab.toml");
        let cfg_text = fs::read_to_string(&cfg_path).map_err(|e| state_err(&cfg_path, e))?;
        let config = LabConfig::parse(&cfg_text).map_err(|e| state_err(&cfg_path, e))?;
        Ok(Lab { config, state })
    }

    /// Creates the state directory: the lock that makes a prefix one lab's.
    fn claim(&self) -> Result<()> {
        fs::create_dir_all(STATE_ROOT).map_err(|e| state_err(Path::new(STATE_ROOT), e))?;
        let dir = state_dir(self.prefix());
        // Root's only: the lab's files say what runs where.
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(LabError::Exists(self.prefix().to_owned()));
            }
            Err(e) => return Err(state_err(&dir, e)),
        }
        let cfg_path = dir.join("lab.toml");
        fs::write(&cfg_path, self.config.to_toml()).map_err(|e| state_err(&cfg_path, e))?;
        self.save()
    }

    /// Writes state.json whole or not at all (a reader never sees half of it).
    fn save(&self) -> Result<()> {
        let path = state_dir(self.prefix()).join("state.json");
        let tmp = path.with_extension("json.new");
        let text = serde_json::to_string_pretty(&self.state).expect("lab state serialises");
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| state_err(&path, e))
    }

    fn build(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let cfg = &self.config;
        progress(&format!("creating {} namespaces", cfg.namespaces.len()));
        let ipv6 = cfg
            .interfaces()
            .iter()
            .any(|i| i.addresses.iter().any(|a| a.0.is_ipv6()));
        for ns in &self.state.namespaces {
            netns::create(ns)?;
            netlink::in_ns(ns, |r| async move { r.set_up("lo").await })?;
            if ipv6 {
                // No duplicate address detection on the links made next, so that their
                // link-local addresses, which neighbour discovery and routers use, are
                // usable at once too (a lab's own addresses are added without it).
                netns::run_in(ns, || fs::write(NO_DAD, "0"))?.map_err(|source| LabError::Sysctl {
                    ns: ns.clone(),
                    key: "net.ipv6.conf.default.accept_dad".into(),
                    source,
                })?;
            }
        }

        progress(&format!(
            "creating {} bridges and {} veth pairs",
            cfg.bridges.len(),
            cfg.veths.len()
        ));
        for br in &cfg.bridges {
            netlink::in_ns(&self.ns(&br.namespace), |r| async move {
                r.add_bridge(&br.name).await
            })?;
        }
        for v in &cfg.veths {
            let peer_ns = netns::open(&self.ns(&v.b.namespace))?;
            let fd = peer_ns.as_raw_fd();
            netlink::in_ns(&self.ns(&v.a.namespace), |r| async move {
                r.add_veth(&v.a.name, &v.b.name, fd).await
            })?;
        }

        progress("enslaving ports, adding addresses, setting links up");
        for br in &cfg.bridges {
            netlink::in_ns(&self.ns(&br.namespace), |r| async move {
                for a in &br.addresses {
                    r.add_address(&br.name, a.0).await?;
                }
                r.set_up(&br.name).await
            })?;
        }
        for end in cfg.veths.iter().flat_map(|v| [&v.a, &v.b]) {
            netlink::in_ns(&self.ns(&end.namespace), |r| async move {
                if let Some(master) = &end.master {
                    r.set_master(&end.name, master).await?;
                }
                for a in &end.addresses {
                    r.add_address(&end.name, a.0).await?;
                }
                r.set_up(&end.name).await
            })?;
        }

        if !cfg.sysctls.is_empty() {
            progress(&format!("setting {} sysctls", cfg.sysctls.len()));
        }
        for s in &cfg.sysctls {
            let ns = self.ns(&s.namespace);
            // /proc/sys/net shows the namespace of the thread that opens it.
            let path = format!("/proc/sys/{}", s.key.replace('.', "/"));
            netns::run_in(&ns, || fs::write(&path, &s.value))?.map_err(|source| LabError::Sysctl {
                ns: ns.clone(),
                key: s.key.clone(),
                source,
            })?;
        }

        if !cfg.routes.is_empty() {
            progress(&format!("adding {} routes", cfg.routes.len()));
        }
        for rt in &cfg.routes {
            netlink::in_ns(&self.ns(&rt.namespace), |r| async move {
                r.add_route(rt.to.0, rt.via, rt.dev.as_deref()).await
            })?;
        }

        if let Some(target) = self.nat_target() {
            let router = &target.router_ns;
            progress(&format!(
                "attaching the eBPF uplink counters to {} in {router}",
                target.nat.uplink
            ));
            bpf::attach_uplink_counters(router, &target.nat.uplink, self.prefix())?;
            if let Some(backend) = self.state.nat.backend() {
                progress(&format!("applying {} NAT in {router}", self.state.nat));
                backend.apply(&target)?;
            } else if target.nat.routed_fast_path != FastPath::Off {
                progress(&format!(
                    "attaching the eBPF forwarding ({}, no NAT) in {router}",
                    target.nat.routed_fast_path.name()
                ));
                crate::nat::routed::apply(&target)?;
            }
            if self.runs_ebpf() {
                agent::start(self.prefix())?;
            }
        }
        Ok(())
    }

    /// Brings back what runs beside the lab's NAT if it died (the eBPF NAT's agent).
    pub fn resume(&self) -> Result<Resumed> {
        require_root()?;
        match (self.runs_ebpf(), self.nat_target()) {
            (true, Some(t)) => Ok(agent::resume(t.prefix)?),
            _ => Ok(Resumed::Nothing),
        }
    }

    /// Swaps this build's NAT dataplane into the running lab, keeping its state; with
    /// `log_level`, the programs' diagnostics from that level up (recorded in the stored
    /// configuration only if the swap succeeds).
    pub fn upgrade(&mut self, log_level: Option<LogLevel>) -> Result<String> {
        require_root()?;
        let mut next = self.config.clone();
        if let (Some(l), Some(n)) = (log_level, next.nat.as_mut()) {
            n.ebpf.log_level = l;
        }
        if self.state.nat == NatKind::None || next.nat.is_none() {
            return Err(
                NatError::Unsupported(format!("lab {:?} runs no NAT to upgrade", self.prefix())).into(),
            );
        }
        if self.state.nat != NatKind::Ebpf {
            return Err(NatError::Unsupported(
                "the kernel's NAT has nothing of this build to upgrade (only --nat ebpf does)".into(),
            )
            .into());
        }
        let upgraded = {
            let lab = Lab {
                config: next.clone(),
                state: self.state.clone(),
            };
            let t = lab
                .nat_target()
                .ok_or_else(|| NatError::Unsupported("no NAT target".into()))?;
            // The agent is stopped first, so that no live change runs during the swap (and
            // the configuration it will read can be stored); `resume` below starts it.
            agent::stop(t.prefix);
            crate::nat::ebpf::EbpfNat.upgrade(&t)
        };
        // What runs beside the dataplane comes back either way: on the new configuration
        // once the swap is done, else on the old one.
        let res = match upgraded {
            Ok(done) => {
                config::store(self.prefix(), &next)?;
                self.config = next;
                Ok(done)
            }
            Err(e) => Err(LabError::from(e)),
        };
        let resumed = self.resume();
        let done = res?;
        Ok(match resumed? {
            Resumed::Started(pid) | Resumed::Running(pid) => format!("{done}\n  agent restarted (pid {pid})"),
            Resumed::Nothing => done,
        })
    }

    /// Whether eBPF programs carry the lab's routed traffic, with the NAT's counters and an
    /// agent that keeps them in step with the router: the eBPF NAT, or plain forwarding with
    /// a fast path.
    pub fn runs_ebpf(&self) -> bool {
        self.state.nat == NatKind::Ebpf
            || (self.state.nat == NatKind::None
                && self
                    .config
                    .nat
                    .as_ref()
                    .is_some_and(|n| n.routed_fast_path != FastPath::Off))
    }

    /// Where the lab's NAT lives, if it has a `[nat]` section.
    pub fn nat_target(&self) -> Option<NatTarget<'_>> {
        let nat = self.config.nat.as_ref()?;
        if self.config.attached {
            return attach::target(self.prefix(), nat).ok();
        }
        let internal_ifaces = self
            .config
            .interfaces()
            .into_iter()
            .filter(|i| {
                i.namespace == nat.router
                    && i.addresses
                        .iter()
                        .filter_map(|a| a.0.v4())
                        .any(|a| nat.internal.iter().any(|n| n.0.contains(a.addr)))
            })
            .map(|i| i.name.to_owned())
            .collect::<Vec<String>>();
        let bridge_ports = self
            .config
            .veths
            .iter()
            .flat_map(|v| [&v.a, &v.b])
            .filter(|e| {
                e.namespace == nat.router && e.master.as_ref().is_some_and(|m| internal_ifaces.contains(m))
            })
            .filter_map(|e| Some((e.name.clone(), e.master.clone()?)))
            .collect::<Vec<_>>();
        // The far end of the router's veth `name`, if it is one.
        let peer = |name: &str| {
            self.config
                .veths
                .iter()
                .flat_map(|v| [(&v.a, &v.b), (&v.b, &v.a)])
                .find(|(ours, _)| ours.namespace == nat.router && ours.name == name)
                .map(|(_, far)| (self.ns(&far.namespace), far.name.clone()))
        };
        let port_peers = bridge_ports.iter().filter_map(|(p, _)| peer(p)).collect();
        let uplink_peer = peer(&nat.uplink);
        Some(NatTarget {
            prefix: self.prefix(),
            router_ns: self.ns(&nat.router),
            nat,
            internal_ifaces,
            bridge_ports,
            port_peers,
            uplink_peer,
        })
    }

    /// What is there now: namespaces with their links and routes, NAT, counters.
    pub fn status(&self) -> Result<LabStatus> {
        let mut namespaces = Vec::new();
        for spec in &self.config.namespaces {
            let full = self.ns(&spec.name);
            let snapshot = if netns::exists(&full) {
                Some(netlink::in_ns(&full, |r| async move { r.snapshot().await })?)
            } else {
                None
            };
            namespaces.push(NsStatus {
                name: spec.name.clone(),
                netns: full,
                present: snapshot.is_some(),
                links: snapshot.as_ref().map(|s| s.links.clone()).unwrap_or_default(),
                routes: snapshot.map(|s| s.routes).unwrap_or_default(),
            });
        }
        let nat = self.config.nat.as_ref();
        let target = self.nat_target();
        let nat_rules = match (&target, self.state.nat.backend()) {
            (Some(t), Some(b)) => Some(b.describe(t)?),
            (Some(t), None) => crate::nat::routed::describe(t)?,
            _ => None,
        };
        let ebpf_status = match &target {
            Some(t) if self.state.nat == NatKind::Ebpf => Some(crate::ops::status::status(t)?),
            _ => None,
        };
        Ok(LabStatus {
            prefix: self.prefix().to_owned(),
            ready: self.state.ready,
            nat: self.state.nat,
            router: nat.map(|n| self.ns(&n.router)),
            uplink: nat.map(|n| n.uplink.clone()),
            uplink_address: self.config.uplink_address().map(|a| a.to_string()),
            namespaces,
            nat_rules,
            uplink_counters: nat.and_then(|_| bpf::read_uplink_counters(self.prefix()).ok()),
            pin_dir: bpf::pin_dir(self.prefix()).display().to_string(),
            ebpf: ebpf_status,
        })
    }
}

/// `status --json`: field names are part of the interface (see README).
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub prefix: String,
    pub ready: bool,
    pub nat: NatKind,
    pub router: Option<String>,
    pub uplink: Option<String>,
    pub uplink_address: Option<String>,
    pub namespaces: Vec<NsStatus>,
    /// The NAT as the backend describes it (kernel backends: their rules; eBPF: hooks,
    /// fast-path mode, tables and the programs attached).
    pub nat_rules: Option<String>,
    pub uplink_counters: Option<UplinkCounters>,
    pub pin_dir: String,
    /// eBPF labs: the NAT as it runs (address, fast path, timeouts, forwards, tables,
    /// programs attached, the agent).
    pub ebpf: Option<crate::ops::status::EbpfStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NsStatus {
    /// Name in the lab file.
    pub name: String,
    /// Name of the network namespace (prefix + name).
    pub netns: String,
    pub present: bool,
    pub links: Vec<netlink::LinkStatus>,
    pub routes: Vec<netlink::RouteStatus>,
}

/// What `down` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub namespaces: Vec<String>,
    pub pins_removed: bool,
    pub state_removed: bool,
}

impl DownReport {
    pub fn found_anything(&self) -> bool {
        !self.namespaces.is_empty() || self.pins_removed || self.state_removed
    }
}

/// Removes every namespace, pinned object and state file of lab `prefix`, and nothing
/// else. Works on a half-built lab; a lab that is not there is not an error.
pub fn down(prefix: &str) -> Result<DownReport> {
    require_root()?;
    LabConfig::validate_prefix(prefix)?;
    let dir = state_dir(prefix);
    let names: Vec<String> = match fs::read_to_string(dir.join("state.json")) {
        Ok(text) => match serde_json::from_str::<LabState>(&text) {
            Ok(state) => state.namespaces,
            Err(_) => fallback_names(prefix),
        },
        Err(_) => fallback_names(prefix),
    };
    // An attached NAT's namespace is never the lab's to delete, whatever state.json says.
    let attached = config::load_stored(prefix).is_ok_and(|c| c.attached);
    let names = if attached { Vec::new() } else { names };
    let mut report = DownReport::default();
    agent::stop(prefix);
    // Links, addresses, routes and kernel NAT rules all live in the namespaces.
    for name in names {
        if netns::delete(&name)? {
            report.namespaces.push(name);
        }
    }
    report.pins_removed = bpf::remove_pins(prefix).map_err(|e| state_err(&bpf::pin_dir(prefix), e))?;
    report.state_removed = match fs::remove_dir_all(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(state_err(&dir, e)),
    };
    Ok(report)
}

/// With no readable state, the lab can only be the reference one: its names, nothing more.
fn fallback_names(prefix: &str) -> Vec<String> {
    LabConfig::reference()
        .namespaces
        .iter()
        .map(|n| format!("{prefix}{}", n.name))
        .collect()
}
