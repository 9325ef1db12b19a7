//! The programs run on crafted frames with BPF_PROG_TEST_RUN: what one entry point does to
//! one packet, byte for byte, with its maps as a test set them and no lab around it. Each
//! bed loads its own copy of the object in a namespace of its own (nothing is attached, and
//! a test run transmits nothing: a redirect is only a return code), so beds never share
//! state and the machine's namespace is never touched. Its maps are pinned under the bed's
//! name and written through `NatMaps`, as a lab's are.

use std::collections::BTreeMap;

use aya::{
    Ebpf, TestRun, TestRunOptions,
    programs::{SchedClassifier, Xdp},
};
use netns_common::{
    fwd::{FastConfig, FdbEntry, PortState},
    nat::{Binding, BindingKey, Flow, FlowKey, NatConfig},
};
use netns_user::{
    bpf::{EbpfError, NatMaps, StaticBinding, object, pin_nat_maps, program_error, remove_pins},
    sys::netns,
};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// Room for the frame a program hands back (it may grow a frame by no more than this).
const OUT_ROOM: usize = 256;

/// What a program did with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The program's return code (TC: TCX_NEXT is -1; XDP: the XDP action).
    pub code: i32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// One copy of the programs and maps, loaded in namespace `ns`, removed with it.
pub struct ProgBed {
    ns: String,
    ebpf: Option<Ebpf>,
    maps: Option<NatMaps>,
}

impl ProgBed {
    /// Creates namespace `ns`, loads the object there with the NAT configuration, the port
    /// forwards and (if given) the fast path's configuration, and loads every NAT program.
    pub fn new(
        ns: &str,
        config: NatConfig,
        forwards: &[StaticBinding],
        fast: Option<FastConfig>,
    ) -> Result<ProgBed> {
        netns::create(ns)?;
        let mut bed = ProgBed {
            ns: ns.to_owned(),
            ebpf: None,
            maps: None,
        };
        let (ebpf, maps) = netns::run_in(ns, || -> Result<(Ebpf, NatMaps)> {
            // Every diagnostic on: the verifier checks the logging code too.
            let mut ebpf = aya::EbpfLoader::new()
                .override_global(aya_log::LEVEL, &5u8, false)
                .load(object()?)
                .map_err(EbpfError::Load)?;
            let mut maps = pin_nat_maps(&ebpf, ns)?;
            maps.set_config(config)?;
            maps.install_forwards(config.ext_addr, forwards)?;
            if let Some(fast) = fast {
                maps.set_fast_config(fast)?;
            }
            let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
            for name in names {
                let prog = ebpf.program_mut(&name).expect("listed above");
                let name: &'static str = netns_common::names::NAT_PROGRAMS
                    .iter()
                    .copied()
                    .find(|p| *p == name)
                    .unwrap_or("program");
                let loaded = match prog {
                    aya::programs::Program::SchedClassifier(p) => p.load(),
                    aya::programs::Program::Xdp(p) => p.load(),
                    _ => continue,
                };
                loaded.map_err(|source| program_error(name, source))?;
            }
            Ok((ebpf, maps))
        })??;
        bed.ebpf = Some(ebpf);
        bed.maps = Some(maps);
        Ok(bed)
    }

    fn ebpf(&self) -> &Ebpf {
        self.ebpf.as_ref().expect("loaded in new()")
    }

    fn maps(&mut self) -> &mut NatMaps {
        self.maps.as_mut().expect("pinned in new()")
    }

    /// The bed's namespace (where a test builds the interfaces a fast-path run needs).
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Sets the fast path's configuration.
    pub fn set_fast(&mut self, fast: FastConfig) -> Result<()> {
        self.maps().set_fast_config(fast)
    }

    /// Has the fast path look its next hops up again, as a lab's agent does when the
    /// router's routing changes (here nothing announces it).
    pub fn renew_next_hops(&mut self) -> Result<()> {
        self.maps().renew_next_hops()
    }

    /// Sets what the fast path knows of interface `ifindex` (as `sync_ports` writes it for
    /// a lab).
    pub fn set_port(&mut self, ifindex: u32, state: PortState) -> Result<()> {
        self.maps().set_port(ifindex, state)
    }

    /// Sets behind which port the fast path saw MAC `mac`.
    pub fn set_fdb(&mut self, mac: [u8; 6], entry: FdbEntry) -> Result<()> {
        self.maps().set_fdb(mac, entry)
    }

    /// Lets XDP redirect to `ifaces` (interfaces of the bed's namespace).
    pub fn allow_xdp_redirect(&mut self, ifaces: &[&str]) -> Result<()> {
        let maps = self.maps.as_ref().expect("pinned in new()");
        netns::run_in(&self.ns, || maps.fill_devmap(ifaces.iter().copied()))?
    }

    /// Runs program `name` (TC or XDP) once on `frame`.
    pub fn run(&self, name: &'static str, frame: &[u8]) -> Result<Outcome> {
        self.run_on(name, frame, None)
    }

    /// Runs program `name` once on `frame` as if it arrived on interface `ifindex` of the
    /// bed's namespace (the fast path learns it, and starts its FIB lookup from it).
    pub fn run_on(&self, name: &'static str, frame: &[u8], ifindex: Option<u32>) -> Result<Outcome> {
        let prog = self.ebpf().program(name).ok_or(EbpfError::Missing(name))?;
        let mut out = vec![0u8; frame.len() + OUT_ROOM];
        let ctx = ifindex.map(|i| match prog {
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex (data_end must be the frame's length).
            aya::programs::Program::Xdp(_) => [0, frame.len() as u32, 0, i, 0, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect::<Vec<u8>>(),
            // struct __sk_buff up to `ifindex` (offset 40), the rest zero.
            _ => {
                let mut c = vec![0u8; 44];
                c[40..44].copy_from_slice(&i.to_ne_bytes());
                c
            }
        });
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx.as_deref(),
            ..TestRunOptions::default()
        };
        let r = netns::run_in(&self.ns, || match prog {
            aya::programs::Program::SchedClassifier(p) => SchedClassifier::test_run(p, opts),
            aya::programs::Program::Xdp(p) => Xdp::test_run(p, opts),
            _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
        })?
        .map_err(|source| EbpfError::Program { name, source })?;
        out.truncate(r.data_size_out as usize);
        Ok(Outcome {
            code: r.return_value as i32,
            frame: out,
        })
    }

    /// The NAT counters, summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        Ok(self.pinned().counters()?.into_iter().collect())
    }

    /// Every entry of the flow table.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.pinned().flows()
    }

    /// Every entry of the binding table.
    pub fn bindings(&self) -> Result<Vec<(BindingKey, Binding)>> {
        self.pinned().bindings()
    }

    fn pinned(&self) -> &NatMaps {
        self.maps.as_ref().expect("pinned in new()")
    }
}

impl Drop for ProgBed {
    fn drop(&mut self) {
        self.maps = None;
        self.ebpf = None;
        if let Err(e) = remove_pins(&self.ns) {
            eprintln!("removing the pins of {}: {e}", self.ns);
        }
        if let Err(e) = netns::delete(&self.ns) {
            eprintln!("removing namespace {}: {e}", self.ns);
        }
    }
}

/// What the verifier spent on each TC and XDP program of the object loaded with every
/// diagnostic at `log_level` (0: off): the instructions it processed, or why it refused.
pub fn verifier_costs(log_level: u8) -> Result<Vec<(String, std::result::Result<u32, String>)>> {
    let mut ebpf = aya::EbpfLoader::new()
        .override_global(aya_log::LEVEL, &log_level, false)
        .load(object()?)
        .map_err(EbpfError::Load)?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    let mut out = Vec::new();
    for name in names {
        let prog = ebpf.program_mut(&name).expect("listed above");
        let loaded = match prog {
            aya::programs::Program::SchedClassifier(p) => p.load().map(|()| p.info()),
            aya::programs::Program::Xdp(p) => p.load().map(|()| p.info()),
            _ => continue,
        };
        let cost = match loaded {
            Ok(Ok(info)) => Ok(info.verified_instruction_count().unwrap_or(0)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                let log = verifier_log.to_string();
                let last: Vec<&str> = log.lines().rev().take(6).collect();
                Err(format!(
                    "{io_error}: {}",
                    last.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ))
            }
            Err(e) => Err(e.to_string()),
        };
        out.push((name, cost));
    }
    Ok(out)
}
