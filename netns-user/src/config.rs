//! The lab description: a TOML file of namespaces, bridges, veth pairs, routes, sysctls and
//! NAT settings. [`LabConfig::parse`] refuses anything the kernel would refuse later, so a
//! bad file fails before anything is created.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use netns_common::net::{IpCidr, Ipv4Cidr, NetError, validate_ifname, validate_ns_name};
use serde::{Deserialize, Serialize};

/// The built-in default: the reference scenario.
pub const REFERENCE_TOML: &str = include_str!("../labs/reference.toml");

/// Longest lab prefix accepted (namespace names are prefix + name).
pub const PREFIX_MAX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not a #[source]: its text is the message, printed once.
    #[error("invalid lab file: {0}")]
    Toml(toml::de::Error),
    #[error("the lab has no namespace")]
    NoNamespace,
    #[error("namespace name {name:?} {source}")]
    BadNamespaceName { name: String, source: NetError },
    #[error("namespace {0:?} is declared twice")]
    DuplicateNamespace(String),
    #[error("{what} names namespace {ns:?}, which is not declared under [[namespace]]")]
    UnknownNamespace { what: String, ns: String },
    #[error("interface name {name:?} in namespace {ns:?} {source}")]
    BadIfname {
        ns: String,
        name: String,
        source: NetError,
    },
    #[error("interface {name:?} appears twice in namespace {ns:?}")]
    DuplicateIfname { ns: String, name: String },
    #[error("{port:?} in namespace {ns:?} has master {master:?}, which is not a bridge there")]
    UnknownBridge {
        ns: String,
        port: String,
        master: String,
    },
    #[error(
        "route to {to} in namespace {ns:?}: gateway {via} is on none of the namespace's \
         networks (a forgotten netmask, such as /24, on its address?)"
    )]
    GatewayUnreachable { ns: String, to: IfAddr, via: IpAddr },
    #[error(
        "route to {to} in namespace {ns:?}: gateway {via} is of the other address family \
         (an IPv6 default route is written to = \"::/0\")"
    )]
    RouteFamilyMismatch { ns: String, to: IfAddr, via: IpAddr },
    #[error(
        "route to {to} in namespace {ns:?}: host bits are set; the network is {}",
        to.0.network()
    )]
    RouteNotNetwork { ns: String, to: IfAddr },
    #[error("route to {to} in namespace {ns:?}: device {dev:?} is not an interface there")]
    UnknownRouteDevice { ns: String, to: IfAddr, dev: String },
    #[error("route to {to} in namespace {ns:?} has neither `via` nor `dev`")]
    RouteWithoutNextHop { ns: String, to: IfAddr },
    #[error(
        "sysctl {0:?}: only per-namespace keys under net.ipv4. and net.ipv6. are allowed, \
         written with dots"
    )]
    BadSysctl(String),
    #[error("[nat] uplink {uplink:?} is not an interface of the router namespace {router:?}")]
    UnknownUplink { router: String, uplink: String },
    #[error("[nat] uplink {0:?} has no address to masquerade to")]
    UplinkWithoutAddress(String),
    #[error("[nat] needs at least one internal prefix")]
    NoInternalPrefix,
    #[error("[[nat.forward]] port {0}: ports must be 1 to 65535")]
    BadForwardPort(u16),
    #[error("[[nat.forward]] {protocol} port {port} is declared twice")]
    DuplicateForward { protocol: L4Proto, port: u16 },
    #[error(
        "[[nat.forward]] {protocol} ports {first} and {second} both go to {to}: an internal \
         endpoint has one external port (its mapping), so one forward"
    )]
    DuplicateTarget {
        protocol: L4Proto,
        first: u16,
        second: u16,
        to: std::net::SocketAddrV4,
    },
    #[error("[[nat.forward]] {protocol} port {port} goes to {to}, which is in no internal prefix of [nat]")]
    ForwardOutside {
        protocol: L4Proto,
        port: u16,
        to: std::net::SocketAddrV4,
    },
    #[error("[nat.ebpf] {0}")]
    BadEbpfNat(String),
    #[error("lab prefix {prefix:?} {why}")]
    BadPrefix { prefix: String, why: String },
    #[error("{what} cannot change while the NAT runs ({how})")]
    NotLive { what: String, how: &'static str },
    #[error("{what}: use `netns-nat forward add|del` to change port forwards while the NAT runs")]
    ForwardsNotApplied { what: String },
    #[error("{0} has no [nat] section")]
    NoNat(String),
    #[error("an attached NAT's configuration names its router namespace and nothing else: {0}")]
    Attached(String),
    #[error("the lab's stored configuration {path}: {detail}")]
    Stored { path: String, detail: String },
}

impl From<toml::de::Error> for ConfigError {
    fn from(e: toml::de::Error) -> Self {
        ConfigError::Toml(e)
    }
}

/// The configuration a lab stores in its state directory (what `up` built, with every live
/// change since): read by `status`, `down`, the agent and `up --resume`.
pub fn stored_path(prefix: &str) -> std::path::PathBuf {
    crate::sys::paths::state_dir(prefix).join("lab.toml")
}

pub fn load_stored(prefix: &str) -> Result<LabConfig, ConfigError> {
    let path = stored_path(prefix);
    let fail = |detail: String| ConfigError::Stored {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
    LabConfig::parse(&text).map_err(|e| fail(e.to_string()))
}

/// Replaces the stored configuration, atomically (a reader sees the old file or the new).
pub fn store(prefix: &str, config: &LabConfig) -> Result<(), ConfigError> {
    let path = stored_path(prefix);
    let tmp = path.with_extension("toml.new");
    let fail = |e: std::io::Error| ConfigError::Stored {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    std::fs::write(&tmp, config.to_toml()).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)
}

/// An IPv4 address with prefix length, written `a.b.c.d/len`; `default` means `0.0.0.0/0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(pub Ipv4Cidr);

/// An interface address or a route's destination, IPv4 (`a.b.c.d/len`, `default` for
/// `0.0.0.0/0`) or IPv6 (`fd00:15::1/64`, `::/0` for the IPv6 default route).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfAddr(pub IpCidr);

impl TryFrom<String> for IfAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for IfAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains(':') {
            return s.parse::<IpCidr>().map(IfAddr).map_err(|e| format!("{s:?}: {e}"));
        }
        // IPv4 as before: `default`, and the same words for its mistakes.
        s.parse::<Cidr>().map(|c| IfAddr(IpCidr::V4(c.0)))
    }
}

impl From<IfAddr> for String {
    fn from(c: IfAddr) -> String {
        c.to_string()
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpCidr::V4(c) => Cidr(c).fmt(f),
            IpCidr::V6(c) => c.fmt(f),
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "default" {
            return Ok(Cidr(Ipv4Cidr {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
            }));
        }
        s.parse::<Ipv4Cidr>().map(Cidr).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len == 0 && self.0.addr.is_unspecified() {
            f.write_str("default")
        } else {
            self.0.fmt(f)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// Its IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => netns_common::nat::PROTO_TCP,
            L4Proto::Udp => netns_common::nat::PROTO_UDP,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(netns_common::nat::proto_name(self.number()))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    #[serde(rename = "namespace", default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(rename = "bridge", default)]
    pub bridges: Vec<BridgeSpec>,
    #[serde(rename = "veth", default)]
    pub veths: Vec<VethSpec>,
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteSpec>,
    #[serde(rename = "sysctl", default)]
    pub sysctls: Vec<SysctlSpec>,
    #[serde(default)]
    pub nat: Option<NatSpec>,
    /// The NAT was put on a namespace netns-nat did not make (`nat attach`): the one
    /// namespace is the router, named as it is (no prefix), and its interfaces are the
    /// kernel's, not declared here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<IfAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VethSpec {
    pub a: VethEnd,
    pub b: VethEnd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VethEnd {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<IfAddr>,
    /// A bridge in the same namespace to enslave this end to.
    #[serde(default)]
    pub master: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub namespace: String,
    /// Destination network: `default` (IPv4) or `::/0` (IPv6) for the default route.
    pub to: IfAddr,
    #[serde(default)]
    pub via: Option<IpAddr>,
    #[serde(default)]
    pub dev: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysctlSpec {
    pub namespace: String,
    /// Dotted key, e.g. `net.ipv4.ip_forward`.
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatSpec {
    /// The namespace that routes and translates.
    pub router: String,
    /// The router's interface towards the outside; SNAT takes its address.
    pub uplink: String,
    /// Source prefixes that are masqueraded.
    pub internal: Vec<Cidr>,
    #[serde(rename = "forward", default)]
    pub forwards: Vec<ForwardSpec>,
    /// Settings of the eBPF NAT (the kernel backends use the kernel's own).
    #[serde(default)]
    pub ebpf: EbpfNatSpec,
    /// Without NAT (`--nat none`): where routed packets skip the router's stack (`tc`,
    /// `xdp`: an eBPF redirect driven by the kernel's FIB), or `off` (the default: the
    /// kernel forwards). `up --nat none --fast-path MODE` sets it.
    #[serde(default = "FastPath::off", skip_serializing_if = "FastPath::is_off")]
    pub routed_fast_path: FastPath,
}

/// Where established flows skip the bridge and routing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FastPath {
    /// At TCX ingress of the bridge ports and the uplink, with bpf_redirect.
    #[default]
    Tc,
    /// In XDP on the bridge ports and the uplink, through a DEVMAP. The lab turns GRO on
    /// and TX checksum offload off on the far ends of those veths (docs/fast-path.md).
    Xdp,
    /// Every packet takes the router's bridge and routing (the NAT still runs at TC).
    Off,
}

impl FastPath {
    /// `Off`, as a serde default.
    pub fn off() -> FastPath {
        FastPath::Off
    }

    pub fn is_off(&self) -> bool {
        *self == FastPath::Off
    }

    pub fn name(self) -> &'static str {
        match self {
            FastPath::Tc => "tc",
            FastPath::Xdp => "xdp",
            FastPath::Off => "off",
        }
    }
}

/// Filtering of inbound packets to a mapping (RFC 4787 section 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Only remotes the internal endpoint has sent to may answer (the default, as iptables).
    #[default]
    AddressAndPortDependent,
    /// Anyone may reach an internal endpoint through its mapping ("full cone").
    EndpointIndependent,
}

/// What to do with IP protocols without ports (GRE, ESP, SCTP ...) leaving by the uplink.
/// Never "pass": that would carry internal addresses out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unsupported {
    /// Address-only translation, as MASQUERADE does: one internal host at a time talks a
    /// protocol with a given remote.
    #[default]
    Nat,
    Drop,
}

/// What to do with packets from outside to internal addresses (a host on the uplink's
/// network with a route to the internal prefix via the router) that belong to no flow or
/// forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inbound {
    /// Dropped and counted (`drop_inbound`): nothing gets in but through a flow or a forward.
    #[default]
    Drop,
    /// Routed, as a plain router would.
    Route,
}

/// An inclusive port range written `min-max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ports {
    pub min: u16,
    pub max: u16,
}

impl TryFrom<String> for Ports {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?}: write a port range as min-max, e.g. 1024-65535");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (min, max) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if min > max {
            return Err(format!("{s:?}: the range is empty (min > max)"));
        }
        Ok(Ports { min, max })
    }
}

impl From<Ports> for String {
    fn from(p: Ports) -> String {
        format!("{}-{}", p.min, p.max)
    }
}

/// Idle timeouts in seconds (defaults from RFC 4787, 5382 and 5508).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutSpec {
    pub udp: u64,
    pub tcp_established: u64,
    pub tcp_transitory: u64,
    pub icmp: u64,
    /// Protocols without ports (address-only translation).
    pub other: u64,
    /// A flow until it is confirmed: replied to and, for TCP, through its handshake (for
    /// the others, still going after 2 s).
    pub unconfirmed: u64,
    /// Accept a UDP timeout under the RFC 4787 minimum of 120 s (for tests).
    pub allow_short: bool,
}

impl Default for TimeoutSpec {
    fn default() -> Self {
        TimeoutSpec {
            udp: 300,
            tcp_established: 7440,
            tcp_transitory: 240,
            icmp: 60,
            other: 600,
            unconfirmed: 30,
            allow_short: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfNatSpec {
    pub filtering: Filtering,
    pub unsupported: Unsupported,
    pub inbound: Inbound,
    /// New inbound flows one remote address may open per second (0: no bound).
    pub new_per_remote: u32,
    /// External ports for internal ports >= 1024.
    pub ports: Ports,
    /// External ports for internal ports < 1024.
    pub low_ports: Ports,
    /// External ICMP echo identifiers.
    pub icmp_ids: Ports,
    /// Capacity of the flow table.
    pub flows: u32,
    /// Capacity of the binding table (two entries per mapping).
    pub bindings: u32,
    pub timeouts: TimeoutSpec,
    /// How often the agent reclaims expired entries.
    pub sweep_interval_ms: u64,
    pub fast_path: FastPath,
    /// The programs' diagnostics (aya-log) from this level up, in the agent's log; fixed
    /// when the programs are loaded (`up`, `up --upgrade`).
    pub log_level: LogLevel,
}

/// Levels of the programs' diagnostics, as aya-log numbers them (0: off).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// None: the logging code is not even verified, so it costs nothing.
    #[default]
    Off = 0,
    /// A table or the port range exhausted.
    Error = 1,
    Warn = 2,
    /// New mappings, and the above.
    Info = 3,
    /// Every drop with its reason and addresses, and the above.
    Debug = 4,
    Trace = 5,
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl Default for EbpfNatSpec {
    fn default() -> Self {
        EbpfNatSpec {
            filtering: Filtering::default(),
            unsupported: Unsupported::default(),
            inbound: Inbound::default(),
            new_per_remote: 1000,
            ports: Ports {
                min: 1024,
                max: 65535,
            },
            low_ports: Ports { min: 1, max: 1023 },
            icmp_ids: Ports { min: 1, max: 65535 },
            flows: 262_144,
            bindings: 262_144,
            timeouts: TimeoutSpec::default(),
            sweep_interval_ms: 1000,
            fast_path: FastPath::default(),
            log_level: LogLevel::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    pub protocol: L4Proto,
    /// Port on the uplink's address.
    pub port: u16,
    /// Internal address and port it goes to.
    pub to: SocketAddrV4,
}

/// One interface of the lab, wherever it is declared.
#[derive(Clone, Debug, PartialEq)]
pub struct Interface<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub addresses: &'a [IfAddr],
}

impl LabConfig {
    /// This lab with its `[nat]` replaced by `new`, if everything that differs can change
    /// while the eBPF NAT runs (port ranges, timeouts, filtering, unsupported protocols,
    /// internal prefixes, the sweep interval) and the result validates. The router, the
    /// uplink, table sizes and the fast path are fixed at `up`; forwards change through
    /// `forward add|del`, one at a time, with their own checks.
    pub fn with_live_nat(&self, new: NatSpec) -> Result<LabConfig, ConfigError> {
        let old = self
            .nat
            .as_ref()
            .ok_or_else(|| ConfigError::NoNat("the running lab".into()))?;
        const REBUILD: &str = "`netns-nat down`, then `up` with the new file";
        let fixed = [
            ("[nat] router", old.router != new.router, REBUILD),
            ("[nat] uplink", old.uplink != new.uplink, REBUILD),
            ("[nat.ebpf] flows", old.ebpf.flows != new.ebpf.flows, REBUILD),
            (
                "[nat.ebpf] bindings",
                old.ebpf.bindings != new.ebpf.bindings,
                REBUILD,
            ),
            (
                "[nat.ebpf] fast_path",
                old.ebpf.fast_path != new.ebpf.fast_path,
                REBUILD,
            ),
            (
                "[nat] routed_fast_path",
                old.routed_fast_path != new.routed_fast_path,
                REBUILD,
            ),
            (
                "[nat.ebpf] log_level",
                old.ebpf.log_level != new.ebpf.log_level,
                "it is set when the programs load: `netns-nat up --upgrade --log-level LEVEL`",
            ),
        ];
        if let Some((what, _, how)) = fixed.iter().find(|(_, changed, _)| *changed) {
            return Err(ConfigError::NotLive {
                what: (*what).to_owned(),
                how,
            });
        }
        if old.forwards != new.forwards {
            return Err(ConfigError::ForwardsNotApplied {
                what: "[[nat.forward]] differs from the running forwards".into(),
            });
        }
        // The eBPF NAT's limit (`up` checks it when it loads the programs).
        if new.internal.len() > netns_common::nat::MAX_INTERNAL {
            return Err(ConfigError::BadEbpfNat(format!(
                "the eBPF NAT takes at most {} internal prefixes",
                netns_common::nat::MAX_INTERNAL
            )));
        }
        let mut out = self.clone();
        out.nat = Some(new);
        out.validate()?;
        Ok(out)
    }

    /// The `[nat]` section of `text`, for a live change of this lab: a file with only a
    /// `[nat]` section, or a whole lab file whose other sections are this lab's.
    pub fn nat_from_file(&self, text: &str) -> Result<NatSpec, ConfigError> {
        let table: toml::Table = toml::from_str(text)?;
        if table.keys().all(|k| k == "nat") {
            let nat = table
                .get("nat")
                .cloned()
                .ok_or_else(|| ConfigError::NoNat("the file".into()))?;
            return Ok(nat.try_into()?);
        }
        let mut whole = LabConfig::parse(text)?;
        let nat = whole
            .nat
            .take()
            .ok_or_else(|| ConfigError::NoNat("the file".into()))?;
        let mut running = self.clone();
        running.nat = None;
        if whole != running {
            return Err(ConfigError::NotLive {
                what: "the namespaces, bridges, veths, routes or sysctls of the lab".into(),
                how: "`netns-nat down`, then `up` with the new file",
            });
        }
        Ok(nat)
    }

    /// Parses and validates a lab file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: LabConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The reference scenario.
    pub fn reference() -> Self {
        Self::parse(REFERENCE_TOML).expect("the built-in reference lab is valid")
    }

    /// The file form, as written to the lab's state directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a lab config always serialises")
    }

    /// Every interface (bridges and veth ends), in declaration order.
    pub fn interfaces(&self) -> Vec<Interface<'_>> {
        let bridges = self.bridges.iter().map(|b| Interface {
            namespace: &b.namespace,
            name: &b.name,
            addresses: &b.addresses,
        });
        let ends = self.veths.iter().flat_map(|v| [&v.a, &v.b]).map(|e| Interface {
            namespace: &e.namespace,
            name: &e.name,
            addresses: &e.addresses,
        });
        bridges.chain(ends).collect()
    }

    /// First IPv4 address of the NAT uplink: the address SNAT translates to.
    pub fn uplink_address(&self) -> Option<Ipv4Addr> {
        let nat = self.nat.as_ref()?;
        self.interfaces()
            .into_iter()
            .find(|i| i.namespace == nat.router && i.name == nat.uplink)
            .and_then(|i| i.addresses.iter().find_map(|c| c.0.v4()).map(|c| c.addr))
    }

    /// Checks a prefix for use with this lab: namespace names are prefix + name.
    pub fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
        let bad = |why: String| ConfigError::BadPrefix {
            prefix: prefix.to_owned(),
            why,
        };
        if prefix.len() > PREFIX_MAX {
            return Err(bad(format!("is longer than {PREFIX_MAX} bytes")));
        }
        validate_ns_name(prefix).map_err(|e| bad(e.to_string()))
    }

    /// Checks everything [`LabConfig::parse`] checks (for configs built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.namespaces.is_empty() {
            return Err(ConfigError::NoNamespace);
        }
        if self.attached {
            return self.validate_attached();
        }
        let mut namespaces = HashSet::new();
        for ns in &self.namespaces {
            validate_ns_name(&ns.name).map_err(|source| ConfigError::BadNamespaceName {
                name: ns.name.clone(),
                source,
            })?;
            if !namespaces.insert(ns.name.as_str()) {
                return Err(ConfigError::DuplicateNamespace(ns.name.clone()));
            }
        }
        let known = |what: String, ns: &str| {
            if namespaces.contains(ns) {
                Ok(())
            } else {
                Err(ConfigError::UnknownNamespace {
                    what,
                    ns: ns.to_owned(),
                })
            }
        };

        // Interfaces: valid, unique per namespace.
        let mut ifaces: HashMap<&str, HashSet<&str>> = HashMap::new();
        for i in self.interfaces() {
            known(format!("interface {:?}", i.name), i.namespace)?;
            validate_ifname(i.name).map_err(|source| ConfigError::BadIfname {
                ns: i.namespace.to_owned(),
                name: i.name.to_owned(),
                source,
            })?;
            if !ifaces.entry(i.namespace).or_default().insert(i.name) {
                return Err(ConfigError::DuplicateIfname {
                    ns: i.namespace.to_owned(),
                    name: i.name.to_owned(),
                });
            }
        }
        for end in self.veths.iter().flat_map(|v| [&v.a, &v.b]) {
            if let Some(master) = &end.master
                && !self
                    .bridges
                    .iter()
                    .any(|b| b.namespace == end.namespace && &b.name == master)
            {
                return Err(ConfigError::UnknownBridge {
                    ns: end.namespace.clone(),
                    port: end.name.clone(),
                    master: master.clone(),
                });
            }
        }

        for r in &self.routes {
            known(format!("route to {}", r.to), &r.namespace)?;
            if r.to.0.network() != r.to.0 {
                return Err(ConfigError::RouteNotNetwork {
                    ns: r.namespace.clone(),
                    to: r.to,
                });
            }
            // Every namespace has a loopback.
            if let Some(dev) = &r.dev
                && dev != "lo"
                && !ifaces
                    .get(r.namespace.as_str())
                    .is_some_and(|s| s.contains(dev.as_str()))
            {
                return Err(ConfigError::UnknownRouteDevice {
                    ns: r.namespace.clone(),
                    to: r.to,
                    dev: dev.clone(),
                });
            }
            match r.via {
                None if r.dev.is_none() => {
                    return Err(ConfigError::RouteWithoutNextHop {
                        ns: r.namespace.clone(),
                        to: r.to,
                    });
                }
                None => {}
                Some(via) if via.is_ipv6() != r.to.0.is_ipv6() => {
                    return Err(ConfigError::RouteFamilyMismatch {
                        ns: r.namespace.clone(),
                        to: r.to,
                        via,
                    });
                }
                Some(via) => {
                    let on_link = self
                        .interfaces()
                        .iter()
                        .filter(|i| i.namespace == r.namespace)
                        .flat_map(|i| i.addresses)
                        .any(|a| a.0.contains(via));
                    if !on_link {
                        return Err(ConfigError::GatewayUnreachable {
                            ns: r.namespace.clone(),
                            to: r.to,
                            via,
                        });
                    }
                }
            }
        }

        for s in &self.sysctls {
            known(format!("sysctl {}", s.key), &s.namespace)?;
            validate_sysctl_key(&s.key)?;
        }

        if let Some(nat) = &self.nat {
            known("[nat] router".to_owned(), &nat.router)?;
            if !ifaces
                .get(nat.router.as_str())
                .is_some_and(|s| s.contains(nat.uplink.as_str()))
            {
                return Err(ConfigError::UnknownUplink {
                    router: nat.router.clone(),
                    uplink: nat.uplink.clone(),
                });
            }
            if self.uplink_address().is_none() {
                return Err(ConfigError::UplinkWithoutAddress(nat.uplink.clone()));
            }
            nat.validate()?;
        }
        Ok(())
    }

    /// An attached NAT: one namespace, the router, nothing to build; the NAT's own rules.
    fn validate_attached(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Attached(m.to_owned()));
        let Some(nat) = &self.nat else {
            return bad("it has no [nat]");
        };
        if self.namespaces.len() != 1 || self.namespaces[0].name != nat.router {
            return bad("exactly one [[namespace]], the router");
        }
        if !(self.bridges.is_empty()
            && self.veths.is_empty()
            && self.routes.is_empty()
            && self.sysctls.is_empty())
        {
            return bad("no bridges, veths, routes or sysctls (netns-nat builds nothing there)");
        }
        validate_ifname(&nat.uplink).map_err(|source| ConfigError::BadIfname {
            ns: nat.router.clone(),
            name: nat.uplink.clone(),
            source,
        })?;
        nat.validate()
    }

    /// The full name of lab namespace `name` under `prefix` (an attached NAT's router keeps
    /// its own).
    pub fn netns_name(&self, prefix: &str, name: &str) -> String {
        if self.attached {
            name.to_owned()
        } else {
            format!("{prefix}{name}")
        }
    }
}

impl NatSpec {
    /// The fast path the lab's eBPF programs run: plain forwarding's where it is on (only
    /// ever without NAT), else the eBPF NAT's.
    pub fn dataplane_fast_path(&self) -> FastPath {
        if self.routed_fast_path.is_off() {
            self.ebpf.fast_path
        } else {
            self.routed_fast_path
        }
    }

    /// What holds for the NAT wherever it runs: internal prefixes, forwards, eBPF settings.
    fn validate(&self) -> Result<(), ConfigError> {
        let nat = self;
        {
            if nat.internal.is_empty() {
                return Err(ConfigError::NoInternalPrefix);
            }

            let mut seen = HashSet::new();
            let mut targets = std::collections::HashMap::new();
            for f in &nat.forwards {
                // As the live path refuses it (`forward add`): the target's one mapping.
                if let Some(first) = targets.insert((f.protocol, f.to), f.port) {
                    return Err(ConfigError::DuplicateTarget {
                        protocol: f.protocol,
                        first,
                        second: f.port,
                        to: f.to,
                    });
                }
                for port in [f.port, f.to.port()] {
                    if port == 0 {
                        return Err(ConfigError::BadForwardPort(port));
                    }
                }
                if !seen.insert((f.protocol, f.port)) {
                    return Err(ConfigError::DuplicateForward {
                        protocol: f.protocol,
                        port: f.port,
                    });
                }
                if !nat.internal.iter().any(|n| n.0.contains(*f.to.ip())) {
                    return Err(ConfigError::ForwardOutside {
                        protocol: f.protocol,
                        port: f.port,
                        to: f.to,
                    });
                }
            }
            nat.ebpf.validate()?;
        }
        Ok(())
    }
}

impl EbpfNatSpec {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::BadEbpfNat(m));
        let t = &self.timeouts;
        if t.udp < 120 && !t.allow_short {
            return bad(format!(
                "timeouts.udp = {} s is under the RFC 4787 minimum of 120 s (set timeouts.allow_short \
                 = true to accept it, for tests)",
                t.udp
            ));
        }
        let all = [
            t.udp,
            t.tcp_established,
            t.tcp_transitory,
            t.icmp,
            t.other,
            t.unconfirmed,
        ];
        if all.contains(&0) {
            return bad("timeouts must be at least 1 s".into());
        }
        // Nanoseconds in a u64, with room for "now" added to them.
        const YEAR: u64 = 365 * 24 * 3600;
        if all.iter().any(|&v| v > 10 * YEAR) {
            return bad("timeouts must be at most ten years".into());
        }
        if self.ports.min < 1024 {
            return bad(format!(
                "ports {} must not go below 1024 (those are low_ports)",
                String::from(self.ports)
            ));
        }
        if self.low_ports.min == 0 || self.low_ports.max > 1023 {
            return bad(format!(
                "low_ports {} must lie in 1-1023",
                String::from(self.low_ports)
            ));
        }
        for (name, n) in [("flows", self.flows), ("bindings", self.bindings)] {
            if !(2..=1 << 24).contains(&n) {
                return bad(format!("{name} = {n}: a table holds 2 to 16777216 entries"));
            }
        }
        if self.sweep_interval_ms < 10 {
            return bad("sweep_interval_ms must be at least 10".into());
        }
        Ok(())
    }
}

/// Only keys that are per network namespace: a lab must never change the machine's own
/// settings, and keys outside net.ipv4/net.ipv6 may be global.
fn validate_sysctl_key(key: &str) -> Result<(), ConfigError> {
    let per_ns = key.starts_with("net.ipv4.") || key.starts_with("net.ipv6.");
    let clean = key.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    if per_ns && clean {
        Ok(())
    } else {
        Err(ConfigError::BadSysctl(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl FnOnce(&mut String)) -> Result<LabConfig, ConfigError> {
        let mut text = REFERENCE_TOML.to_owned();
        edit(&mut text);
        LabConfig::parse(&text)
    }

    fn replace(from: &'static str, to: &'static str) -> Result<LabConfig, ConfigError> {
        with(|t| {
            assert!(t.contains(from), "test edit does not apply: {from}");
            *t = t.replacen(from, to, 1);
        })
    }

    #[test]
    fn reference_lab_is_the_scenario() {
        let cfg = LabConfig::reference();
        let names: Vec<_> = cfg.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["red", "blue", "host", "lan"]);
        assert_eq!(cfg.uplink_address(), Some(Ipv4Addr::new(192, 168, 1, 2)));
        let nat = cfg.nat.as_ref().unwrap();
        assert_eq!(nat.internal[0].to_string(), "192.168.15.0/24");
        assert_eq!(nat.forwards[0].to, "192.168.15.2:80".parse().unwrap());
        assert_eq!(cfg.interfaces().len(), 7);
    }

    #[test]
    fn round_trips_through_toml() {
        let cfg = LabConfig::reference();
        assert_eq!(LabConfig::parse(&cfg.to_toml()).unwrap(), cfg);
    }

    #[test]
    fn malformed_toml_says_where() {
        let err = LabConfig::parse("[[namespace]\nname = 'red'").unwrap_err();
        assert!(matches!(err, ConfigError::Toml(_)));
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = replace("name = \"red\"", "name = \"red\"\ncolour = 1").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn bad_address_is_refused() {
        let err = replace("192.168.15.1/24", "192.168.15.300/24").unwrap_err();
        assert!(err.to_string().contains("192.168.15.300/24"), "{err}");
        let err = replace("192.168.15.1/24", "192.168.15.1/40").unwrap_err();
        assert!(err.to_string().contains("prefix length"), "{err}");
    }

    #[test]
    fn forgotten_netmask_is_refused_with_a_hint() {
        let err = replace("\"192.168.15.1/24\"", "\"192.168.15.1\"").unwrap_err();
        assert!(err.to_string().contains("missing prefix length"), "{err}");
        // With /32 the address parses, but red's gateway is then off-link.
        let err = replace("\"192.168.15.1/24\"", "\"192.168.15.1/32\"").unwrap_err();
        assert!(
            matches!(err, ConfigError::GatewayUnreachable { ref ns, .. } if ns == "red"),
            "{err}"
        );
        assert!(err.to_string().contains("forgotten netmask"), "{err}");
    }

    const DUAL_STACK_TOML: &str = include_str!("../labs/dual-stack.toml");

    /// The dual-stack lab with `from` replaced by `to`, parsed.
    fn dual(from: &str, to: &str) -> Result<LabConfig, ConfigError> {
        assert!(DUAL_STACK_TOML.contains(from), "{from}");
        LabConfig::parse(&DUAL_STACK_TOML.replacen(from, to, 1))
    }

    #[test]
    fn the_dual_stack_lab_has_ipv6_beside_ipv4_and_round_trips() {
        let cfg = dual("", "").unwrap();
        let v6: Vec<String> = cfg
            .interfaces()
            .iter()
            .flat_map(|i| i.addresses)
            .filter(|a| a.0.is_ipv6())
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            v6,
            [
                "fd00:15::fe/64",
                "fd00:15::1/64",
                "fd00:15::2/64",
                "fd00:1::2/64",
                "fd00:1::3/64"
            ]
        );
        // The uplink's IPv4 address is the SNAT address, whatever is listed first.
        let cfg = dual(
            "[\"192.168.1.2/24\", \"fd00:1::2/64\"]",
            "[\"fd00:1::2/64\", \"192.168.1.2/24\"]",
        )
        .unwrap();
        assert_eq!(cfg.uplink_address(), Some(Ipv4Addr::new(192, 168, 1, 2)));
        let cfg = dual("", "").unwrap();
        let back = LabConfig::parse(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
        assert!(cfg.to_toml().contains("\"::/0\""), "{}", cfg.to_toml());
    }

    #[test]
    fn ipv6_mistakes_are_refused_with_the_line_or_the_route() {
        let err = dual("\"fd00:15::1/64\"", "\"fd00:15::1\"").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("missing prefix length") && text.contains("fd00:15::1/64"),
            "{text}"
        );
        assert!(text.contains("line"), "{text}");
        let err = dual("\"fd00:15::1/64\"", "\"fd00:15::1/129\"").unwrap_err();
        assert!(err.to_string().contains("0 to 128"), "{err}");
        // Red's IPv6 gateway off every network of red's (a /128 address).
        let err = dual("\"fd00:15::1/64\"", "\"fd00:15::1/128\"").unwrap_err();
        assert!(
            matches!(err, ConfigError::GatewayUnreachable { ref ns, .. } if ns == "red"),
            "{err}"
        );
        // `default` is IPv4's: an IPv6 gateway for it is the other family.
        let err = dual("to = \"::/0\"", "to = \"default\"").unwrap_err();
        assert!(matches!(err, ConfigError::RouteFamilyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("::/0"), "{err}");
        let err = dual("to = \"::/0\"", "to = \"fd00:99::1/64\"").unwrap_err();
        assert!(matches!(err, ConfigError::RouteNotNetwork { .. }), "{err}");
    }

    #[test]
    fn long_interface_name_is_refused() {
        let err = replace("\"veth-red-br\"", "\"veth-red-bridge0\"").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::BadIfname {
                    source: NetError::NameTooLong { len: 16 },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("at most 15"), "{err}");
    }

    #[test]
    fn duplicates_are_refused() {
        let err = replace("name = \"blue\"", "name = \"red\"").unwrap_err();
        assert!(matches!(err, ConfigError::DuplicateNamespace(ref n) if n == "red"));
        let err = replace("\"veth-blue-br\"", "\"veth-red-br\"").unwrap_err();
        assert!(matches!(err, ConfigError::DuplicateIfname { ref name, .. } if name == "veth-red-br"));
    }

    #[test]
    fn references_must_exist() {
        let err = replace(
            "namespace = \"lan\", name = \"lan0\"",
            "namespace = \"wan\", name = \"lan0\"",
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownNamespace { ref ns, .. } if ns == "wan"),
            "{err}"
        );
        let err = replace(
            "master = \"v-net-0\" }\n\n[[veth]]\na = { namespace = \"blue\"",
            "master = \"br9\" }\n\n[[veth]]\na = { namespace = \"blue\"",
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownBridge { ref master, .. } if master == "br9"),
            "{err}"
        );
        let err = replace("uplink = \"uplink\"", "uplink = \"eth0\"").unwrap_err();
        assert!(matches!(err, ConfigError::UnknownUplink { .. }), "{err}");
    }

    #[test]
    fn bad_namespace_name_is_refused() {
        let err = replace("name = \"lan\"", "name = \"../lan\"").unwrap_err();
        assert!(matches!(err, ConfigError::BadNamespaceName { .. }), "{err}");
    }

    #[test]
    fn route_destination_must_be_a_network() {
        let err = with(|t| {
            t.push_str("\n[[route]]\nnamespace = \"lan\"\nto = \"10.0.0.1/8\"\nvia = \"192.168.1.2\"\n");
        });
        assert!(matches!(err, Err(ConfigError::RouteNotNetwork { .. })), "{err:?}");
        let mut cfg = LabConfig::reference();
        cfg.routes.push(RouteSpec {
            namespace: "lan".into(),
            to: "10.0.0.1/8".parse().unwrap(),
            via: Some(Ipv4Addr::new(192, 168, 1, 2).into()),
            dev: None,
        });
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
        cfg.routes.last_mut().unwrap().to = "10.0.0.0/8".parse().unwrap();
        cfg.validate().unwrap();
        cfg.routes.last_mut().unwrap().via = None;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RouteWithoutNextHop { .. })
        ));
        cfg.routes.last_mut().unwrap().dev = Some("nope0".into());
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::UnknownRouteDevice { .. })
        ));
        cfg.routes.last_mut().unwrap().dev = Some("lan0".into());
        cfg.validate().unwrap();
    }

    #[test]
    fn only_per_namespace_sysctls() {
        for key in [
            "kernel.panic",
            "net.core.rmem_max",
            "net.ipv4..x",
            "net.ipv4.a/../b",
            "net/ipv4/ip_forward",
        ] {
            let mut cfg = LabConfig::reference();
            cfg.sysctls[0].key = key.into();
            assert!(matches!(cfg.validate(), Err(ConfigError::BadSysctl(_))), "{key}");
        }
    }

    #[test]
    fn nat_settings_are_checked() {
        let mut cfg = LabConfig::reference();
        cfg.nat.as_mut().unwrap().internal.clear();
        assert!(matches!(cfg.validate(), Err(ConfigError::NoInternalPrefix)));

        let mut cfg = LabConfig::reference();
        let mut f = cfg.nat.as_ref().unwrap().forwards[0].clone();
        f.to = "192.168.15.1:80".parse().unwrap();
        cfg.nat.as_mut().unwrap().forwards.push(f);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::DuplicateForward { port: 80, .. })
        ));

        // Two forwards to one target: refused in a file as `forward add` refuses it.
        let mut cfg = LabConfig::reference();
        let mut f = cfg.nat.as_ref().unwrap().forwards[0].clone();
        f.port = 8080;
        cfg.nat.as_mut().unwrap().forwards.push(f);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::DuplicateTarget {
                first: 80,
                second: 8080,
                ..
            })
        ));

        let mut cfg = LabConfig::reference();
        cfg.nat.as_mut().unwrap().forwards[0].port = 0;
        assert!(matches!(cfg.validate(), Err(ConfigError::BadForwardPort(0))));

        // A forward must lead inside: the NAT translates replies of internal hosts only.
        let mut cfg = LabConfig::reference();
        cfg.nat.as_mut().unwrap().forwards[0].to = "192.168.1.3:80".parse().unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(err, ConfigError::ForwardOutside { port: 80, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("192.168.1.3:80"), "{err}");

        let mut cfg = LabConfig::reference();
        cfg.veths[2].a.addresses.clear();
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::UplinkWithoutAddress(_))
        ));
    }

    #[test]
    fn ebpf_nat_settings_are_checked() {
        let nat = |extra: &str| LabConfig::parse(&format!("{REFERENCE_TOML}\n[nat.ebpf]\n{extra}\n"));
        let cfg = nat("filtering = \"endpoint-independent\"\nports = \"40000-40007\"").unwrap();
        let e = &cfg.nat.unwrap().ebpf;
        assert_eq!(e.filtering, Filtering::EndpointIndependent);
        assert_eq!(
            e.ports,
            Ports {
                min: 40000,
                max: 40007
            }
        );
        for (bad, expect) in [
            ("ports = \"900-2000\"", "below 1024"),
            ("ports = \"5000-4000\"", "empty"),
            ("ports = \"5000\"", "min-max"),
            ("low_ports = \"1-2000\"", "1-1023"),
            ("flows = 1", "2 to 16777216"),
            ("timeouts = { udp = 30 }", "RFC 4787"),
            ("timeouts = { icmp = 0 }", "at least 1 s"),
            ("filtering = \"full-cone\"", "unknown variant"),
        ] {
            let err = nat(bad).unwrap_err().to_string();
            assert!(err.contains(expect), "{bad}: {err}");
        }
        nat("timeouts = { udp = 2, allow_short = true }").unwrap();
    }

    #[test]
    fn prefixes_are_checked() {
        LabConfig::validate_prefix("t1-").unwrap();
        assert!(LabConfig::validate_prefix("a/b").is_err());
        assert!(LabConfig::validate_prefix("").is_err());
        assert!(LabConfig::validate_prefix(&"x".repeat(PREFIX_MAX + 1)).is_err());
    }
}
