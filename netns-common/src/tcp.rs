//! TCP sequence tracking: enough of each direction's sequence space that a RST or FIN which
//! does not belong to the connection (a blind spoof) changes nothing.
//!
//! Linux conntrack's `tcp_in_window` tracks every segment's edges; this is the simpler test
//! RFC 5961 asks of the endpoints themselves, applied to RST and FIN only:
//! - once the receiver has acknowledged something, a RST or FIN from the sender is in window
//!   when its sequence number lies in `[ack, ack + 2 * window]`, `ack` and `window` being
//!   the receiver's last acknowledgement and window (scaled when both SYNs carried the
//!   option). The receiver's true next expected byte is at least that `ack` and at most one
//!   window past it, and the sender never sends past the window: a valid segment is always
//!   inside, a blind spoof is inside with odds of `2 * window / 2^32`.
//! - before that (the handshake), a RST is valid only if it acknowledges the other side's
//!   SYN exactly (RFC 793, SYN-SENT) or continues the sender's own sequence exactly; a FIN
//!   only if it continues the sender's sequence exactly.
//!
//! Limits, written down: data segments are not judged (only RST and FIN); a connection
//! picked up mid-stream (no SYN seen) accepts any RST or FIN until the other side's window
//! is known with its scale, which it never is (the scale is only in the SYNs), so such
//! flows are judged on `[ack, ack + 2 * window << 14]`, the largest scale; the last
//! acknowledgement is written by whichever CPU handled the last segment, so it can lag by
//! the segments in flight, which the window's factor 2 covers.

use crate::nat::{DIR_IN, DIR_OUT, Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// `Flow::tcp_seen`: direction `d`'s `tcp_end` is known (its SYN was seen). (Shifts, not a
/// table: a table indexed by a variable is a read the verifier cannot bound.)
#[inline(always)]
pub const fn seen_end(d: usize) -> u8 {
    1 << (d & 1)
}
/// Direction `d`'s `tcp_ack` and `tcp_win` are known (it sent an ACK).
#[inline(always)]
pub const fn seen_ack(d: usize) -> u8 {
    4 << (d & 1)
}
/// The flow was picked up mid-stream: no SYN, so no window scale.
pub const SEEN_MIDSTREAM: u8 = 16;

/// `Flow::tcp_wscale` of a direction whose SYN carried no window scale option.
pub const WSCALE_NONE: u8 = 0xff;
/// The largest window scale (RFC 7323).
pub const WSCALE_MAX: u8 = 14;

/// What the tracker needs of a TCP segment (host order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    /// Bytes of data after the TCP header.
    pub len: u32,
    /// A SYN's window scale option ([`WSCALE_NONE`] if absent).
    pub wscale: u8,
}

impl Segment {
    /// The sequence number after this segment (SYN and FIN take one each).
    pub const fn end(&self) -> u32 {
        let mut e = self.seq.wrapping_add(self.len);
        if self.flags & TCP_SYN != 0 {
            e = e.wrapping_add(1);
        }
        if self.flags & TCP_FIN != 0 {
            e = e.wrapping_add(1);
        }
        e
    }
}

/// Direction index `d` masked to 0 or 1 in a way the compiler keeps: a per-direction field
/// read with an index the kernel's verifier cannot bound is refused, and the compiler drops
/// a plain mask where it knows the value is 0 or 1 (the verifier may not).
#[inline(always)]
pub fn dir(d: usize) -> usize {
    core::hint::black_box(d) & 1
}

/// The window scale direction `d` applies to its windows: its own option's value when both
/// SYNs carried one, else none; for a flow picked up mid-stream, the largest.
#[inline(always)]
pub fn scale(f: &Flow, d: usize) -> u8 {
    if f.tcp_seen & SEEN_MIDSTREAM != 0 {
        return WSCALE_MAX;
    }
    let (a, b) = (f.tcp_wscale[DIR_OUT], f.tcp_wscale[DIR_IN]);
    if a <= WSCALE_MAX && b <= WSCALE_MAX {
        f.tcp_wscale[dir(d)]
    } else {
        0
    }
}

/// Whether segment `s`, travelling in direction `d`, may change the flow's state: always,
/// unless it is a RST or FIN outside the receiver's window (see the module's text).
#[inline(always)]
pub fn in_window(f: &Flow, d: usize, s: &Segment) -> bool {
    if s.flags & (TCP_RST | TCP_FIN) == 0 {
        return true;
    }
    let d = dir(d);
    let r = dir(d ^ 1);
    if f.tcp_seen & seen_ack(r) != 0 {
        let win = (f.tcp_win[r] as u64) << scale(f, r);
        let span = if win == 0 { 1 } else { 2 * win };
        let off = s.seq.wrapping_sub(f.tcp_ack[r]) as u64;
        return off <= span;
    }
    if f.tcp_seen & SEEN_MIDSTREAM != 0 {
        return true;
    }
    let acks_syn = s.flags & TCP_ACK != 0 && f.tcp_seen & seen_end(r) != 0 && s.ack == f.tcp_end[r];
    let continues = f.tcp_seen & seen_end(d) != 0 && s.seq == f.tcp_end[d];
    if s.flags & TCP_RST != 0 {
        acks_syn || continues
    } else {
        continues
    }
}

/// Records segment `s` (already judged in window) of direction `d`: a SYN's sequence end and
/// window scale, and any acknowledgement with its window. A segment other than a SYN that
/// finds nothing known of either side marks the flow as picked up mid-stream.
#[inline(always)]
pub fn record(f: &mut Flow, d: usize, s: &Segment) {
    let d = dir(d);
    if s.flags & TCP_SYN != 0 {
        f.tcp_end[d] = s.end();
        f.tcp_wscale[d] = s.wscale;
        f.tcp_seen |= seen_end(d);
    } else if f.tcp_seen & (seen_end(DIR_OUT) | seen_end(DIR_IN) | seen_ack(DIR_OUT) | seen_ack(DIR_IN)) == 0
    {
        f.tcp_seen |= SEEN_MIDSTREAM;
    }
    if s.flags & TCP_ACK != 0 {
        f.tcp_ack[d] = s.ack;
        f.tcp_win[d] = s.win;
        f.tcp_seen |= seen_ack(d);
    }
}

/// The window scale option (kind 3) among a SYN's option bytes, capped at [`WSCALE_MAX`] as
/// RFC 7323 says; [`WSCALE_NONE`] if it is not there or the options are malformed.
pub fn wscale_option(opts: &[u8]) -> u8 {
    let mut i = 0;
    // At most 40 bytes of options: bounded for the verifier.
    while i < opts.len() && i < 40 {
        match opts[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = opts.get(i + 1) else {
                    break;
                };
                if len < 2 {
                    break;
                }
                if kind == 3 && len == 3 {
                    return match opts.get(i + 2) {
                        Some(&v) if v > WSCALE_MAX => WSCALE_MAX,
                        Some(&v) => v,
                        None => WSCALE_NONE,
                    };
                }
                i += len as usize;
            }
        }
    }
    WSCALE_NONE
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn seg(flags: u8, seq: u32, ack: u32, win: u16) -> Segment {
        Segment {
            flags,
            seq,
            ack,
            win,
            len: 0,
            wscale: WSCALE_NONE,
        }
    }

    /// A connection through its handshake: outbound SYN (isn 1000, scale 7), the SYN-ACK
    /// (isn 5000, scale 2), the ACK. Windows 512 and 1000 raw.
    fn established() -> Flow {
        let mut f = Flow::default();
        let syn = Segment {
            wscale: 7,
            ..seg(TCP_SYN, 1000, 0, 65535)
        };
        let synack = Segment {
            wscale: 2,
            ..seg(TCP_SYN | TCP_ACK, 5000, 1001, 65535)
        };
        for (d, s) in [
            (DIR_OUT, syn),
            (DIR_IN, synack),
            (DIR_OUT, seg(TCP_ACK, 1001, 5001, 512)),
        ] {
            assert!(in_window(&f, d, &s));
            record(&mut f, d, &s);
        }
        record(&mut f, DIR_IN, &seg(TCP_ACK, 5001, 1001, 1000));
        f
    }

    #[test]
    fn a_rst_is_accepted_only_within_the_receivers_window() {
        let f = established();
        // The remote (DIR_IN) resets: the inside host acknowledged 5001 with window 512 << 7.
        let win = 512u32 << 7;
        for seq in [5001, 5001 + win, 5001 + 2 * win] {
            assert!(in_window(&f, DIR_IN, &seg(TCP_RST, seq, 0, 0)), "seq {seq}");
        }
        for seq in [5000, 5001 + 2 * win + 1, 5001u32.wrapping_add(1 << 31), 0] {
            assert!(!in_window(&f, DIR_IN, &seg(TCP_RST, seq, 0, 0)), "seq {seq}");
        }
        // From inside: the remote acknowledged 1001 with 1000 << 2.
        assert!(in_window(&f, DIR_OUT, &seg(TCP_RST | TCP_ACK, 1001 + 4000, 0, 0)));
        assert!(!in_window(
            &f,
            DIR_OUT,
            &seg(TCP_RST | TCP_ACK, 1001 + 8001, 0, 0)
        ));
        // FIN alike; plain data and ACKs are never judged.
        assert!(!in_window(&f, DIR_IN, &seg(TCP_FIN | TCP_ACK, 9, 0, 0)));
        assert!(in_window(&f, DIR_IN, &seg(TCP_ACK, 9, 0, 0)));
    }

    #[test]
    fn scales_count_only_when_both_syns_carry_them() {
        let mut f = established();
        assert_eq!((scale(&f, DIR_OUT), scale(&f, DIR_IN)), (7, 2));
        f.tcp_wscale[DIR_IN] = WSCALE_NONE;
        assert_eq!((scale(&f, DIR_OUT), scale(&f, DIR_IN)), (0, 0));
        // Unscaled: the spoof window shrinks to 2 * 512.
        assert!(!in_window(&f, DIR_IN, &seg(TCP_RST, 5001 + 2 * 512 + 1, 0, 0)));
    }

    #[test]
    fn in_the_handshake_a_rst_must_acknowledge_the_syn_or_continue_exactly() {
        let mut f = Flow::default();
        let syn = seg(TCP_SYN, 1000, 0, 65535);
        record(&mut f, DIR_OUT, &syn);
        // The remote refuses: RST+ACK acknowledging 1001.
        assert!(in_window(&f, DIR_IN, &seg(TCP_RST | TCP_ACK, 0, 1001, 0)));
        assert!(!in_window(&f, DIR_IN, &seg(TCP_RST | TCP_ACK, 0, 1002, 0)));
        assert!(
            !in_window(&f, DIR_IN, &seg(TCP_RST, 0, 1001, 0)),
            "a RST without ACK acknowledges nothing"
        );
        // The inside host aborts its own SYN.
        assert!(in_window(&f, DIR_OUT, &seg(TCP_RST, 1001, 0, 0)));
        assert!(!in_window(&f, DIR_OUT, &seg(TCP_RST, 1500, 0, 0)));
    }

    #[test]
    fn a_flow_picked_up_mid_stream_is_judged_on_the_largest_scale() {
        let mut f = Flow::default();
        record(&mut f, DIR_OUT, &seg(TCP_ACK, 77, 99, 10));
        assert!(f.tcp_seen & SEEN_MIDSTREAM != 0);
        // Nothing known of the remote's acknowledgements: the inside host's RST passes.
        assert!(in_window(&f, DIR_OUT, &seg(TCP_RST, 5, 0, 0)));
        // The inside host's ack 99 and window 10 << 14 (the largest scale) bound the remote's.
        let span = 2 * (10u32 << 14);
        assert!(in_window(&f, DIR_IN, &seg(TCP_RST, 99 + span, 0, 0)));
        assert!(!in_window(&f, DIR_IN, &seg(TCP_RST, 99 + span + 1, 0, 0)));
    }

    #[test]
    fn the_window_scale_option_is_found_among_the_others() {
        // Linux's SYN: MSS, SACK permitted, timestamps, NOP, window scale 7.
        let linux = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        assert_eq!(wscale_option(&linux), 7);
        assert_eq!(wscale_option(&[2, 4, 5, 0xb4]), WSCALE_NONE);
        assert_eq!(wscale_option(&[3, 3, 20]), WSCALE_MAX, "capped at 14");
        assert_eq!(
            wscale_option(&[0, 3, 3, 5]),
            WSCALE_NONE,
            "after the end of options"
        );
        assert_eq!(
            wscale_option(&[2, 0, 3, 3, 5]),
            WSCALE_NONE,
            "a zero length ends the walk"
        );
        assert_eq!(wscale_option(&[3, 3]), WSCALE_NONE, "truncated");
    }

    proptest! {
        /// Whatever the sender did, a RST at the receiver's acknowledged point or anywhere
        /// up to one window past it is accepted.
        #[test]
        fn a_valid_rst_is_never_refused(ack: u32, win: u16, scale_out in 0u8..=14, scale_in in 0u8..=14, ahead: u32) {
            let mut f = Flow {
                tcp_wscale: [scale_out, scale_in],
                tcp_seen: seen_end(0) | seen_end(1) | seen_ack(DIR_OUT),
                ..Flow::default()
            };
            f.tcp_ack[DIR_OUT] = ack;
            f.tcp_win[DIR_OUT] = win;
            let w = u64::from(win) << scale_out;
            let ahead = if w == 0 { 0 } else { u64::from(ahead) % (w + 1) };
            let seq = ack.wrapping_add(ahead as u32);
            prop_assert!(in_window(&f, DIR_IN, &seg(TCP_RST, seq, 0, 0)));
        }

        #[test]
        fn the_option_walk_never_panics(opts in proptest::collection::vec(any::<u8>(), 0..48)) {
            let v = wscale_option(&opts);
            prop_assert!(v <= WSCALE_MAX || v == WSCALE_NONE);
        }
    }
}
