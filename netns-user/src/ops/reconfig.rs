//! `config apply`: a running eBPF NAT's settings changed through its configuration map.
//! New flows and mappings follow the new settings at once; existing ones keep what they
//! were made with (a mapping outside a narrowed port range lives until it expires).

use netns_common::nat::addr_from_wire;

use crate::{
    bpf::NatMaps,
    config::{self, ConfigError, LabConfig, NatSpec},
    nat::{NatError, ebpf::nat_config},
};

#[derive(Debug, thiserror::Error)]
pub enum ReconfigError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Nat(#[from] Box<NatError>),
}

impl From<NatError> for ReconfigError {
    fn from(e: NatError) -> Self {
        ReconfigError::Nat(Box::new(e))
    }
}

/// Applies `new` to lab `prefix`, whose configuration is `running`: refused whole, nothing
/// changed, unless every difference can change live and the result validates. The external
/// address stays the one the NAT runs with. Returns the new configuration, stored.
pub fn apply(
    maps: &mut NatMaps,
    prefix: &str,
    running: &LabConfig,
    new: NatSpec,
) -> Result<LabConfig, ReconfigError> {
    let next = running.with_live_nat(new)?;
    let nat = next.nat.as_ref().expect("with_live_nat keeps a [nat]");
    let old = maps.config().map_err(NatError::from)?;
    let cfg = nat_config(nat, addr_from_wire(old.ext_addr));
    // One update of the whole value; the programs read it for every packet. (An array
    // update is a copy, not a swap: a packet on another CPU in that instant can read some
    // fields old and some new.)
    maps.set_config(cfg).map_err(NatError::from)?;
    if let Err(e) = config::store(prefix, &next) {
        let _ = maps.set_config(old);
        return Err(e.into());
    }
    Ok(next)
}
