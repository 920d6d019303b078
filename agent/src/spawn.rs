//! Starting a run's processes without copying the agent's address space.
//!
//! A rank must die with the agent (`PR_SET_PDEATHSIG`) and start inside its attempt's
//! cgroup, which takes code between fork and exec. `std::process::Command` runs such code
//! only after a real `fork`, and `fork` copies the page tables of the whole agent (its
//! threads, heap and, when agents run inside a larger process, everything else): the
//! copy, the exec that throws it away and the copy-on-write faults it causes in the
//! agent were most of an agent's CPU time when runs are short. [`spawn`] does what
//! glibc's `posix_spawn` does instead: `clone(CLONE_VM | CLONE_VFORK)`, a child that
//! shares the agent's memory, runs a few async-signal-safe system calls on its own stack
//! and `execve`s, while the spawning thread waits.
//!
//! The child: default signal handlers and an empty signal mask (the agent's handlers must
//! never run in it), death signal, cgroup, its own process group, `/dev/null` on stdin
//! and pipes on stdout and stderr, working directory, exec. A failure before exec is
//! reported to the parent through memory both share, and the child exits.
//!
//! [`RankProcess::wait`] waits on a pidfd (readable once the process has exited) and then
//! reaps it, so no thread is held per running process.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::unix::pipe;

/// What to start: `argv[0]` is looked up in the `PATH` of the final environment (the
/// agent's, with `env` on top) unless it contains a slash, in which case a relative path
/// is taken from `cwd`, as `std::process::Command` does on Linux.
pub struct SpawnRequest<'a> {
    pub argv: &'a [String],
    /// Variables set on top of the agent's own environment, later maps winning.
    pub env: &'a [&'a std::collections::BTreeMap<String, String>],
    pub cwd: &'a Path,
    /// An open `cgroup.procs` file the child writes itself into before exec.
    pub cgroup_procs: Option<RawFd>,
}

/// A started rank: its pid (also its process group id), its output pipes, and the
/// means to wait for it.
pub struct RankProcess {
    pid: u32,
    pidfd: Option<OwnedFd>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl RankProcess {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits until the process exits and reaps it.
    pub async fn wait(self) -> io::Result<ExitStatus> {
        let pid = self.pid as libc::pid_t;
        let Some(pidfd) = self.pidfd else {
            // No pidfd (a kernel before 5.3): one blocking thread waits.
            return tokio::task::spawn_blocking(move || reap(pid, 0))
                .await
                .map_err(io::Error::other)?
                .map(|status| status.expect("a blocking waitpid returns a status"));
        };
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and stays open, the same
        // descriptor, until it is dropped.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        loop {
            let mut ready = pidfd.readable().await?;
            if let Some(status) = reap(pid, libc::WNOHANG)? {
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

/// `waitpid` on one child of this process; `None` when it has not exited yet.
fn reap(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on a child of this process that no one else reaps (the
        // subreaper's orphan reaper skips ranks, see `contain::spawn_rank`).
        let reaped = unsafe { libc::waitpid(pid, &mut status, flags) };
        if reaped == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if reaped == 0 {
            return Ok(None);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Everything the child needs, prepared by the parent: the child may not allocate.
struct ChildSetup {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    /// `/bin/sh path args...`, for a file without a `#!` line (ENOEXEC), as `execvp` does.
    sh_argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    cgroup_procs: RawFd,
    /// The errno of the step that failed before exec; 0 while all went well.
    error: AtomicI32,
}

/// Runs in the child, on its own stack, in memory shared with the parent (which waits):
/// only async-signal-safe calls, no allocation, no unwinding.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the `ChildSetup` the parent keeps alive until this child has
    // exec'd or exited (CLONE_VFORK); every call below is async-signal-safe.
    unsafe {
        let setup = &*(arg as *const ChildSetup);
        let fail = |setup: &ChildSetup| -> libc::c_int {
            setup
                .error
                .store(*libc::__errno_location(), Ordering::SeqCst);
            libc::_exit(127)
        };
        // The agent's handlers must not run here: every caught signal goes back to its
        // default (ignored ones stay ignored, as across exec), SIGPIPE included, which
        // Rust programs ignore.
        for signal in 1..libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction != libc::SIG_IGN
                && current.sa_sigaction != libc::SIG_DFL
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // The run dies with the agent (SIGKILL when the spawning thread goes away), so a
        // killed agent leaves no process that could finish a run a second time.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail(setup);
        }
        if setup.cgroup_procs >= 0 && libc::write(setup.cgroup_procs, b"0".as_ptr().cast(), 1) != 1
        {
            return fail(setup);
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(setup);
        }
        for (from, to) in [
            (setup.stdin, libc::STDIN_FILENO),
            (setup.stdout, libc::STDOUT_FILENO),
            (setup.stderr, libc::STDERR_FILENO),
        ] {
            let moved = if from == to {
                libc::fcntl(to, libc::F_SETFD, 0)
            } else {
                libc::dup2(from, to)
            };
            if moved < 0 {
                return fail(setup);
            }
        }
        if libc::chdir(setup.cwd) != 0 {
            return fail(setup);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(setup.path, setup.argv, setup.envp);
        if *libc::__errno_location() == libc::ENOEXEC {
            libc::execve(c"/bin/sh".as_ptr(), setup.sh_argv, setup.envp);
        }
        fail(setup)
    }
}

fn c_string(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The agent's environment with `layers` on top, later layers winning.
fn environment(
    layers: &[&std::collections::BTreeMap<String, String>],
) -> Vec<(OsString, OsString)> {
    let mut variables: std::collections::BTreeMap<OsString, OsString> =
        std::env::vars_os().collect();
    for layer in layers {
        for (key, value) in layer.iter() {
            variables.insert(key.into(), value.into());
        }
    }
    variables.into_iter().collect()
}

/// Where `program` is: taken from `cwd` when it has a slash, else the first executable
/// file of that name in `path` (the final environment's `PATH`).
fn resolve(program: &str, cwd: &Path, path: Option<&OsStr>) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(cwd.join(program));
    }
    let default_path = OsStr::new("/usr/local/bin:/usr/bin:/bin");
    let mut denied = false;
    for dir in std::env::split_paths(path.unwrap_or(default_path)) {
        let candidate = cwd.join(dir).join(program);
        let Ok(metadata) = std::fs::metadata(&candidate) else {
            continue;
        };
        if metadata.is_file() && metadata.permissions().mode() & 0o111 != 0 {
            return Ok(candidate);
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills `fds` with two new descriptors, owned from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and belong to no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts one rank (see the module's overview). Must run inside a tokio runtime (the
/// pipes register with it).
pub fn spawn(request: &SpawnRequest<'_>) -> io::Result<RankProcess> {
    let program = request
        .argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let env = environment(request.env);
    let path_variable = env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| value.as_os_str());
    let path = c_string(
        resolve(program, request.cwd, path_variable)?
            .into_os_string()
            .into_vec(),
    )?;
    let args: Vec<CString> = request
        .argv
        .iter()
        .map(|arg| c_string(arg.as_bytes()))
        .collect::<io::Result<_>>()?;
    let mut sh_args = vec![c_string("/bin/sh")?, path.clone()];
    sh_args.extend(args.iter().skip(1).cloned());
    let env_strings: Vec<CString> = env
        .iter()
        .map(|(key, value)| {
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            c_string(entry)
        })
        .collect::<io::Result<_>>()?;
    let cwd = c_string(request.cwd.as_os_str().as_bytes())?;
    let argv = null_terminated(&args);
    let sh_argv = null_terminated(&sh_args);
    let envp = null_terminated(&env_strings);

    let stdin = std::fs::File::open("/dev/null")?;
    let (stdout_read, stdout_write) = pipe_pair()?;
    let (stderr_read, stderr_write) = pipe_pair()?;
    // Registered before the clone: nothing can fail once the process runs.
    let stdout = pipe::Receiver::from_owned_fd(stdout_read)?;
    let stderr = pipe::Receiver::from_owned_fd(stderr_read)?;
    let setup = ChildSetup {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        sh_argv: sh_argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ptr(),
        stdin: stdin.as_raw_fd(),
        stdout: stdout_write.as_raw_fd(),
        stderr: stderr_write.as_raw_fd(),
        cgroup_procs: request.cgroup_procs.unwrap_or(-1),
        error: AtomicI32::new(0),
    };
    const STACK_BYTES: usize = 64 * 1024;
    let mut stack = vec![0u8; STACK_BYTES];
    // SAFETY: the child runs `child_main` on `stack` (its top, 16-byte aligned) and shares
    // this process's memory; CLONE_VFORK suspends this thread until the child has exec'd
    // or exited, so `setup`, the strings it points to and `stack` outlive its use of them.
    // All signals are blocked around the clone so that none is handled in the child
    // before it has reset the handlers; the child sets its own mask before exec.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(STACK_BYTES);
        let top = (top as usize & !15) as *mut libc::c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &setup as *const ChildSetup as *mut libc::c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    drop(stdout_write);
    drop(stderr_write);
    drop(stdin);
    let error = setup.error.load(Ordering::SeqCst);
    if error != 0 {
        // The child exited before exec: reap it and report why.
        reap(pid, 0)?;
        return Err(io::Error::from_raw_os_error(error));
    }
    // SAFETY: pidfd_open(2) on our own unreaped child, whose pid cannot be reused yet.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = if pidfd >= 0 {
        // SAFETY: a new descriptor owned from here on.
        Some(unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) })
    } else {
        None
    };
    Ok(RankProcess {
        pid: pid as u32,
        pidfd,
        stdout: Some(stdout),
        stderr: Some(stderr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::io::AsyncReadExt;

    async fn run(
        argv: &[&str],
        env: &BTreeMap<String, String>,
        cwd: &Path,
    ) -> (String, String, ExitStatus) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut process = spawn(&SpawnRequest {
            argv: &argv,
            env: &[env],
            cwd,
            cgroup_procs: None,
        })
        .expect("spawn");
        let mut out = String::new();
        let mut err = String::new();
        let mut stdout = process.stdout.take().unwrap();
        let mut stderr = process.stderr.take().unwrap();
        let (a, b) = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        a.unwrap();
        b.unwrap();
        let status = process.wait().await.expect("wait");
        (out, err, status)
    }

    #[tokio::test]
    async fn a_rank_gets_its_arguments_environment_directory_and_own_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("LADDER_TEST_VALUE".to_string(), "a b".to_string())]);
        let (out, err, status) = run(
            &[
                "sh",
                "-c",
                "echo \"$1|$LADDER_TEST_VALUE|$(pwd)|$(cut -d' ' -f5 /proc/$$/stat)|$$\"; echo oops >&2; read x; echo \"stdin:$x\"; exit 3",
                "sh",
                "arg one",
            ],
            &env,
            dir.path(),
        )
        .await;
        let fields: Vec<&str> = out.lines().next().unwrap().split('|').collect();
        assert_eq!(fields[0], "arg one");
        assert_eq!(fields[1], "a b");
        assert_eq!(
            Path::new(fields[2]).canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
        assert_eq!(fields[3], fields[4], "the rank leads its own process group");
        assert_eq!(out.lines().nth(1), Some("stdin:"), "stdin is /dev/null");
        assert_eq!(err, "oops\n");
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn signals_are_reported_and_a_missing_program_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, status) =
            run(&["sh", "-c", "kill -TERM $$"], &BTreeMap::new(), dir.path()).await;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        let missing = spawn(&SpawnRequest {
            argv: &["ladder-no-such-program".to_string()],
            env: &[],
            cwd: dir.path(),
            cgroup_procs: None,
        })
        .err()
        .expect("a missing program fails");
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
        let gone = spawn(&SpawnRequest {
            argv: &["true".to_string()],
            env: &[],
            cwd: &dir.path().join("gone"),
            cgroup_procs: None,
        })
        .err()
        .expect("a missing directory fails");
        assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));
    }

    #[tokio::test]
    async fn a_script_without_an_interpreter_line_runs_in_sh_and_sigpipe_is_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("plain");
        std::fs::write(&script, "echo from-sh \"$1\"\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (out, _, status) = run(&["./plain", "x"], &BTreeMap::new(), dir.path()).await;
        assert_eq!(out, "from-sh x\n");
        assert!(status.success());
        let (out, _, _) = run(
            &["grep", "SigIgn", "/proc/self/status"],
            &BTreeMap::new(),
            dir.path(),
        )
        .await;
        let ignored = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(
            ignored & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE is not ignored in a run"
        );
    }
}
