//! The fast path at TC: packets of established flows skip the bridge and routing. Outbound
//! (`nat_fast_out`, TCX ingress on the bridge ports) they are translated and redirected
//! straight to the uplink, the next hop from the kernel's FIB; inbound (`nat_ingress`, after
//! its translation) straight to the bridge port behind which the internal host was last
//! seen. Everything else goes on to the slow path (the kernel's bridge and routing, and the
//! NAT programs on the uplink), so state is created and TCP states advance in one place;
//! the fast path only refreshes the same conntrack entries.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect},
    programs::TcContext,
};
use netns_common::{
    counters::NatCounter,
    fwd::{FAST_TC, Facts, FastConfig, Neigh, Slow, decrement_ttl, fast_ip, fast_tcp},
    nat::{FlowKey, NatConfig, PROTO_TCP},
};

use crate::{
    maps::{FAST_CONFIG, NAT_FLOWS, NAT_NEIGH, count},
    nat::{self, Res},
    packet::{ETH_P_IP, IP_CSUM_OFF, IP_OFF, IpHdr, NEXT},
};

const AF_INET: u8 = 2;
const BPF_FIB_LOOKUP_DIRECT: u32 = 1;
/// bpf_check_mtu: check every segment of a GSO packet, not its total length.
const BPF_MTU_CHK_SEGS: u64 = 1;
/// Offset of the TTL (the first byte of the TTL/protocol word).
const IP_TTL_OFF: usize = IP_OFF + 8;

/// The Ethernet header and the IPv4 header after it, as on the wire.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct EthIp {
    macs: [[u8; 6]; 2],
    proto: u16,
    ip: IpHdr,
}

/// The fast path's configuration, when it is on at TC.
#[inline(always)]
pub fn config() -> Option<&'static FastConfig> {
    FAST_CONFIG.get(0).filter(|c| c.mode == FAST_TC)
}

#[inline(always)]
fn facts(ip: &IpHdr) -> Facts {
    Facts {
        ver_ihl: ip.ver_ihl,
        frag_off: u16::from_be(ip.frag_off),
        ttl: ip.ttl,
        proto: ip.proto,
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // Safety: reading a field of the skb the program was given.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Remembers behind which port, and with which MAC, internal host `addr` sits. Written
/// only when it changed, so a busy host costs one lookup per packet.
#[inline(always)]
fn learn(ctx: &TcContext, addr: u32, mac: [u8; 6]) {
    let n = Neigh {
        ifindex: ifindex(ctx),
        mac,
        _pad: [0; 2],
    };
    // Safety: a pointer from a successful lookup, read at once.
    if NAT_NEIGH.get_ptr(addr).is_some_and(|old| unsafe { *old } == n) {
        return;
    }
    let _ = NAT_NEIGH.insert(addr, n, 0);
}

/// One hop less, with the IPv4 checksum as it is now (after any translation).
#[inline(always)]
fn hop(ctx: &TcContext, ip: &IpHdr) -> Res<()> {
    let check: u16 = ctx.load(IP_CSUM_OFF).map_err(nat::malformed)?;
    let (ttl, check) = decrement_ttl(ip.ttl, ip.proto, check);
    // TTL, protocol and checksum are adjacent: one store (each helper call costs).
    let c = check.to_ne_bytes();
    let word: [u8; 4] = [ttl, ip.proto, c[0], c[1]];
    ctx.store(IP_TTL_OFF, &word, 0).map_err(nat::malformed)
}

/// Writes the MAC addresses and redirects to `ifindex` (egress); counts `fast` on success.
#[inline(always)]
fn send(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6], ifindex: u32, fast: NatCounter) -> Res<i32> {
    let macs: [[u8; 6]; 2] = [*dst, *src];
    ctx.store(0, &macs, 0).map_err(nat::malformed)?;
    // Safety: a helper taking plain integers.
    let r = unsafe { bpf_redirect(ifindex, 0) };
    if r == i64::from(TC_ACT_REDIRECT) {
        count(fast);
        Ok(TC_ACT_REDIRECT)
    } else {
        // Already translated: the router's stack forwards it like any other packet.
        count(NatCounter::RedirectFailed);
        Ok(NEXT)
    }
}

/// The fast path's verdict, or the slow path (NEXT) with its reason counted.
#[inline(always)]
fn or_slow(r: Result<i32, Slow>) -> Res<i32> {
    match r {
        Ok(v) => Ok(v),
        Err(why) => {
            count(why.into());
            Ok(NEXT)
        }
    }
}

/// TCX ingress on a bridge port.
pub fn outbound(ctx: &TcContext) -> Res<i32> {
    let Some(fc) = config() else {
        return Ok(NEXT);
    };
    let Some(cfg) = nat::config() else {
        return Ok(NEXT);
    };
    // Ethernet and IPv4 headers in one helper call (each call costs).
    let Ok(h) = ctx.load::<EthIp>(0) else {
        return Ok(NEXT);
    };
    if u16::from_be(h.proto) != ETH_P_IP {
        return Ok(NEXT);
    }
    let ip = h.ip;
    let l4 = match ip.header_len() {
        0 => return Err(nat::Drop::Malformed),
        ihl => IP_OFF + ihl,
    };
    if !cfg.is_internal(ip.src) {
        return Ok(NEXT);
    }
    let macs = h.macs;
    learn(ctx, ip.src, macs[1]);
    // Only frames the router routes: to its MAC, and neither to another internal host nor
    // to its own external address (hairpinning is the bridge-side program's).
    if macs[0] != fc.gateway_mac || cfg.is_internal(ip.dst) || ip.dst == cfg.ext_addr {
        return Ok(NEXT);
    }
    or_slow(outbound_fast(ctx, cfg, fc, &ip, l4)?)
}

/// The fast path of an outbound packet, or why it takes the slow path. Nothing is
/// changed until every check has passed.
#[inline(always)]
fn outbound_fast(
    ctx: &TcContext,
    cfg: &NatConfig,
    fc: &FastConfig,
    ip: &IpHdr,
    l4: usize,
) -> Res<Result<i32, Slow>> {
    if let Err(why) = fast_ip(&facts(ip)) {
        return Ok(Err(why));
    }
    let (p, flags) = nat::ports(ctx, ip.proto, l4)?;
    let key = FlowKey::new(ip.proto, ip.src, p[0], ip.dst, p[1]);
    let now = nat::now();
    let Some(f) = NAT_FLOWS.get_ptr_mut(key) else {
        return Ok(Err(Slow::NoFlow));
    };
    // Safety: a pointer from a successful lookup (the map is not preallocated, so the
    // element stays valid for the rest of the program), read at once.
    let (state, expires_ns, ext_addr, ext_port) =
        unsafe { ((*f).state, (*f).expires_ns, (*f).ext_addr, (*f).ext_port) };
    if now >= expires_ns {
        return Ok(Err(Slow::NoFlow));
    }
    if ip.proto == PROTO_TCP
        && let Err(why) = fast_tcp(flags, state)
    {
        return Ok(Err(why));
    }
    // Safety: a zeroed plain-data struct.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.sport = ext_port;
    fib.dport = p[1];
    fib.ifindex = ifindex(ctx);
    fib.__bindgen_anon_3.ipv4_src = ext_addr;
    fib.__bindgen_anon_4.ipv4_dst = ip.dst;
    // tot_len 0: the kernel checks the packet (each segment, if GSO) against the MTU.
    // DIRECT: the main table, without the policy-routing rules (the lab has none).
    // Safety: the skb the program was given and a parameter block of the stated size.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_DIRECT,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS if fib.ifindex == fc.uplink_ifindex => {}
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Ok(Err(Slow::Mtu)),
        _ => return Ok(Err(Slow::NoNeighbour)),
    }
    // The flow found above (one lookup per packet): its expiry and counters advance.
    // Safety: as above; concurrent updates of counters may lose an increment.
    nat::touch(
        cfg,
        unsafe { &mut *f },
        ip.proto,
        true,
        flags,
        u64::from(ctx.len()),
        now,
    );
    nat::rewrite(ctx, ip.proto, l4, true, (ip.src, ext_addr), (p[0], ext_port))?;
    hop(ctx, ip)?;
    send(
        ctx,
        &fib.dmac,
        &fib.smac,
        fc.uplink_ifindex,
        NatCounter::FastOutTc,
    )
    .map(Ok)
}

/// After `nat_ingress` translated an inbound packet of internal host `int_addr` (flow state
/// `state`, None for a flow this packet created): straight to the host's port, or NEXT for
/// the slow path.
#[inline(always)]
pub fn inbound(
    ctx: &TcContext,
    fc: &FastConfig,
    ip: &IpHdr,
    tcp_flags: u8,
    state: Option<u8>,
    int_addr: u32,
) -> Res<i32> {
    or_slow(inbound_fast(ctx, fc, ip, tcp_flags, state, int_addr)?)
}

#[inline(always)]
fn inbound_fast(
    ctx: &TcContext,
    fc: &FastConfig,
    ip: &IpHdr,
    tcp_flags: u8,
    state: Option<u8>,
    int_addr: u32,
) -> Res<Result<i32, Slow>> {
    if let Err(why) = fast_ip(&facts(ip)) {
        return Ok(Err(why));
    }
    let Some(state) = state else {
        return Ok(Err(Slow::NoFlow));
    };
    if ip.proto == PROTO_TCP
        && let Err(why) = fast_tcp(tcp_flags, state)
    {
        return Ok(Err(why));
    }
    let Some(n) = NAT_NEIGH.get_ptr(int_addr) else {
        return Ok(Err(Slow::NoNeighbour));
    };
    // Safety: a pointer from a successful lookup, copied at once.
    let n = unsafe { *n };
    let mut mtu_len = 0u32;
    // Safety: the skb the program was given and a local for the result.
    let rc = unsafe {
        bpf_check_mtu(
            ctx.skb.skb as *mut _,
            n.ifindex,
            &mut mtu_len,
            0,
            BPF_MTU_CHK_SEGS,
        )
    };
    if rc != 0 {
        return Ok(Err(Slow::Mtu));
    }
    hop(ctx, ip)?;
    send(ctx, &n.mac, &fc.gateway_mac, n.ifindex, NatCounter::FastInTc).map(Ok)
}
