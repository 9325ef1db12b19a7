//! A lab's NAT as Prometheus metrics (OpenMetrics text, written by `prometheus-client`):
//! every counter of the eBPF NAT, conntrack occupancy per protocol and TCP state, port-range
//! use per protocol, table pressure (entries against capacity), and the uplink's packet
//! counters (every lab, kernel NAT included). Read from the pinned maps at each scrape.

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use netns_common::nat::{
    Binding, BindingKey, Flow, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SIDE_EXTERNAL, TcpState,
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::conntrack::proto_name;
use crate::{
    bpf::{NatMaps, UplinkCounters},
    config::NatSpec,
    nat::{NatError, NatKind, ebpf as nat_ebpf},
};

/// The content type of what [`render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Why metrics could not be read or served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Nat(Box<NatError>),
    #[error(transparent)]
    Ebpf(Box<crate::bpf::EbpfError>),
    #[error("writing the metrics: {0}")]
    Format(#[from] std::fmt::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

impl From<NatError> for MetricsError {
    fn from(e: NatError) -> Self {
        MetricsError::Nat(Box::new(e))
    }
}

impl From<crate::bpf::EbpfError> for MetricsError {
    fn from(e: crate::bpf::EbpfError) -> Self {
        MetricsError::Ebpf(Box::new(e))
    }
}

/// What the metrics are made of, read from the lab's maps.
pub struct Reading {
    pub counters: BTreeMap<&'static str, u64>,
    pub flows: Vec<(FlowKey, Flow)>,
    pub bindings: Vec<(BindingKey, Binding)>,
    pub now_ns: u64,
    /// Size of the external port range (ICMP: identifiers) per protocol.
    pub ports: [(u8, u32); 3],
    /// Capacity of the flow and binding tables.
    pub capacity: (u32, u32),
    pub uplink: UplinkCounters,
}

/// Reads everything the metrics show of lab `prefix`, whose NAT is `kind` (`nat` its
/// section of the lab file).
pub fn read(prefix: &str, kind: NatKind, nat: Option<&NatSpec>) -> Result<Option<Reading>, MetricsError> {
    if kind != NatKind::Ebpf {
        return Ok(None);
    }
    let maps = NatMaps::open(prefix)?;
    let cfg = maps.config()?;
    let (flows, bindings) = maps.tables()?;
    let spec = nat.map(|n| (n.ebpf.flows, n.ebpf.bindings));
    Ok(Some(Reading {
        counters: maps.counters()?.into_iter().collect(),
        flows,
        bindings,
        now_ns: nat_ebpf::monotonic_ns(),
        ports: [
            (PROTO_TCP, cfg.ports.len() + cfg.low_ports.len()),
            (PROTO_UDP, cfg.ports.len() + cfg.low_ports.len()),
            (PROTO_ICMP, cfg.icmp_ids.len()),
        ],
        capacity: spec.unwrap_or((0, 0)),
        uplink: crate::bpf::read_uplink_counters(prefix)?,
    }))
}

/// The OpenMetrics text for a lab: the NAT's metrics from `nat` (eBPF labs), the uplink's
/// counters always.
pub fn render(nat: Option<&Reading>, uplink: &UplinkCounters) -> Result<String, MetricsError> {
    let mut reg = Registry::with_prefix("netns_nat");
    let up_packets = Family::<Labels, Counter>::default();
    let up_bytes = Family::<Labels, Counter>::default();
    reg.register(
        "uplink_packets",
        "Packets through the router's uplink, by direction (every NAT backend)",
        up_packets.clone(),
    );
    reg.register(
        "uplink_bytes",
        "Bytes through the router's uplink, by direction",
        up_bytes.clone(),
    );
    for (dir, p, b) in [
        ("in", uplink.ingress_packets, uplink.ingress_bytes),
        ("out", uplink.egress_packets, uplink.egress_bytes),
    ] {
        up_packets
            .get_or_create(&vec![("direction", dir.into())])
            .inc_by(p);
        up_bytes.get_or_create(&vec![("direction", dir.into())]).inc_by(b);
    }
    if let Some(r) = nat {
        nat_metrics(&mut reg, r);
    }
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

fn nat_metrics(reg: &mut Registry, r: &Reading) {
    let events = Family::<Labels, Counter>::default();
    reg.register(
        "events",
        "Every counter of the eBPF NAT by name (as in `netns-nat stats`): translations, new \
         flows and mappings, drops by reason, fast-path hits and hand-overs",
        events.clone(),
    );
    for (name, v) in &r.counters {
        events.get_or_create(&vec![("name", (*name).into())]).inc_by(*v);
    }

    let flows = Family::<Labels, Gauge>::default();
    reg.register(
        "flows",
        "Live conntrack flows by protocol and TCP state (\"-\" for UDP and ICMP)",
        flows.clone(),
    );
    let mut by: BTreeMap<(u8, &'static str), i64> = BTreeMap::new();
    for (k, f) in r.flows.iter().filter(|(_, f)| f.expires_ns > r.now_ns) {
        let state = if k.proto == PROTO_TCP {
            TcpState::from_u8(f.state).name()
        } else {
            "-"
        };
        *by.entry((k.proto, state)).or_default() += 1;
    }
    for ((p, state), n) in by {
        flows
            .get_or_create(&vec![("proto", proto_name(p).into()), ("state", state.into())])
            .set(n);
    }

    let mappings = Family::<Labels, Gauge>::default();
    reg.register(
        "mappings",
        "Live mappings by protocol, dynamic or static (port forwards)",
        mappings.clone(),
    );
    let ports_used = Family::<Labels, Gauge>::default();
    reg.register(
        "ports_in_use",
        "External ports (ICMP: identifiers) held by dynamic mappings, by protocol",
        ports_used.clone(),
    );
    let ports_total = Family::<Labels, Gauge>::default();
    reg.register(
        "ports_available",
        "Size of the external port range (ICMP: identifier range), by protocol",
        ports_total.clone(),
    );
    let mut dynamic: BTreeMap<u8, i64> = BTreeMap::new();
    let mut fixed: BTreeMap<u8, i64> = BTreeMap::new();
    for (k, b) in r
        .bindings
        .iter()
        .filter(|(k, b)| k.side == SIDE_EXTERNAL && !b.expired(r.now_ns))
    {
        *if b.is_static() { &mut fixed } else { &mut dynamic }
            .entry(k.proto)
            .or_default() += 1;
    }
    for (p, size) in r.ports {
        let proto = proto_name(p).to_owned();
        let d = dynamic.get(&p).copied().unwrap_or(0);
        let s = fixed.get(&p).copied().unwrap_or(0);
        mappings
            .get_or_create(&vec![("proto", proto.clone()), ("kind", "dynamic".into())])
            .set(d);
        mappings
            .get_or_create(&vec![("proto", proto.clone()), ("kind", "static".into())])
            .set(s);
        ports_used.get_or_create(&vec![("proto", proto.clone())]).set(d);
        ports_total
            .get_or_create(&vec![("proto", proto)])
            .set(i64::from(size));
    }

    let entries = Family::<Labels, Gauge>::default();
    reg.register(
        "table_entries",
        "Entries in the NAT's tables (expired ones included, until swept)",
        entries.clone(),
    );
    let capacity = Family::<Labels, Gauge>::default();
    reg.register(
        "table_capacity",
        "Capacity of the NAT's tables: a new entry beyond it is dropped (drop_map_full)",
        capacity.clone(),
    );
    for (table, n, cap) in [
        ("flows", r.flows.len(), r.capacity.0),
        ("bindings", r.bindings.len(), r.capacity.1),
    ] {
        entries
            .get_or_create(&vec![("table", table.into())])
            .set(n as i64);
        capacity
            .get_or_create(&vec![("table", table.into())])
            .set(i64::from(cap));
    }
}

/// What a scrape reads: the lab's prefix, its NAT and that NAT's lab-file section.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub prefix: &'a str,
    pub kind: NatKind,
    pub nat: Option<&'a NatSpec>,
}

/// Serves `GET /metrics` on `addr` (any other path: 404), one request at a time, until
/// the process is stopped.
pub fn serve(src: Source, addr: SocketAddr) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr).map_err(|source| MetricsError::Listen { addr, source })?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if let Err(e) = answer(src, &mut conn) {
            eprintln!("metrics: {e}");
        }
    }
    Ok(())
}

/// The longest request head (request line and headers) read, and the time a client has to
/// send it: for the whole head, not per read, so a client trickling a byte at a time is cut
/// off too.
pub const MAX_HEAD: usize = 8 * 1024;
pub const HEAD_TIME: Duration = Duration::from_secs(5);

/// A request's head, up to its blank line; an error past [`MAX_HEAD`] or [`HEAD_TIME`].
fn read_head(conn: &mut TcpStream) -> io::Result<String> {
    let deadline = std::time::Instant::now() + HEAD_TIME;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request head too slow"));
        }
        conn.set_read_timeout(Some(left))?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn answer(src: Source, conn: &mut TcpStream) -> io::Result<()> {
    let head = read_head(conn)?;
    let request = head.lines().next().unwrap_or("");
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = if path == "/metrics" {
        match scrape(src) {
            Ok(text) => ("200 OK", CONTENT_TYPE, text),
            Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
        }
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The metrics text now.
pub fn scrape(src: Source) -> Result<String, MetricsError> {
    let reading = read(src.prefix, src.kind, src.nat)?;
    let uplink = match &reading {
        Some(r) => r.uplink.clone(),
        None => crate::bpf::read_uplink_counters(src.prefix)?,
    };
    render(reading.as_ref(), &uplink)
}

#[cfg(test)]
mod tests {
    use netns_common::nat::{BINDING_STATIC, ORIGIN_OUTBOUND, WireAddr, WirePort};

    use super::*;

    #[test]
    fn renders_every_family_with_its_values() {
        let flow = |proto, state, exp| {
            (
                FlowKey::new(proto, WireAddr(1), WirePort(2), WireAddr(3), WirePort(4)),
                Flow {
                    state,
                    origin: ORIGIN_OUTBOUND,
                    expires_ns: exp,
                    ..Flow::default()
                },
            )
        };
        let b = |proto, flags| {
            (
                BindingKey::external(proto, WireAddr(9), WirePort(10)),
                Binding {
                    flags,
                    expires_ns: 2000,
                    idle_until_ns: u64::MAX,
                    ..Binding::default()
                },
            )
        };
        let r = Reading {
            counters: [("out_udp", 7u64), ("drop_no_port", 2)].into_iter().collect(),
            flows: vec![
                flow(PROTO_TCP, TcpState::Established as u8, 2000),
                flow(PROTO_TCP, TcpState::Established as u8, 2000),
                flow(PROTO_UDP, 0, 2000),
                flow(PROTO_UDP, 0, 10),
            ],
            bindings: vec![b(PROTO_UDP, 0), b(PROTO_TCP, BINDING_STATIC)],
            now_ns: 1000,
            ports: [(PROTO_TCP, 100), (PROTO_UDP, 100), (PROTO_ICMP, 50)],
            capacity: (64, 128),
            uplink: UplinkCounters::default(),
        };
        let text = render(Some(&r), &r.uplink).unwrap();
        for line in [
            "netns_nat_events_total{name=\"out_udp\"} 7",
            "netns_nat_events_total{name=\"drop_no_port\"} 2",
            "netns_nat_flows{proto=\"tcp\",state=\"established\"} 2",
            "netns_nat_flows{proto=\"udp\",state=\"-\"} 1",
            "netns_nat_mappings{proto=\"udp\",kind=\"dynamic\"} 1",
            "netns_nat_mappings{proto=\"tcp\",kind=\"static\"} 1",
            "netns_nat_ports_in_use{proto=\"udp\"} 1",
            "netns_nat_ports_available{proto=\"icmp\"} 50",
            "netns_nat_table_entries{table=\"flows\"} 4",
            "netns_nat_table_capacity{table=\"bindings\"} 128",
            "netns_nat_uplink_packets_total{direction=\"in\"} 0",
            "# TYPE netns_nat_events counter",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
