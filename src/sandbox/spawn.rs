//! Spawning servers that die with this process: `PR_SET_PDEATHSIG` from one dedicated,
//! never-exiting spawner thread.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Spawn `cmd` so that it is SIGKILLed when this process dies.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so all such
/// children are forked by one dedicated thread that lives as long as the process.
pub(super) fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid,
        // setpgid) and builds io::Errors without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                // Own process group: terminal signals (Ctrl-C) go to us, not the server;
                // we shut it down ourselves.
                libc::setpgid(0, 0);
                Ok(())
            });
        }
    }

    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = thread::Builder::new()
            .name("sandbox-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    let result = req.cmd.spawn();
                    if let Err(mpsc::SendError(Ok(mut child))) = req.reply.send(result) {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start sandbox spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(SpawnRequest {
            cmd,
            reply: reply_tx,
        });
    if sent.is_err() {
        return Err(io::Error::other("sandbox spawner thread is not running"));
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("sandbox spawner thread is not running")))
}
