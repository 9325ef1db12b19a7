//! Argument types and parsers shared by several commands.

use netns_common::nat::TcpState;

/// `--proto` of `conntrack`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum ProtoArg {
    Tcp,
    Udp,
    Icmp,
}

impl ProtoArg {
    pub(super) fn number(self) -> u8 {
        match self {
            ProtoArg::Tcp => netns_common::nat::PROTO_TCP,
            ProtoArg::Udp => netns_common::nat::PROTO_UDP,
            ProtoArg::Icmp => netns_common::nat::PROTO_ICMP,
        }
    }
}

/// `--origin` of `conntrack`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum OriginArg {
    Outbound,
    Inbound,
}

impl OriginArg {
    pub(super) fn code(self) -> u8 {
        match self {
            OriginArg::Outbound => netns_common::nat::ORIGIN_OUTBOUND,
            OriginArg::Inbound => netns_common::nat::ORIGIN_INBOUND,
        }
    }
}

pub(super) fn parse_tcp_state(s: &str) -> Result<TcpState, String> {
    TcpState::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
        format!("unknown TCP state {s:?}; one of {}", names.join(", "))
    })
}
