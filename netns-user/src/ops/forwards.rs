//! Port forwards added to and removed from a running eBPF NAT through its maps.

use std::net::Ipv4Addr;

use netns_common::{
    filter::Selector,
    nat::{BindingKey, port_to_wire},
    translate::pair::{self, PairError, StoreError},
};

use super::conntrack::endpoint;
use crate::{
    bpf::{NatMaps, maintain},
    config::{self, ConfigError, ForwardSpec, L4Proto, LabConfig},
    nat::{
        NatError,
        ebpf::{monotonic_ns, static_binding},
    },
};

/// Why a port forward cannot be added or removed live.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{proto} port {port} is already forwarded (to {to})")]
    Exists { proto: L4Proto, port: u16, to: String },
    #[error(
        "{proto} port {port} is held by the mapping of {internal}; it is free again when that \
         expires, or now with `netns-nat conntrack --delete --proto {proto} --port {port}`"
    )]
    PortInUse {
        proto: L4Proto,
        port: u16,
        internal: String,
    },
    #[error(
        "{internal} already has a mapping ({external}); a forward to it would give it two: \
         `netns-nat conntrack --delete --proto {proto} --addr {addr} --port {int_port}` first"
    )]
    TargetMapped {
        proto: L4Proto,
        internal: String,
        external: String,
        addr: Ipv4Addr,
        int_port: u16,
    },
    /// A packet made a mapping of the port or the target between the checks and the insert.
    #[error("a mapping of {proto} port {port} or of its target was made meanwhile; try again")]
    Raced { proto: L4Proto, port: u16 },
    #[error("no {proto} port {port} is forwarded")]
    NoSuchForward { proto: L4Proto, port: u16 },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Nat(#[from] Box<NatError>),
}

fn nat_err(e: impl Into<NatError>) -> ForwardError {
    ForwardError::Nat(Box::new(e.into()))
}

/// Adds port forward `f` to the running NAT: both static entries, exclusively, so that a
/// port some mapping holds, or a target that has a mapping of its own, is refused rather
/// than taken; nothing else changes, so every flow goes on as it was.
pub fn add_forward(maps: &mut NatMaps, prefix: &str, f: &ForwardSpec) -> Result<(), ForwardError> {
    let ext = maps.config().map_err(nat_err)?.ext_addr;
    let sb = static_binding(f);
    let [(ekey, _), (ikey, _)] = sb.entries(ext);
    let now = monotonic_ns();
    if let Some(old) = maps.binding(&ekey).map_err(nat_err)? {
        if old.is_static() {
            return Err(ForwardError::Exists {
                proto: f.protocol,
                port: f.port,
                to: endpoint(old.int_addr, old.int_port),
            });
        }
        if !old.expired(now) {
            return Err(ForwardError::PortInUse {
                proto: f.protocol,
                port: f.port,
                internal: endpoint(old.int_addr, old.int_port),
            });
        }
    }
    // The internal entry is a copy made when the mapping was; whether the mapping lives
    // is its external entry's to say (the one flows keep up to date).
    if let Some(old) = maps.binding(&ikey).map_err(nat_err)?
        && maps
            .binding(&BindingKey::external(ikey.proto, old.ext_addr, old.ext_port))
            .map_err(nat_err)?
            .is_some_and(|e| e.int_addr == old.int_addr && e.int_port == old.int_port && !e.expired(now))
    {
        return Err(ForwardError::TargetMapped {
            proto: f.protocol,
            internal: endpoint(old.int_addr, old.int_port),
            external: endpoint(old.ext_addr, old.ext_port),
            addr: *f.to.ip(),
            int_port: f.to.port(),
        });
    }
    // An expired mapping on the port or of the target is reclaimed, as the programs would
    // (by their protocol: one a packet revives at that instant stays, and the inserts below
    // then refuse).
    maintain::sweep(prefix, 0).map_err(nat_err)?;
    // Both entries exclusively, the first undone if the second is refused.
    pair::insert_static(maps, &sb, ext).map_err(|e| match e {
        PairError::External(StoreError::Exists) | PairError::Internal(StoreError::Exists) => {
            ForwardError::Raced {
                proto: f.protocol,
                port: f.port,
            }
        }
        e => nat_err(NatMaps::pair_error(e)),
    })
}

/// Removes the forward of `proto` port `port` from the running NAT: both entries and the
/// flows that came in through it (their next packet finds nothing, as for a port nobody
/// holds). Other flows are not touched. Returns where it went.
pub fn del_forward(maps: &NatMaps, prefix: &str, proto: L4Proto, port: u16) -> Result<String, ForwardError> {
    let ext = maps.config().map_err(nat_err)?.ext_addr;
    let p = proto.number();
    let ekey = BindingKey::external(p, ext, port_to_wire(port));
    let b = match maps.binding(&ekey).map_err(nat_err)? {
        Some(b) if b.is_static() => b,
        _ => return Err(ForwardError::NoSuchForward { proto, port }),
    };
    // Both entries and every flow through it, by the maintenance program.
    maintain::remove(prefix, Selector::forward(p, port_to_wire(port))).map_err(nat_err)?;
    Ok(endpoint(b.int_addr, b.int_port))
}

/// Adds forward `f` to lab `prefix`, whose configuration is `running`: refused whole unless
/// the configuration with it validates and the maps take it; recorded in the stored
/// configuration once live. Returns the new configuration.
pub fn add_live(
    maps: &mut NatMaps,
    prefix: &str,
    running: &LabConfig,
    f: ForwardSpec,
) -> Result<LabConfig, ForwardError> {
    let mut next = running.clone();
    let nat = next
        .nat
        .as_mut()
        .ok_or_else(|| ConfigError::NoNat("the running lab".into()))?;
    nat.forwards.push(f.clone());
    // Ports, duplicates, a target inside the internal prefixes.
    next.validate()?;
    add_forward(maps, prefix, &f)?;
    if let Err(e) = config::store(prefix, &next) {
        let _ = del_forward(maps, prefix, f.protocol, f.port);
        return Err(e.into());
    }
    Ok(next)
}

/// Removes the forward of `proto` port `port` from lab `prefix` and from its stored
/// configuration. Returns the new configuration and where the forward went.
pub fn del_live(
    maps: &mut NatMaps,
    prefix: &str,
    running: &LabConfig,
    proto: L4Proto,
    port: u16,
) -> Result<(LabConfig, String), ForwardError> {
    let to = del_forward(maps, prefix, proto, port)?;
    let mut next = running.clone();
    let mut removed = Vec::new();
    if let Some(nat) = next.nat.as_mut() {
        nat.forwards.retain(|f| {
            let this = f.protocol == proto && f.port == port;
            if this {
                removed.push(f.clone());
            }
            !this
        });
    }
    if let Err(e) = config::store(prefix, &next) {
        // Back as it was (its connections are gone; new ones come through again).
        for f in &removed {
            let _ = add_forward(maps, prefix, f);
        }
        return Err(e.into());
    }
    Ok((next, to))
}
