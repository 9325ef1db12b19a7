//! What the agent's control socket speaks, for both ends: a [`Request`] per line from the
//! client, a [`Reply`] per line back (JSON lines), and what a ping answers ([`Health`]).

use std::{net::Ipv4Addr, time::Duration};

use netns_common::{
    filter::EntryFilter,
    nat::{TcpState, addr_from_wire, addr_to_wire, port_from_wire, port_to_wire},
};
use serde::{Deserialize, Serialize};

use crate::config::{ForwardSpec, L4Proto, NatSpec};

/// What a client asks the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Its health.
    Ping,
    ForwardAdd {
        forward: ForwardSpec,
    },
    ForwardDel {
        protocol: L4Proto,
        port: u16,
    },
    /// Replace the `[nat]` settings that can change live.
    ConfigApply {
        nat: Box<NatSpec>,
    },
    /// Delete the flows and mappings `filter` selects (`conntrack --delete`; an empty
    /// filter: `--flush`).
    ConntrackDelete {
        filter: Filter,
    },
    /// Set `NAT_TRACE_ON` to whether a `trace` listens (a trace asks as it starts and ends).
    TraceSync,
}

/// A conntrack filter as the protocol carries it: [`EntryFilter`]'s fields as a user
/// writes them (address and port in host order, the TCP state by name).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<u8>,
}

impl From<&EntryFilter> for Filter {
    fn from(f: &EntryFilter) -> Self {
        Filter {
            proto: f.proto,
            addr: f.addr.map(addr_from_wire),
            port: f.port.map(port_from_wire),
            state: f.state.map(|s| s.name().to_owned()),
            origin: f.origin,
        }
    }
}

impl TryFrom<&Filter> for EntryFilter {
    type Error = String;

    fn try_from(f: &Filter) -> Result<Self, String> {
        let state = match &f.state {
            Some(name) => {
                Some(TcpState::from_name(name).ok_or_else(|| format!("unknown TCP state {name:?}"))?)
            }
            None => None,
        };
        Ok(EntryFilter {
            proto: f.proto,
            addr: f.addr.map(addr_to_wire),
            port: f.port.map(port_to_wire),
            state,
            origin: f.origin,
        })
    }
}

/// The agent's answer: `ok`, and either `error` or what the request returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
}

impl Reply {
    /// Done, returning `value`.
    pub fn done(value: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            error: None,
            value,
        }
    }

    /// Refused or failed, for this reason.
    pub fn refused(error: String) -> Reply {
        Reply {
            ok: false,
            error: Some(error),
            value: serde_json::Value::Null,
        }
    }
}

/// What `ping` answers (and `status` shows).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub pid: u32,
    pub started_unix: u64,
    pub sweeps: u64,
    pub swept_flows: u64,
    pub swept_mappings: u64,
    /// Milliseconds the last sweep took.
    pub last_sweep_ms: u64,
    /// Events (address or link changes) seen on the router's rtnetlink socket, and the
    /// changes of the uplink's address they led to.
    pub router_events: u64,
    pub address_changes: u64,
    /// Live changes applied (forwards, config apply) and refused.
    pub changes_applied: u64,
    pub changes_refused: u64,
    /// The last error of a sweep or of following the address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What holds the fast path off (a filter on the router's forward hook), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path_held: Option<String>,
}

/// The longest request line the agent reads (a `config apply` is a few kilobytes).
pub const MAX_REQUEST: u64 = 64 * 1024;
/// How long one client may keep a connection: every request of it, with its answers, in
/// this time (a client that trickles or stalls is cut off, however it paces its bytes).
pub const CONNECTION_TIME: Duration = Duration::from_secs(10);

/// `msg` as one line of the protocol: its JSON and a newline.
pub fn line<T: Serialize>(msg: &T) -> String {
    let mut line = serde_json::to_string(msg).expect("a request or reply serialises");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_is_one_line_both_ends_read() {
        assert_eq!(line(&Request::Ping), "{\"request\":\"ping\"}\n");
        let back: Request = serde_json::from_str(&line(&Request::Ping)).unwrap();
        assert!(matches!(back, Request::Ping));
        let reply: Reply = serde_json::from_str(&line(&Reply::refused("no".into()))).unwrap();
        assert!(!reply.ok);
        assert_eq!(reply.error.as_deref(), Some("no"));
    }

    #[test]
    fn a_conntrack_filter_crosses_the_socket_unchanged() {
        let filters = [
            EntryFilter::default(),
            EntryFilter {
                proto: Some(6),
                addr: Some(addr_to_wire(Ipv4Addr::new(192, 168, 15, 2))),
                port: Some(port_to_wire(8080)),
                state: Some(TcpState::Established),
                origin: Some(netns_common::nat::ORIGIN_INBOUND),
            },
        ];
        for f in filters {
            let req = Request::ConntrackDelete {
                filter: Filter::from(&f),
            };
            let Request::ConntrackDelete { filter } = serde_json::from_str(&line(&req)).unwrap() else {
                panic!("not a delete");
            };
            assert_eq!(EntryFilter::try_from(&filter), Ok(f));
        }
        let bad = Filter {
            state: Some("half-open".into()),
            ..Filter::default()
        };
        assert!(EntryFilter::try_from(&bad).is_err());
    }
}
