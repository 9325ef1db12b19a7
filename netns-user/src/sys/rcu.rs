//! Waiting for an RCU grace period from user space: after it, no BPF program that was
//! running before it is still running (programs run inside RCU read-side sections), so an
//! entry marked removed before it can be deleted without a program still writing into it.

use std::io;

/// `membarrier(MEMBARRIER_CMD_GLOBAL)`: returns after an RCU grace period (the kernel runs
/// `synchronize_rcu()` for it).
pub fn synchronize() -> io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // Safety: membarrier(2) with a command and no flags; it touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_grace_period_can_be_waited_for() {
        super::synchronize().expect("membarrier(MEMBARRIER_CMD_GLOBAL)");
    }
}
