//! Named network namespaces, made the way `ip netns add` makes them (a bind mount of the
//! namespace under `/run/netns`) but without a subprocess, and code run inside them.
//!
//! Namespaces are per thread: every function that enters one does it on a thread of its
//! own, so the caller's thread (and the machine's own namespace) is never changed.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    process::Command,
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Where named namespaces live (the `ip netns` convention, so `ip netns list` sees ours).
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {0} already exists")]
    Exists(String),
    #[error("network namespace {0} does not exist")]
    Missing(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: Errno },
    #[error("the thread started in namespace {0} did not get ready")]
    NotReady(String),
    #[error("the thread working in namespace {0} panicked")]
    Panicked(String),
}

type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Path of the bind mount that holds namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names of all namespaces under [`NETNS_DIR`], sorted.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Opens namespace `name` (for setns or for moving a link into it).
pub fn open(name: &str) -> Result<File> {
    File::open(path(name)).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => NetnsError::Missing(name.to_owned()),
        _ => NetnsError::Io {
            what: "cannot open",
            path: path(name),
            source,
        },
    })
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that namespaces mounted
/// there stay visible to processes in other mount namespaces (`ip netns exec`).
fn prepare_dir() -> Result<()> {
    fs::create_dir_all(NETNS_DIR).map_err(|source| NetnsError::Io {
        what: "cannot create",
        path: NETNS_DIR.into(),
        source,
    })?;
    let shared = |_: ()| {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared(()) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(Errno::EINVAL) => mount(
            Some(NETNS_DIR),
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| shared(()))
        .map_err(|source| NetnsError::Sys {
            what: "cannot make /run/netns a shared mount",
            source,
        }),
        Err(source) => Err(NetnsError::Sys {
            what: "cannot make /run/netns a shared mount",
            source,
        }),
    }
}

/// Creates namespace `name`; fails if it exists. Its loopback is brought up.
pub fn create(name: &str) -> Result<()> {
    prepare_dir()?;
    let target = path(name);
    // create_new is the lock: two labs racing for one name cannot both win.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => NetnsError::Exists(name.to_owned()),
            _ => NetnsError::Io {
                what: "cannot create",
                path: target.clone(),
                source,
            },
        })?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // A new namespace for this thread only; the thread ends right after.
            unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                what: "unshare(CLONE_NEWNET)",
                source,
            })?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NetnsError::Sys {
                what: "cannot bind-mount the new namespace",
                source,
            })
        })
        .join()
        .unwrap_or_else(|_| Err(NetnsError::Panicked(name.to_owned())))
    });
    if let Err(e) = made {
        let _ = fs::remove_file(&target);
        return Err(e);
    }
    Ok(())
}

/// Deletes namespace `name`: its links go with it (a veth takes its peer along).
/// Returns whether there was one.
pub fn delete(name: &str) -> Result<bool> {
    let target = path(name);
    if !target.exists() {
        return Ok(false);
    }
    match umount2(&target, MntFlags::MNT_DETACH) {
        // EINVAL: not mounted (a creation that died half-way); the file still goes.
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(source) => {
            return Err(NetnsError::Sys {
                what: "cannot unmount namespace",
                source,
            });
        }
    }
    fs::remove_file(&target).map_err(|source| NetnsError::Io {
        what: "cannot remove",
        path: target,
        source,
    })?;
    Ok(true)
}

/// Runs `f` on a new thread that has entered namespace `name`, and returns its result.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let ns = open(name)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                what: "setns",
                source,
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(NetnsError::Panicked(name.to_owned())))
    })
}

/// A command that will run inside namespace `name` (its network namespace only).
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    use std::os::unix::process::CommandExt as _;
    let ns = open(name)?;
    let mut cmd = Command::new(program);
    // Safety: the closure only calls setns(2), which is async-signal-safe, on a descriptor
    // that the closure owns and that stays open until it runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(cmd)
}

/// Enters namespace `name` in this process, for good, and gives it a private view of
/// `/sys` that matches the namespace (as `ip netns exec` does). For `exec` only: call it
/// while the process is single-threaded, right before replacing the process image.
pub fn enter_for_exec(name: &str) -> Result<()> {
    let ns = open(name)?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
        what: "setns",
        source,
    })?;
    let sys = |what, source| NetnsError::Sys { what, source };
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| sys("unshare(CLONE_NEWNS)", e))?;
    // Keep our mounts from propagating back to the machine's mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| sys("cannot make / a slave mount", e))?;
    // /sys shows the devices of the namespace that mounted it: mount a fresh one.
    if umount2("/sys", MntFlags::MNT_DETACH).is_ok() {
        mount(Some(name), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>)
            .map_err(|e| sys("cannot mount /sys for the namespace", e))?;
    }
    Ok(())
}

/// A thread working inside a namespace until it is stopped or dropped (a server, say).
pub struct Background<T> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<T>>>,
}

/// Starts `f` on a thread inside namespace `name` and returns once it calls `ready` (its
/// sockets are bound, say). `f` should return soon after the flag it is given turns true.
/// If it ends, or stays unready for 5 s, the error is returned instead.
pub fn spawn_in<T, F>(name: &str, f: F) -> Result<Background<T>>
where
    T: Send + 'static,
    F: FnOnce(&std::sync::atomic::AtomicBool, &dyn Fn()) -> T + Send + 'static,
{
    use std::sync::{Arc, atomic::AtomicBool, mpsc};
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (ns, flag) = (name.to_owned(), stop.clone());
    let thread = std::thread::spawn(move || {
        run_in(&ns, move || {
            f(&flag, &move || {
                let _ = ready_tx.send(());
            })
        })
    });
    let mut bg = Background {
        stop,
        thread: Some(thread),
    };
    match ready_rx.recv_timeout(std::time::Duration::from_secs(5)) {
        Ok(()) => Ok(bg),
        Err(_) => {
            bg.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            match bg.thread.take().map(|t| t.join()) {
                Some(Ok(Err(e))) => Err(e),
                _ => Err(NetnsError::NotReady(name.to_owned())),
            }
        }
    }
}

impl<T> Background<T> {
    /// Tells the thread to stop and returns what it returned.
    pub fn stop(mut self) -> Result<T> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let t = self.thread.take().expect("a running thread until stopped");
        t.join()
            .unwrap_or_else(|_| Err(NetnsError::Panicked("background thread".into())))
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
