//! A coordinator started without `--auth`, and `ladder run`'s embedded one, on a machine
//! shared with other users: every RPC needs the admin token it wrote to private files,
//! which the same user's CLI and agents find from the URL alone and another user (here:
//! a client with another runtime directory) cannot; `--no-auth` turns this off, on
//! loopback only.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use ladder_e2e::{
    as_str, describe, ladder_command, parse_json_output, runtime_dir, runtime_file, wait_until,
    write_file, Agent, Coordinator, TestDir, Value, CLIENT_TIMEOUT,
};
use ladder_proto::v1 as pb;

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `ladder ARGS` as another user of the machine would run it: its own, empty runtime
/// directory and home, no token.
fn as_other_user(dir: &Path, args: &[&str]) -> Output {
    let home = dir.join("other-user");
    fs::create_dir_all(&home).expect("other user's home");
    ladder_command()
        .args(args)
        .env("XDG_RUNTIME_DIR", &home)
        .env("HOME", &home)
        .stdin(Stdio::null())
        .output()
        .expect("run ladder")
}

/// `ListSweeps` over a raw gRPC connection, with `authorization: Bearer TOKEN` when given:
/// how many sweeps, or the refusal's code and message.
fn list_sweeps_raw(url: &str, token: Option<&str>) -> Result<usize, (tonic::Code, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = pb::sweep_service_client::SweepServiceClient::connect(url.to_string())
            .await
            .expect("connect");
        let mut request = tonic::Request::new(pb::ListSweepsRequest::default());
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        match client.list_sweeps(request).await {
            Ok(response) => Ok(response.into_inner().sweeps.len()),
            Err(status) => Err((status.code(), status.message().to_string())),
        }
    })
}

fn assert_failed_with(args: &[&str], output: &Output, needle: &str) {
    assert!(!output.status.success(), "{}", describe(args, output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(needle),
        "stderr lacks {needle:?}: {}",
        describe(args, output)
    );
}

fn sweep_file(dir: &Path, name: &str, command: &str) -> PathBuf {
    write_file(
        dir,
        &format!("{name}.yaml"),
        &format!("name: {name}\nmethod: grid\nparameters:\n  a: {{values: [1, 2]}}\ncommand: {command}\n"),
    )
}

#[test]
fn a_coordinator_without_auth_serves_only_the_holder_of_its_private_admin_token() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let data = dir.join("data");
    // Started by hand, not with the cluster builder: the agent joins only after the
    // token checks, to show that it finds the token from the URL alone.
    let mut coordinator = Coordinator::start(&data, &["--heartbeat-interval", "0.5"]);
    let url = coordinator.url();

    // The token is in two files only this user can read.
    let token_file = data.join("admin-token");
    let token = fs::read_to_string(&token_file)
        .expect("the data directory's token file")
        .trim()
        .to_string();
    assert_eq!(token.len(), 64, "{token}");
    assert_eq!(mode(&token_file), 0o600);
    let runtime = runtime_file(coordinator.addr());
    assert_eq!(mode(&runtime), 0o600);
    assert_eq!(mode(&runtime_dir().join("ladder")), 0o700);
    let info: Value =
        serde_json::from_str(&fs::read_to_string(&runtime).expect("runtime file")).expect("json");
    assert_eq!(info["url"], url.as_str(), "{info}");
    assert_eq!(info["token"], token.as_str(), "{info}");
    assert_eq!(info["pid"], coordinator.pid().expect("running"), "{info}");

    // A request without the token is refused, as is one with another token.
    let (code, message) = list_sweeps_raw(&url, None).expect_err("no token");
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("missing bearer token"), "{message}");
    let (code, message) = list_sweeps_raw(&url, Some(&"0".repeat(64))).expect_err("wrong token");
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert_eq!(list_sweeps_raw(&url, Some(&token)), Ok(0));

    // Another user of the machine has no runtime file for it: refused.
    let file = sweep_file(dir, "local", "[sleep, \"0.{{a}}\"]");
    let submit = [
        "sweep",
        "submit",
        file.to_str().unwrap(),
        "--coordinator",
        &url,
    ];
    let output = as_other_user(dir, &submit);
    assert_failed_with(&submit, &output, "missing bearer token");

    // Its own user's CLI and agent find the token from the URL alone.
    let sweep_id = coordinator.submit(&file);
    let _agent = Agent::start(&url, "local-agent", 2, &dir.join("agent"), dir);
    let finished = coordinator.watch(&sweep_id, Duration::from_secs(120));
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_eq!(finished["counts"]["completed"], 2, "{finished}");

    // A restart on the same data directory keeps the token (agents hold it).
    coordinator.restart();
    let info: Value =
        serde_json::from_str(&fs::read_to_string(&runtime).expect("runtime file")).expect("json");
    assert_eq!(info["token"], token.as_str(), "{info}");
    coordinator.wait_for_agents(&["local-agent"], Duration::from_secs(60));

    // A clean shutdown removes the runtime file; the data directory keeps its token.
    let status = coordinator
        .terminate(Duration::from_secs(60))
        .expect("the coordinator exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!runtime.exists(), "{} is left behind", runtime.display());
    assert!(token_file.exists());
}

#[test]
fn no_auth_is_refused_off_loopback_and_serves_without_a_token_on_loopback() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let data = dir.join("open");
    let data_arg = data.to_str().unwrap();
    let args = [
        "coordinator",
        "--listen",
        "0.0.0.0:0",
        "--data",
        data_arg,
        "--no-auth",
    ];
    let output = ladder_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ladder");
    assert_failed_with(
        &args,
        &output,
        "--no-auth is allowed only on a loopback address, not 0.0.0.0:0",
    );

    let coordinator = Coordinator::start(&data, &["--no-auth"]);
    assert!(!data.join("admin-token").exists());
    assert!(!runtime_file(coordinator.addr()).exists());
    assert_eq!(list_sweeps_raw(&coordinator.url(), None), Ok(0));
    let url = coordinator.url();
    let args = ["sweep", "ls", "--json", "--coordinator", &url];
    let output = as_other_user(dir, &args);
    let listed = parse_json_output(&args, &output);
    assert_eq!(listed["sweeps"], Value::Array(vec![]), "{listed}");
}

#[test]
fn ladder_run_serves_only_its_own_user() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    // This user's runtime directory, watched for the embedded coordinator's file.
    let runtime = dir.join("runtime");
    let file = sweep_file(dir, "embedded", "[sleep, \"60\"]");
    let data = dir.join("store");
    let mut child = ladder_command()
        .args(["run", file.to_str().unwrap(), "--data"])
        .arg(&data)
        .args(["--slots", "1", "--gpus", "none"])
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ladder run");
    let found = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "the runtime file of ladder run's coordinator",
        || {
            let entries = fs::read_dir(runtime.join("ladder")).ok()?;
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("coordinator-127.0.0.1-"))
                })
                .and_then(|p| {
                    let info: Value = serde_json::from_str(&fs::read_to_string(&p).ok()?).ok()?;
                    Some((p, info))
                })
        },
    );
    let (path, info) = found;
    assert_eq!(mode(&path), 0o600);
    let url = as_str(&info["url"], "url").to_string();
    let addr: SocketAddr = as_str(&info["listen"], "listen").parse().expect("address");
    assert_eq!(url, format!("http://{addr}"));

    // Another local user can neither read nor submit.
    let ls = ["sweep", "ls", "--json", "--coordinator", &url];
    let output = as_other_user(dir, &ls);
    assert_failed_with(&ls, &output, "missing bearer token");
    let other = sweep_file(dir, "intruder", "[touch, \"owned-{{a}}\"]");
    let submit = [
        "sweep",
        "submit",
        other.to_str().unwrap(),
        "--coordinator",
        &url,
    ];
    let output = as_other_user(dir, &submit);
    assert_failed_with(&submit, &output, "missing bearer token");

    // The same user's CLI finds the token and sees ladder run's sweep.
    let output = ladder_command()
        .args(ls)
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdin(Stdio::null())
        .output()
        .expect("run ladder");
    let listed = parse_json_output(&ls, &output);
    let sweeps = listed["sweeps"].as_array().expect("sweeps");
    assert_eq!(sweeps.len(), 1, "{listed}");
    assert_eq!(sweeps[0]["name"], "embedded", "{listed}");

    // Interrupted, ladder run cancels its sweep, stops and removes the runtime file.
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_until(
        CLIENT_TIMEOUT,
        Duration::from_millis(50),
        "ladder run to exit",
        || child.try_wait().expect("wait"),
    );
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(!path.exists(), "{} is left behind", path.display());
}
