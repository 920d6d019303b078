//! `deploy/slurm/ladder-agent.sbatch` as a user follows it, on a real one-node Slurm
//! cluster: `munged` and `slurmctld`/`slurmd` run as children of the test, everything
//! (key, socket, `slurm.conf`, state, logs) in the test's temporary directory. The
//! script is submitted with `sbatch --cpus-per-task=N` against a coordinator on loopback,
//! its agent runs part of a sweep, `scancel --batch --signal=TERM` drains it while runs
//! are in flight, and a second job finishes what the first handed back.
//!
//! Needs `munged`, `slurmctld`, `slurmd` and the Slurm client commands (Debian packages
//! `munge` and `slurm-wlm`, installed by `tests/setup.sh`) and root (the daemons run as
//! `SlurmUser=root`); without them the test fails.

use std::fs::{self, File};
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ladder_e2e::{
    as_str, ladder_bin, wait_until, write_file, write_script, Coordinator, TestDir, Value,
};

const POLL: Duration = Duration::from_millis(250);
/// Slurm daemons start, and jobs start and end, within seconds; this is generous.
const SLURM_TIMEOUT: Duration = Duration::from_secs(120);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Each run reports a metric, works for three seconds and reports again; the drain's
/// SIGTERM ends it during the sleep.
const RUN_SCRIPT: &str = r#"#!/bin/sh
echo "@ladder {\"step\": 1, \"value\": $1}"
sleep 3
echo "@ladder {\"step\": 2, \"value\": $1}"
"#;

/// A one-node Slurm cluster of this machine; every daemon is killed on drop, after the
/// jobs it submitted.
struct SlurmCluster {
    conf: PathBuf,
    dir: PathBuf,
    daemons: Vec<(&'static str, Child)>,
    jobs: Vec<String>,
}

/// A TCP port no one listens on now, for the Slurm daemons (which, unlike ladder's
/// servers, cannot take a bound listener).
fn free_port() -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(output.status.success(), "{program} {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Starts a daemon in the foreground as a child; its stdout and stderr go to `log`.
fn start_daemon(program: &str, args: &[&str], log: &Path) -> Child {
    let log_file =
        File::create(log).unwrap_or_else(|e| panic!("create log {}: {e}", log.display()));
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {program} ({e}): install the Debian packages slurm-wlm and munge \
                 (tests/setup.sh does)"
            )
        })
}

impl SlurmCluster {
    fn start(dir: &Path) -> SlurmCluster {
        let dir = dir.join("slurm");
        let munge = dir.join("munge");
        let state = dir.join("state");
        let spool = dir.join("spool");
        for path in [&munge, &state, &spool] {
            fs::create_dir_all(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let mut cluster = SlurmCluster {
            conf: dir.join("slurm.conf"),
            dir: dir.clone(),
            daemons: Vec::new(),
            jobs: Vec::new(),
        };

        let key = munge.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(&mut bytes))
            .expect("read /dev/urandom");
        fs::write(&key, &bytes).expect("write the munge key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).expect("chmod the key");
        let socket = munge.join("munge.socket");
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
        // --force: munged wants every directory above its socket open to all, which the
        // test's private temporary directory is not; only this test's processes use it.
        let munged = start_daemon(
            "munged",
            &[
                "--foreground",
                "--force",
                &format!("--key-file={}", path(&key)),
                &format!("--socket={}", path(&socket)),
                &format!("--pid-file={}", path(&munge.join("munged.pid"))),
                &format!("--log-file={}", path(&munge.join("munged.log"))),
                &format!("--seed-file={}", path(&munge.join("munged.seed"))),
            ],
            &munge.join("munged.out"),
        );
        cluster.daemons.push(("munged", munged));
        wait_until(SLURM_TIMEOUT, POLL, "munged's socket", || {
            socket.exists().then_some(())
        });

        let node = command_output("hostname", &["-s"]);
        let cpus = command_output("nproc", &[]);
        let user = command_output("id", &["-un"]);
        let conf = format!(
            "ClusterName=ladder-e2e
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
KillWait=30
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
",
            ctld_port = free_port(),
            slurmd_port = free_port(),
            socket = path(&socket),
            state = path(&state),
            spool = path(&spool),
            dir = path(&dir),
        );
        fs::write(&cluster.conf, conf).expect("write slurm.conf");
        let conf = path(&cluster.conf);
        let slurmctld = start_daemon(
            "slurmctld",
            &["-D", "-f", &conf],
            &dir.join("slurmctld.out"),
        );
        cluster.daemons.push(("slurmctld", slurmctld));
        let slurmd = start_daemon("slurmd", &["-D", "-f", &conf], &dir.join("slurmd.out"));
        cluster.daemons.push(("slurmd", slurmd));
        wait_until(SLURM_TIMEOUT, POLL, "the Slurm node idle in sinfo", || {
            cluster.check_daemons();
            let output = cluster.client("sinfo", &["--noheader", "--format=%T"]);
            (String::from_utf8_lossy(&output.stdout).trim() == "idle").then_some(())
        });
        cluster
    }

    /// Panics when a daemon has exited.
    fn check_daemons(&mut self) {
        for (name, child) in &mut self.daemons {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} exited with {status}; its logs are in {}",
                    self.dir.display()
                );
            }
        }
    }

    /// A Slurm client command of this cluster.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf);
        command
    }

    fn client(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// `sbatch --parsable ARGS` with `env` added to this process's environment (sbatch
    /// passes it on to the job); the job id.
    fn sbatch(&mut self, args: &[&str], env: &[(&str, String)]) -> String {
        let mut command = self.command("sbatch");
        command.arg("--parsable").args(args).env_remove("NO_COLOR");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.stdin(Stdio::null()).output().expect("run sbatch");
        assert!(output.status.success(), "sbatch {args:?}: {output:?}");
        let job = String::from_utf8_lossy(&output.stdout)
            .trim()
            .split(';')
            .next()
            .expect("job id")
            .to_string();
        self.jobs.push(job.clone());
        job
    }

    /// The job's state as `squeue` reports it (`RUNNING`, `COMPLETED`, ...), empty when
    /// it is not known (yet).
    fn job_state(&self, job: &str) -> String {
        let output = self.client(
            "squeue",
            &["--noheader", "--states=all", "--format=%T", "--jobs", job],
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Waits until the job has ended and returns its final state.
    fn wait_job_end(&self, job: &str) -> String {
        wait_until(SLURM_TIMEOUT, POLL, &format!("job {job} to end"), || {
            let state = self.job_state(job);
            let ended = !state.is_empty()
                && !["PENDING", "CONFIGURING", "RUNNING", "COMPLETING"].contains(&state.as_str());
            ended.then_some(state)
        })
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        if !self.jobs.is_empty() {
            // The jobs' processes are not the daemons' children: end them first.
            let _ = self
                .command("scancel")
                .args(["--signal=KILL", "--full"])
                .args(&self.jobs)
                .output();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline
                && self.jobs.iter().any(|job| {
                    matches!(
                        self.job_state(job).as_str(),
                        "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING"
                    )
                })
            {
                std::thread::sleep(POLL);
            }
        }
        for (_, child) in self.daemons.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for log in ["slurmctld.log", "slurmd.log", "slurmd.out", "slurmctld.out"] {
                let text = fs::read_to_string(self.dir.join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("----- {log}");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn attempts(coordinator: &Coordinator, run_id: &str) -> Vec<Value> {
    coordinator.run_detail(run_id)["attempt_history"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempt_history for {run_id}"))
        .clone()
}

fn agent_names(coordinator: &Coordinator) -> Vec<String> {
    let agents = coordinator.json(&["agents", "ls"]);
    agents["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("no agents array in {agents}"))
        .iter()
        .map(|a| as_str(&a["name"], "agent name").to_string())
        .collect()
}

#[test]
fn sbatch_script_drains_on_scancel_and_leaves_nothing_behind() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let mut cluster = SlurmCluster::start(dir);
    // The coordinator alone: its agents are started by Slurm, from the sbatch script.
    let coordinator = Coordinator::start(&dir.join("data"), &["--heartbeat-interval", "0.5"]);
    let token = fs::read_to_string(dir.join("data").join("admin-token")).expect("admin token");

    let code_dir = dir.join("code");
    let work_root = dir.join("work");
    let log_dir = dir.join("logs");
    for path in [&code_dir, &work_root] {
        fs::create_dir_all(path).expect("create a directory");
    }
    write_script(&code_dir, "run.sh", RUN_SCRIPT);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm/ladder-agent.sbatch");
    let script = script.to_str().expect("utf-8 path").to_string();
    let cpus = command_output("nproc", &[]);
    let node = command_output("hostname", &["-s"]);
    let env = [
        ("LADDER_COORDINATOR", coordinator.url()),
        ("LADDER_TOKEN", token.trim().to_string()),
        ("LADDER_BIN", ladder_bin().display().to_string()),
        ("LADDER_WORK_ROOT", work_root.display().to_string()),
        ("LADDER_LOG_DIR", log_dir.display().to_string()),
        ("LADDER_CODE_DIR", code_dir.display().to_string()),
        (
            "LADDER_ENV_FILE",
            dir.join("no-slurm.env").display().to_string(),
        ),
    ];
    let output_pattern = dir.join("slurm-%j.out").display().to_string();
    let sbatch_args = [
        format!("--cpus-per-task={cpus}"),
        format!("--output={output_pattern}"),
        script,
    ];
    let sbatch_args: Vec<&str> = sbatch_args.iter().map(String::as_str).collect();

    let first_job = cluster.sbatch(&sbatch_args, &env);
    let first_agent = format!("slurm-{first_job}-{node}");
    coordinator.wait_for_agents(&[&first_agent], SLURM_TIMEOUT);

    let sweep_file = write_file(
        dir,
        "sweep.yaml",
        r#"name: slurm-e2e
method: grid
parallel: 2
parameters:
  x: {values: [1, 2, 3, 4, 5, 6, 7, 8]}
command: [sh, "{{ladder.code_dir}}/run.sh", "{{x}}"]
"#,
    );
    let sweep_id = coordinator.submit(&sweep_file);

    // Some runs complete on the first job's agent; then it is drained with runs in flight.
    wait_until(
        RUN_TIMEOUT,
        POLL,
        "two runs completed and one running",
        || {
            let runs = coordinator.runs(&sweep_id);
            let completed = runs.iter().filter(|r| r["status"] == "completed").count();
            let running = runs.iter().any(|r| r["status"] == "running");
            (completed >= 2 && running).then_some(())
        },
    );
    let scancel = cluster.client("scancel", &["--batch", "--signal=TERM", first_job.as_str()]);
    assert!(scancel.status.success(), "scancel: {scancel:?}");
    let state = cluster.wait_job_end(&first_job);
    assert_eq!(state, "COMPLETED", "the drained agent exits 0");
    let released = coordinator
        .runs(&sweep_id)
        .iter()
        .filter(|r| {
            let id = as_str(&r["id"], "run id");
            attempts(&coordinator, id)
                .iter()
                .any(|a| a["outcome"] == "released")
        })
        .count();
    assert!(released >= 1, "no run was handed back by the drain");
    let first_work_dir = work_root.join(format!("ladder-{first_job}"));
    assert!(
        !first_work_dir.exists(),
        "the job's work directory {} is left behind",
        first_work_dir.display()
    );
    wait_until(
        SLURM_TIMEOUT,
        POLL,
        "the drained agent's entry to be dropped",
        || (!agent_names(&coordinator).contains(&first_agent)).then_some(()),
    );

    // A second job finishes what the first handed back.
    let second_job = cluster.sbatch(&sbatch_args, &env);
    let sweep = coordinator.watch(&sweep_id, RUN_TIMEOUT);
    assert_eq!(sweep["status"], "completed", "{sweep}");
    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 8, "{runs:?}");
    for run in &runs {
        let id = as_str(&run["id"], "run id");
        assert_eq!(run["status"], "completed", "{run}");
        for attempt in attempts(&coordinator, id) {
            let outcome = as_str(&attempt["outcome"], "outcome");
            assert!(
                outcome == "completed" || outcome == "released",
                "run {id} has an attempt {outcome}: {attempt}"
            );
        }
    }
    let scancel = cluster.client(
        "scancel",
        &["--batch", "--signal=TERM", second_job.as_str()],
    );
    assert!(scancel.status.success(), "scancel: {scancel:?}");
    assert_eq!(cluster.wait_job_end(&second_job), "COMPLETED");
    assert!(!work_root.join(format!("ladder-{second_job}")).exists());
    wait_until(
        SLURM_TIMEOUT,
        POLL,
        "no slurm agent left in agents ls",
        || {
            let names = agent_names(&coordinator);
            (!names.iter().any(|n| n.starts_with("slurm-"))).then_some(())
        },
    );

    // The job logs are plain text in LADDER_LOG_DIR, and nothing landed in the code dir.
    for job in [&first_job, &second_job] {
        let log = log_dir.join(format!("ladder-agent-{job}.log"));
        let text = fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        assert!(text.contains("draining"), "job {job}'s log:\n{text}");
        assert!(
            !text.contains("\x1b["),
            "job {job}'s log holds ANSI escapes:\n{text}"
        );
    }
    let in_code_dir: Vec<_> = fs::read_dir(&code_dir)
        .expect("read the code dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(in_code_dir, ["run.sh"], "files left in the code directory");
}
