//! Keeping every process an attempt starts inside the attempt, so that none outlives it.
//!
//! Killing a run's process group misses what left it: a child started with `setsid`, a
//! daemonised data loader, a `nohup` server. Such a process would keep its GPU after the
//! run ended and the slot went to the next run. Two mechanisms track every descendant:
//!
//! - **cgroup v2** (preferred): each attempt gets its own cgroup under the agent's, the
//!   rank processes enter it before `exec`, and every descendant inherits it whatever it
//!   does to its session or process group. At the attempt's end `cgroup.kill` ends the
//!   whole tree at once. An attempt's cgroup that ends empty (no process, no child
//!   cgroup) is kept for a later attempt of the same agent rather than removed and
//!   created again: creating and removing a cgroup costs the kernel more than the rest
//!   of starting a short run. Used when a cgroup2 hierarchy is mounted (found through
//!   `/proc/self/mountinfo`, wherever it is mounted), the agent's own cgroup is writable
//!   and the kernel has `cgroup.kill` (Linux 5.14).
//! - **child subreaper** (the fallback): the agent marks itself with
//!   `PR_SET_CHILD_SUBREAPER`, so that orphaned descendants are re-parented to it rather
//!   than to init. At the attempt's end it kills every descendant of its ranks and every
//!   descendant of the agent carrying the attempt's `LADDER_RUN_ID` and `LADDER_ATTEMPT`
//!   in its environment, until none is left, and reaps the orphans. A process that both
//!   leaves the tree and clears its environment escapes this fallback, never the cgroup.
//!
//! A cgroup left by an agent that was itself SIGKILLed is killed and removed by the next
//! agent that starts in the same cgroup.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

/// Which mechanism `ladder agent --isolation` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// cgroup v2 where usable, else the subreaper.
    Auto,
    /// cgroup v2, or the agent refuses to start.
    Cgroup,
    /// The subreaper, even where a cgroup would do.
    Subreaper,
}

impl Isolation {
    pub fn parse(value: &str) -> Result<Isolation, String> {
        match value {
            "auto" => Ok(Isolation::Auto),
            "cgroup" => Ok(Isolation::Cgroup),
            "subreaper" => Ok(Isolation::Subreaper),
            other => Err(format!(
                "unknown isolation {other:?}: expected auto, cgroup or subreaper"
            )),
        }
    }
}

/// Longest wait for the processes of an attempt to be gone after they were killed.
const KILL_WAIT: Duration = Duration::from_secs(10);
const KILL_POLL: Duration = Duration::from_millis(20);
/// Most empty attempt cgroups an agent keeps for reuse.
const MAX_SPARE_CGROUPS: usize = 64;

/// How this agent process keeps track of its attempts' processes (one per process: the
/// agents of `ladder run` share it).
#[derive(Debug)]
pub enum Containment {
    /// Attempt cgroups are created in `dir` (`<agent's cgroup>/ladder-<pid>`).
    Cgroup {
        dir: PathBuf,
        /// Attempt cgroups that ended empty, ready for the next attempts.
        spare: Mutex<Vec<PathBuf>>,
        /// Attempt cgroups created so far (names `attempt-N`).
        created: AtomicU64,
    },
    Subreaper,
}

/// Rank processes this process started and waits for itself: the subreaper's zombie
/// reaper leaves them to their waiters. Held while a rank is spawned, so that the reaper
/// never sees a rank before it is listed.
static OWN_CHILDREN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

impl Containment {
    /// Sets up the mechanism `isolation` asks for. Must run inside a tokio runtime (the
    /// subreaper reaps orphans from a task).
    pub fn set_up(isolation: Isolation) -> Result<Arc<Containment>, String> {
        if isolation != Isolation::Subreaper {
            match cgroup_dir() {
                Ok(dir) => {
                    info!(cgroup = %dir.display(), "each run gets its own cgroup");
                    return Ok(Arc::new(Containment::Cgroup {
                        dir,
                        spare: Mutex::new(Vec::new()),
                        created: AtomicU64::new(0),
                    }));
                }
                Err(reason) if isolation == Isolation::Cgroup => {
                    return Err(format!("--isolation cgroup: {reason}"))
                }
                Err(reason) => {
                    info!(%reason, "no cgroup for runs; the agent tracks their processes as a child subreaper")
                }
            }
        }
        // SAFETY: prctl(2) sets a flag of this process.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "cannot become a child subreaper: {}",
                io::Error::last_os_error()
            ));
        }
        OWN_CHILDREN
            .lock()
            .expect("children")
            .get_or_insert_default();
        tokio::spawn(reap_orphans());
        Ok(Arc::new(Containment::Subreaper))
    }

    /// The mechanism in words, for `ladder agent`'s log.
    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup { dir, .. } => format!("cgroup v2 under {}", dir.display()),
            Containment::Subreaper => "child subreaper".to_string(),
        }
    }

    /// The scope of one attempt, before its first process starts: a spare cgroup of
    /// this agent, or a new one.
    pub fn attempt(self: &Arc<Self>, run_id: &str, attempt: u32) -> io::Result<Scope> {
        match &**self {
            Containment::Cgroup {
                dir,
                spare,
                created,
            } => {
                let reused = spare.lock().expect("spare cgroups").pop();
                let path = match reused {
                    Some(path) => path,
                    None => {
                        let n = created.fetch_add(1, Ordering::Relaxed);
                        let path = dir.join(format!("attempt-{n}"));
                        if let Err(error) = fs::create_dir(&path) {
                            if error.kind() != io::ErrorKind::AlreadyExists {
                                return Err(annotate(error, &path));
                            }
                            // Left by something else: end it first.
                            kill_cgroup_tree(&path);
                            fs::create_dir(&path).map_err(|e| annotate(e, &path))?;
                        }
                        path
                    }
                };
                let procs = path.join("cgroup.procs");
                let file = match fs::OpenOptions::new().write(true).open(&procs) {
                    Ok(file) => file,
                    Err(error) => {
                        let _ = fs::remove_dir(&path);
                        return Err(annotate(error, &procs));
                    }
                };
                Ok(Scope::Cgroup {
                    path,
                    procs: OwnedFd::from(file),
                    containment: self.clone(),
                    kept: Arc::new(AtomicBool::new(false)),
                })
            }
            Containment::Subreaper => Ok(Scope::Tree {
                run_id: run_id.to_string(),
                attempt,
            }),
        }
    }

    /// Keeps the empty attempt cgroup `path` for a later attempt, marking its scope
    /// `kept` first (so that dropping the scope leaves it alone); false when enough are
    /// kept already.
    fn keep_spare(&self, path: &Path, kept: &AtomicBool) -> bool {
        let Containment::Cgroup { spare, .. } = self else {
            return false;
        };
        let mut spare = spare.lock().expect("spare cgroups");
        if spare.len() >= MAX_SPARE_CGROUPS {
            return false;
        }
        kept.store(true, Ordering::SeqCst);
        spare.push(path.to_path_buf());
        true
    }
}

impl Drop for Containment {
    /// An agent that stops removes its cgroup, with whatever is still in it.
    fn drop(&mut self) {
        if let Containment::Cgroup { dir, .. } = self {
            kill_cgroup_tree(dir);
        }
    }
}

/// Where one attempt's processes are tracked.
#[derive(Debug)]
pub enum Scope {
    Cgroup {
        path: PathBuf,
        /// The cgroup's `cgroup.procs`, opened by the agent; a rank writes `0` to it
        /// between fork and exec.
        procs: OwnedFd,
        containment: Arc<Containment>,
        /// Kept empty for a later attempt: not to be removed.
        kept: Arc<AtomicBool>,
    },
    Tree {
        run_id: String,
        attempt: u32,
    },
}

impl Drop for Scope {
    /// A scope left without [`Scope::kill_all`] (its rank failed to start) still ends
    /// what it holds.
    fn drop(&mut self) {
        if let Scope::Cgroup { path, kept, .. } = self {
            if !kept.load(Ordering::SeqCst) && path.exists() {
                let _ = fs::write(path.join("cgroup.kill"), "1");
                let _ = fs::remove_dir(&*path);
            }
        }
    }
}

impl Scope {
    /// The `cgroup.procs` a new rank process must move itself into, if any.
    pub fn procs_fd(&self) -> Option<RawFd> {
        match self {
            Scope::Cgroup { procs, .. } => Some(procs.as_raw_fd()),
            Scope::Tree { .. } => None,
        }
    }

    /// Kills every process of the attempt still alive (`ranks` are its rank process
    /// ids) and waits until they are gone. Returns how many there were besides the
    /// ranks.
    pub async fn kill_all(&self, ranks: &[u32]) -> usize {
        match self {
            Scope::Cgroup {
                path,
                containment,
                kept,
                ..
            } => {
                let path = path.clone();
                let containment = containment.clone();
                let kept = kept.clone();
                let ranks: HashSet<u32> = ranks.iter().copied().collect();
                tokio::task::spawn_blocking(move || {
                    let pids = read_pids(&path.join("cgroup.procs"));
                    // The common end: nothing left, no child cgroup. The cgroup is kept
                    // for a later attempt, or removed (the kernel refuses the removal of
                    // a cgroup that is not empty: EBUSY).
                    if pids.is_empty()
                        && subdirectories(&path).is_empty()
                        && (containment.keep_spare(&path, &kept) || fs::remove_dir(&path).is_ok())
                    {
                        return 0;
                    }
                    let others = pids.iter().filter(|pid| !ranks.contains(pid)).count();
                    kill_cgroup_tree(&path);
                    others
                })
                .await
                .unwrap_or(0)
            }
            Scope::Tree { run_id, attempt } => {
                let marker = (
                    format!("LADDER_RUN_ID={run_id}").into_bytes(),
                    format!("LADDER_ATTEMPT={attempt}").into_bytes(),
                );
                tokio::task::spawn_blocking(move || kill_tree(&marker))
                    .await
                    .unwrap_or(0)
            }
        }
    }
}

/// Runs `spawn` (which starts a rank) with the reaper held off, and lists the rank as
/// waited for by its own waiter.
pub fn spawn_rank<T>(spawn: impl FnOnce() -> io::Result<(T, Option<u32>)>) -> io::Result<T> {
    let mut children = OWN_CHILDREN.lock().expect("children");
    let (child, pid) = spawn()?;
    if let (Some(set), Some(pid)) = (children.as_mut(), pid) {
        set.insert(pid);
    }
    Ok(child)
}

/// Notes that a rank's own waiter has reaped it.
pub fn rank_reaped(pid: u32) {
    if let Some(set) = OWN_CHILDREN.lock().expect("children").as_mut() {
        set.remove(&pid);
    }
}

fn annotate(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// This process's cgroup2 directory plus `ladder-<pid>`, created, after removing the
/// ones of agents that are gone; or why there is none.
fn cgroup_dir() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let (mount_root, mount_point) =
        cgroup2_mount(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("this process is in no cgroup2 group")?;
    // The cgroup path is relative to the hierarchy's root; the mount may show a subtree.
    let relative = path
        .strip_prefix(mount_root.as_str())
        .unwrap_or(path)
        .trim_start_matches('/');
    let own_dir = mount_point.join(relative);
    if !own_dir.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup2 directory", own_dir.display()));
    }
    remove_stale(&own_dir);
    let dir = own_dir.join(format!("ladder-{}", std::process::id()));
    if let Err(error) = fs::create_dir(&dir) {
        if error.kind() != io::ErrorKind::AlreadyExists {
            return Err(format!("cannot create {}: {error}", dir.display()));
        }
    }
    // Moving a process from the agent's cgroup into a child needs write access to both.
    for file in [own_dir.join("cgroup.procs"), dir.join("cgroup.procs")] {
        if let Err(error) = fs::OpenOptions::new().write(true).open(&file) {
            let _ = fs::remove_dir(&dir);
            return Err(format!("cannot write {}: {error}", file.display()));
        }
    }
    if !dir.join("cgroup.kill").exists() {
        let _ = fs::remove_dir(&dir);
        return Err("the kernel has no cgroup.kill (Linux 5.14 or later)".to_string());
    }
    Ok(dir)
}

/// The root and mount point of the first cgroup2 mount in a `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        if rest.split(' ').next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = fields.split(' ').collect();
        Some((
            unescape(fields.get(3)?),
            PathBuf::from(unescape(fields.get(4)?)),
        ))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(code) = u8::from_str_radix(digits, 8) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kills and removes the `ladder-PID` cgroups of agent processes that no longer exist.
fn remove_stale(own_dir: &Path) {
    let Ok(entries) = fs::read_dir(own_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ladder-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let left = count_procs_tree(&entry.path());
        if left > 0 {
            warn!(cgroup = %entry.path().display(), processes = left, "killing the processes a previous agent left behind");
        }
        kill_cgroup_tree(&entry.path());
    }
}

fn count_procs_tree(dir: &Path) -> usize {
    let mut count = read_pids(&dir.join("cgroup.procs")).len();
    for sub in subdirectories(dir) {
        count += count_procs_tree(&sub);
    }
    count
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn read_pids(file: &Path) -> Vec<u32> {
    fs::read_to_string(file)
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in the cgroup and its children, waits until it is empty, and
/// removes it (blocking).
fn kill_cgroup_tree(dir: &Path) {
    for sub in subdirectories(dir) {
        kill_cgroup_tree(&sub);
    }
    if let Err(error) = fs::write(dir.join("cgroup.kill"), "1") {
        if error.kind() != io::ErrorKind::NotFound {
            warn!(cgroup = %dir.display(), %error, "cannot kill the run's cgroup");
        }
    }
    let deadline = std::time::Instant::now() + KILL_WAIT;
    loop {
        let populated = fs::read_to_string(dir.join("cgroup.events"))
            .map(|events| events.lines().any(|l| l == "populated 1"))
            .unwrap_or(false);
        if !populated || std::time::Instant::now() >= deadline {
            if populated {
                warn!(cgroup = %dir.display(), "the run's processes did not end within 10 s of SIGKILL");
            }
            break;
        }
        std::thread::sleep(KILL_POLL);
    }
    if let Err(error) = fs::remove_dir(dir) {
        if error.kind() != io::ErrorKind::NotFound {
            warn!(cgroup = %dir.display(), %error, "cannot remove the run's cgroup");
        }
    }
}

/// One process as `/proc/PID/stat` shows it.
struct ProcEntry {
    ppid: u32,
    zombie: bool,
}

fn processes() -> HashMap<u32, ProcEntry> {
    let mut found = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("");
        let Some(ppid) = fields.next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        found.insert(
            pid,
            ProcEntry {
                ppid,
                zombie: state == "Z" || state == "X",
            },
        );
    }
    found
}

/// Every descendant of `roots` (not the roots themselves) in `table`.
fn descendants(table: &HashMap<u32, ProcEntry>, roots: &[u32]) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, entry) in table {
        children.entry(entry.ppid).or_default().push(pid);
    }
    let mut found = HashSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if found.insert(child) {
                stack.push(child);
            }
        }
    }
    found
}

fn environ_has(pid: u32, marker: &(Vec<u8>, Vec<u8>)) -> bool {
    let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut run = false;
    let mut attempt = false;
    for entry in environ.split(|b| *b == 0) {
        run |= entry == marker.0.as_slice();
        attempt |= entry == marker.1.as_slice();
    }
    run && attempt
}

/// The subreaper's kill: every living descendant of this process with the attempt's
/// marker in its environment, and all of their descendants, SIGKILLed until none is
/// left; orphans re-parented here are reaped. (The ranks themselves carry the marker;
/// their ids are not used, as a reaped rank's id may already belong to another process.)
/// Blocking.
fn kill_tree(marker: &(Vec<u8>, Vec<u8>)) -> usize {
    let me = std::process::id();
    let mut killed: HashSet<u32> = HashSet::new();
    let deadline = std::time::Instant::now() + KILL_WAIT;
    loop {
        let table = processes();
        let roots: Vec<u32> = descendants(&table, &[me])
            .into_iter()
            .filter(|pid| environ_has(*pid, marker))
            .collect();
        let mut targets = descendants(&table, &roots);
        targets.extend(roots);
        let alive: Vec<u32> = targets
            .into_iter()
            .filter(|pid| table.get(pid).is_some_and(|entry| !entry.zombie))
            .collect();
        for &pid in &alive {
            // SAFETY: kill(2) on a process found among our descendants just now.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            killed.insert(pid);
        }
        reap_zombie_orphans();
        if alive.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(KILL_POLL);
    }
    killed.len()
}

/// Reaps this process's zombie children that no waiter of its own waits for: orphans
/// re-parented to the subreaper.
fn reap_zombie_orphans() {
    let me = std::process::id();
    let children = OWN_CHILDREN.lock().expect("children");
    let Some(own) = children.as_ref() else {
        return;
    };
    for (pid, entry) in processes() {
        if entry.ppid == me && entry.zombie && !own.contains(&pid) {
            let mut status = 0;
            // SAFETY: waitpid(2) on one zombie child no one else waits for.
            unsafe {
                libc::waitpid(pid as i32, &mut status, libc::WNOHANG);
            }
        }
    }
}

/// Reaps orphaned zombies whenever a child of this process ends.
async fn reap_orphans() {
    let Ok(mut signals) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
    else {
        warn!("cannot watch SIGCHLD: orphans of runs are reaped only when their run ends");
        return;
    };
    while signals.recv().await.is_some() {
        let _ = tokio::task::spawn_blocking(reap_zombie_orphans).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// Runs where tests run (as root, with cgroup v2 mounted: `.ci/run` runs as root on
    /// such a machine); fails, never skips, where no cgroup can be made.
    #[tokio::test]
    async fn an_attempt_cgroup_left_empty_is_reused_and_one_left_busy_is_not() {
        let containment = Containment::set_up(Isolation::Cgroup).expect("a writable cgroup v2");
        let first = containment.attempt("r", 1).unwrap();
        let Scope::Cgroup {
            path: first_path, ..
        } = &first
        else {
            panic!("not a cgroup scope");
        };
        let first_path = first_path.clone();
        assert!(first_path.is_dir());
        assert_eq!(first.kill_all(&[]).await, 0);
        drop(first);
        // Dropping the ended scope left its cgroup for the next attempt.
        assert!(first_path.is_dir());
        let second = containment.attempt("r", 2).unwrap();
        let Scope::Cgroup { path, .. } = &second else {
            panic!("not a cgroup scope");
        };
        assert_eq!(path, &first_path);

        // A process still in the cgroup at the end: killed, and the cgroup removed
        // rather than kept.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        fs::write(path.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        assert_eq!(second.kill_all(&[]).await, 1);
        let status = sleeper.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!first_path.exists());
        drop(second);
        let third = containment.attempt("r", 3).unwrap();
        let Scope::Cgroup { path, .. } = &third else {
            panic!("not a cgroup scope");
        };
        assert_ne!(path, &first_path);
        // A scope dropped without ending (its rank failed to start) removes its cgroup.
        let third_path = path.clone();
        drop(third);
        assert!(!third_path.exists());
    }

    #[test]
    fn the_cgroup2_mount_is_found_wherever_it_is() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(("/".to_string(), PathBuf::from("/sys/fs/cgroup/unified")))
        );
        let spaced = "29 1 0:26 /user.slice /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(spaced),
            Some(("/user.slice".to_string(), PathBuf::from("/mnt/my cgroups")))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn descendants_follow_the_whole_tree() {
        let table: HashMap<u32, ProcEntry> = [(2, 1), (3, 2), (4, 3), (5, 1), (6, 9)]
            .into_iter()
            .map(|(pid, ppid)| {
                (
                    pid,
                    ProcEntry {
                        ppid,
                        zombie: false,
                    },
                )
            })
            .collect();
        let found = descendants(&table, &[2]);
        assert_eq!(found, HashSet::from([3, 4]));
        assert_eq!(descendants(&table, &[1]), HashSet::from([2, 3, 4, 5]));
    }
}
