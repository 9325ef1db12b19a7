//! rtnetlink calls, each made from a thread inside the namespace it acts on.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressHeaderFlags, AddressScope},
        link::{
            InfoBridge, InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp, State,
        },
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
    },
};
use serde::Serialize;

use crate::sys::netns::{self, NetnsError};
use netns_common::net::{IpCidr, Ipv4Cidr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot open a netlink socket in namespace {ns}: {source}")]
    Socket { ns: String, source: std::io::Error },
    #[error("{what} in namespace {ns}: {source}")]
    Request {
        ns: String,
        what: String,
        source: rtnetlink::Error,
    },
    #[error("no interface {name:?} in namespace {ns}")]
    NoSuchLink { ns: String, name: String },
}

type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// A netlink session inside one namespace: requests name what they do, for errors.
pub struct Rtnl {
    pub ns: String,
    pub handle: Handle,
}

/// Runs `f` with a netlink handle opened inside namespace `ns`.
pub fn in_ns<T, F, Fut>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Rtnl) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    netns::run_in(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetlinkError::Socket {
                ns: ns.to_owned(),
                source,
            })?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetlinkError::Socket {
                ns: ns.to_owned(),
                source,
            })?;
            let conn = tokio::spawn(conn);
            let out = f(Rtnl {
                ns: ns.to_owned(),
                handle,
            })
            .await;
            conn.abort();
            out
        })
    })?
}

impl Rtnl {
    fn fail(&self, what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
        let (ns, what) = (self.ns.clone(), what.into());
        move |source| NetlinkError::Request { ns, what, source }
    }

    pub async fn link_index(&self, name: &str) -> Result<u32> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match found {
            Ok(Some(msg)) => Ok(msg.header.index),
            // The kernel answers ENODEV for an unknown name.
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => Err(NetlinkError::NoSuchLink {
                ns: self.ns.clone(),
                name: name.to_owned(),
            }),
            Err(e) => Err(self.fail(format!("looking up {name}"))(e)),
        }
    }

    pub async fn add_bridge(&self, name: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(self.fail(format!("creating bridge {name}")))
    }

    /// Creates veth `name` here with its peer `peer` directly in the namespace `peer_ns_fd`,
    /// so no end ever exists in any other namespace (the machine's own included).
    pub async fn add_veth(&self, name: &str, peer: &str, peer_ns_fd: RawFd) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer).setns_by_fd(peer_ns_fd).build();
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(self.fail(format!("creating veth pair {name}/{peer}")))
    }

    pub async fn set_master(&self, name: &str, master: &str) -> Result<()> {
        let (idx, master_idx) = (self.link_index(name).await?, self.link_index(master).await?);
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).controller(master_idx).build())
            .execute()
            .await
            .map_err(self.fail(format!("enslaving {name} to {master}")))
    }

    pub async fn set_up(&self, name: &str) -> Result<()> {
        let idx = self.link_index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(self.fail(format!("setting {name} up")))
    }

    /// Adds `cidr` to interface `name`; an IPv6 one without duplicate address detection, so
    /// that it is usable at once (a lab's addresses are unique by construction).
    pub async fn add_address(&self, name: &str, cidr: IpCidr) -> Result<()> {
        let idx = self.link_index(name).await?;
        let mut req = self.handle.address().add(idx, cidr.addr(), cidr.prefix_len());
        if cidr.is_ipv6() {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        req.execute()
            .await
            .map_err(self.fail(format!("adding {cidr} to {name}")))
    }

    /// Adds a route to `to` through gateway `via` (of `to`'s family) and/or device `dev`.
    pub async fn add_route(&self, to: IpCidr, via: Option<IpAddr>, dev: Option<&str>) -> Result<()> {
        let oif = match dev {
            Some(dev) => Some(self.link_index(dev).await?),
            None => None,
        };
        let route = match (to, via) {
            (IpCidr::V4(to), via) => {
                let mut r = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(to.addr, to.prefix_len);
                if let Some(IpAddr::V4(via)) = via {
                    r = r.gateway(via);
                }
                if let Some(oif) = oif {
                    r = r.output_interface(oif);
                }
                r.build()
            }
            (IpCidr::V6(to), via) => {
                let mut r = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(to.addr, to.prefix_len);
                if let Some(IpAddr::V6(via)) = via {
                    r = r.gateway(via);
                }
                if let Some(oif) = oif {
                    r = r.output_interface(oif);
                }
                r.build()
            }
        };
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(self.fail(format!("adding route to {to}")))
    }

    /// IPv4 addresses of interface `name`, in the kernel's order.
    pub async fn ipv4_addresses(&self, name: &str) -> Result<Vec<Ipv4Cidr>> {
        let idx = self.link_index(name).await?;
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute()
            .try_collect()
            .await
            .map_err(self.fail(format!("listing addresses of {name}")))?;
        Ok(addrs
            .iter()
            .filter(|a| a.header.index == idx)
            .flat_map(|a| {
                a.attributes.iter().filter_map(move |attr| match attr {
                    AddressAttribute::Address(std::net::IpAddr::V4(ip)) => {
                        Ipv4Cidr::new(*ip, a.header.prefix_len).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Every link's name, index, MAC address and attached XDP program.
    pub async fn links(&self) -> Result<Vec<LinkBrief>> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.fail("listing links"))?;
        Ok(links
            .iter()
            .map(|l| {
                let mut b = LinkBrief {
                    name: link_name(l).unwrap_or_default(),
                    index: l.header.index,
                    mac: [0; 6],
                    xdp_prog: None,
                    tx_packets: 0,
                    tx_dropped: 0,
                    up: l.header.flags.contains(LinkFlags::Up) && l.header.flags.contains(LinkFlags::LowerUp),
                    master: 0,
                    bridge_ageing_cs: None,
                };
                for attr in &l.attributes {
                    match attr {
                        LinkAttribute::Address(a) if a.len() == 6 => b.mac.copy_from_slice(a),
                        LinkAttribute::Controller(m) => b.master = *m,
                        LinkAttribute::LinkInfo(infos) => {
                            for info in infos {
                                if let LinkInfo::Data(InfoData::Bridge(opts)) = info {
                                    b.bridge_ageing_cs = opts.iter().find_map(|o| match o {
                                        InfoBridge::AgeingTime(cs) => Some(*cs),
                                        _ => None,
                                    });
                                }
                            }
                        }
                        LinkAttribute::Stats64(st) => {
                            b.tx_packets = st.tx_packets;
                            b.tx_dropped = st.tx_dropped;
                        }
                        LinkAttribute::Xdp(x) => {
                            b.xdp_prog = x.iter().find_map(|x| match x {
                                LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
                b
            })
            .collect())
    }

    /// One link's brief, by name.
    pub async fn link(&self, name: &str) -> Result<LinkBrief> {
        self.links()
            .await?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| NetlinkError::NoSuchLink {
                ns: self.ns.clone(),
                name: name.to_owned(),
            })
    }

    /// Links, addresses (IPv4, and IPv6 of global scope: not the link-local ones every link
    /// has) and routes of the main table of both families (not IPv6's link-local and
    /// multicast ones): what `status` shows.
    pub async fn snapshot(&self) -> Result<NsSnapshot> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.fail("listing links"))?;
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.fail("listing addresses"))?;
        let mut routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(self.fail("listing routes"))?;
        let routes6: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(self.fail("listing IPv6 routes"))?;
        routes.extend(routes6.into_iter().filter(|r| !link_local_route(r)));

        let name_of = |idx: u32| {
            links
                .iter()
                .find(|l| l.header.index == idx)
                .and_then(link_name)
                .unwrap_or_default()
        };
        let links_out = links
            .iter()
            .map(|l| {
                let mut link = LinkStatus {
                    name: link_name(l).unwrap_or_default(),
                    index: l.header.index,
                    up: false,
                    kind: None,
                    master: None,
                    addresses: Vec::new(),
                };
                for attr in &l.attributes {
                    match attr {
                        LinkAttribute::OperState(s) => {
                            link.up = matches!(s, State::Up | State::Unknown);
                        }
                        LinkAttribute::Controller(m) => link.master = Some(name_of(*m)),
                        LinkAttribute::LinkInfo(infos) => {
                            for info in infos {
                                if let LinkInfo::Kind(k) = info {
                                    link.kind = Some(k.to_string());
                                }
                            }
                        }
                        _ => {}
                    }
                }
                link.addresses = addrs
                    .iter()
                    .filter(|a| {
                        a.header.index == l.header.index
                            && (a.header.family == AddressFamily::Inet
                                || (a.header.family == AddressFamily::Inet6
                                    && a.header.scope == AddressScope::Universe))
                    })
                    .flat_map(|a| {
                        a.attributes.iter().filter_map(move |attr| match attr {
                            AddressAttribute::Address(ip) => Some(format!("{ip}/{}", a.header.prefix_len)),
                            _ => None,
                        })
                    })
                    .collect();
                link
            })
            .collect();

        let routes_out = routes
            .iter()
            .filter(|r| r.header.table == RouteHeader::RT_TABLE_MAIN && r.header.kind == RouteType::Unicast)
            .map(|r| {
                let mut out = RouteStatus {
                    to: if r.header.destination_prefix_length == 0 {
                        if r.header.address_family == AddressFamily::Inet6 {
                            "::/0".to_owned()
                        } else {
                            "default".to_owned()
                        }
                    } else {
                        String::new()
                    },
                    via: None,
                    dev: None,
                };
                for attr in &r.attributes {
                    match attr {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                            out.to = format!("{a}/{}", r.header.destination_prefix_length);
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                            out.to = format!("{a}/{}", r.header.destination_prefix_length);
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet(a)) => out.via = Some(a.to_string()),
                        RouteAttribute::Gateway(RouteAddress::Inet6(a)) => out.via = Some(a.to_string()),
                        RouteAttribute::Oif(i) => out.dev = Some(name_of(*i)),
                        _ => {}
                    }
                }
                out
            })
            .collect();
        Ok(NsSnapshot {
            links: links_out,
            routes: routes_out,
        })
    }
}

/// An IPv6 route every link has: to fe80::/64 (link-local), or multicast (ff00::/8).
fn link_local_route(r: &RouteMessage) -> bool {
    r.attributes.iter().any(|a| {
        matches!(a, RouteAttribute::Destination(RouteAddress::Inet6(d))
            if d.is_unicast_link_local() || d.is_multicast())
    })
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// What the dataplane needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkBrief {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// The XDP program attached to it, if any.
    pub xdp_prog: Option<u32>,
    /// Frames it transmitted, and those it dropped on transmit (a full peer).
    pub tx_packets: u64,
    pub tx_dropped: u64,
    /// Administratively up with its carrier on.
    pub up: bool,
    /// The bridge (or other master) it is a port of; 0 if none.
    pub master: u32,
    /// For a bridge: how long it keeps a MAC it no longer sees, in centiseconds.
    pub bridge_ageing_cs: Option<u32>,
}

/// One namespace as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct NsSnapshot {
    pub links: Vec<LinkStatus>,
    pub routes: Vec<RouteStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub index: u32,
    /// Operational state up (or unknown, as loopback reports).
    pub up: bool,
    /// `veth`, `bridge`, ... or none for loopback.
    pub kind: Option<String>,
    pub master: Option<String>,
    /// IPv4 addresses with prefix length.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// Destination network, or `default`.
    pub to: String,
    pub via: Option<String>,
    pub dev: Option<String>,
}
