//! Orphans: a run's processes that leave its process group (`setsid`, daemons) must end
//! with the run, on completion and on cancellation, whichever mechanism the agent uses:
//! a cgroup v2 per run, or the agent as a child subreaper. CI runs as root, where the
//! cgroup is writable; `--isolation cgroup` makes the agent refuse to start without one,
//! so that test fails rather than passes without having tried.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ladder_e2e::{wait_until, write_file, write_script, Cluster, TestDir};

const POLL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(120);

/// `orphan.sh MODE DIR`: starts `sleep 1000` in a new session (out of the run's process
/// group), waits until it has written its pid to DIR/MODE.pid, reports a metric, then
/// exits (`complete`) or sleeps until stopped (`stay`).
const SCRIPT: &str = r#"#!/bin/sh
mode=$1
dir=$2
setsid sh -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 1000' "$dir/$mode.pid" </dev/null >/dev/null 2>&1 &
while [ ! -s "$dir/$mode.pid" ]; do sleep 0.02; done
echo '@ladder {"step": 1, "started": 1}'
if [ "$mode" = stay ]; then exec sleep 1000; fi
"#;

/// Whether `pid` is a living `sleep 1000` (not gone, not a zombie awaiting its reaper).
fn orphan_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    state != "Z" && cmdline == b"sleep\x001000\x00"
}

fn read_pid(dir: &Path, mode: &str) -> u32 {
    let path = dir.join(format!("{mode}.pid"));
    wait_until(TIMEOUT, POLL, "the orphan's pid file", || {
        fs::read_to_string(&path).ok()?.trim().parse::<u32>().ok()
    })
}

fn orphans_end_with_their_run(isolation: &str) {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let pids = dir.join("pids");
    fs::create_dir(&pids).expect("pids dir");
    let cluster = Cluster::builder(dir)
        .agent_with(
            "agent-a",
            2,
            &["--isolation", isolation, "--stop-grace", "5"],
        )
        .start();
    let coordinator = &cluster.coordinator;
    write_script(dir, "orphan.sh", SCRIPT);
    let sweep_file = write_file(
        dir,
        "sweep.yaml",
        &format!(
            r#"name: orphans-{isolation}
method: grid
parallel: 2
parameters:
  mode: {{values: [complete, stay]}}
command: [sh, "{{{{ladder.code_dir}}}}/orphan.sh", "{{{{mode}}}}", "{}"]
"#,
            pids.display()
        ),
    );
    let sweep_id = coordinator.submit(&sweep_file);

    // The run that completes takes its orphan with it.
    let completed = read_pid(&pids, "complete");
    let run = wait_until(TIMEOUT, POLL, "the complete run completed", || {
        coordinator
            .runs(&sweep_id)
            .into_iter()
            .find(|r| r["params"]["mode"] == "complete" && r["status"] == "completed")
    });
    assert!(
        !orphan_alive(completed),
        "the orphan {completed} of a completed run is still running ({isolation})"
    );
    let id = run["id"].as_str().expect("run id").to_string();
    let detail = coordinator.run_detail(&id);
    assert!(
        detail
            .to_string()
            .contains("killed 1 process(es) the run left behind"),
        "the run's log says nothing of its orphan: {detail}"
    );

    // The run that is cancelled too.
    let stayed = read_pid(&pids, "stay");
    assert!(
        orphan_alive(stayed),
        "the orphan of the running run is already gone"
    );
    wait_until(TIMEOUT, POLL, "the stay run running", || {
        coordinator
            .runs(&sweep_id)
            .into_iter()
            .any(|r| r["params"]["mode"] == "stay" && r["status"] == "running")
            .then_some(())
    });
    let output = coordinator.ladder(&["sweep", "cancel", &sweep_id]);
    assert!(output.status.success(), "{output:?}");
    let sweep = coordinator.watch(&sweep_id, TIMEOUT);
    assert_eq!(sweep["status"], "cancelled", "{sweep}");
    assert!(
        !orphan_alive(stayed),
        "the orphan {stayed} of a cancelled run is still running ({isolation})"
    );
    let log = fs::read_to_string(cluster.agent("agent-a").log()).unwrap_or_default();
    let expected = if isolation == "cgroup" {
        "cgroup v2 under"
    } else {
        "child subreaper"
    };
    assert!(
        log.contains(expected),
        "the agent does not say it uses {expected}:\n{log}"
    );
}

#[test]
fn orphans_end_with_their_run_in_a_cgroup() {
    orphans_end_with_their_run("cgroup");
}

#[test]
fn orphans_end_with_their_run_under_the_subreaper() {
    orphans_end_with_their_run("subreaper");
}
