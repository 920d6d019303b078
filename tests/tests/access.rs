//! Access control and TLS, end to end: a coordinator started with `--auth` (and
//! `--tls-cert/--tls-key`), real agents and client verbs with their tokens.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use ladder_e2e::{
    as_str, describe, ladder_command, ladder_with_timeout, parse_json_output, wait_until,
    write_file, write_script, Agent, Cluster, ClusterBuilder, Coordinator, TestDir, Value,
    CLIENT_TIMEOUT, WATCH_TIMEOUT,
};

/// The tokens of one auth file.
struct Tokens {
    admin: String,
    alice: String,
    bob: String,
    victor: String,
    agent: String,
    file: PathBuf,
}

/// `ladder auth token --name NAME --role ROLE --json`: the token and its hash.
fn new_token(name: &str, role: &str) -> (String, String) {
    let args = ["auth", "token", "--name", name, "--role", role, "--json"];
    let output = ladder_with_timeout(&args, CLIENT_TIMEOUT);
    let value = parse_json_output(&args, &output);
    let token = as_str(&value["token"], "token").to_string();
    let hash = as_str(&value["token_sha256"], "token_sha256").to_string();
    assert_eq!(token.len(), 64, "{value}");
    assert_eq!(value["role"], role, "{value}");
    (token, hash)
}

/// Makes tokens for admin `root`, members alice and bob, viewer victor and agent `fleet`,
/// and writes the auth file that lists them.
fn write_auth_file(dir: &Path) -> Tokens {
    let (admin, admin_hash) = new_token("root", "admin");
    let (alice, alice_hash) = new_token("alice", "member");
    let (bob, bob_hash) = new_token("bob", "member");
    let (victor, victor_hash) = new_token("victor", "viewer");
    let (agent, agent_hash) = new_token("fleet", "agent");
    let file = write_file(
        dir,
        "auth.yaml",
        &format!(
            "# who may use this coordinator\n\
             users:\n\
             \x20 - {{name: root, role: admin, token_sha256: {admin_hash}}}\n\
             \x20 - name: alice\n\
             \x20   role: member\n\
             \x20   token_sha256: {alice_hash}\n\
             \x20 - {{name: bob, role: member, token_sha256: {bob_hash}}}\n\
             \x20 - {{name: victor, role: viewer, token_sha256: {victor_hash}}}\n\
             agents:\n\
             \x20 - {{name: fleet, token_sha256: {agent_hash}}}\n"
        ),
    );
    Tokens {
        admin,
        alice,
        bob,
        victor,
        agent,
        file,
    }
}

/// A coordinator started with `--auth` and the tokens' file, to which a test adds its
/// agents (with `--token` and the agent token); the builder lists them as the admin.
fn with_auth(dir: &Path, tokens: &Tokens) -> ClusterBuilder {
    let auth = tokens.file.to_str().expect("utf-8 path");
    Cluster::builder(dir)
        .coordinator_args(&["--auth", auth, "--heartbeat-interval", "0.5"])
        .admin_token(&tokens.admin)
}

/// `ladder ARGS --coordinator URL --token TOKEN` (any exit code).
fn as_user(coordinator: &Coordinator, token: &str, args: &[&str]) -> Output {
    let mut args = args.to_vec();
    args.extend(["--token", token]);
    coordinator.ladder(&args)
}

/// As [`as_user`] with `--json`, parsed; panics unless it succeeds.
fn json_as(coordinator: &Coordinator, token: &str, args: &[&str]) -> Value {
    let url = coordinator.url();
    let mut args = args.to_vec();
    args.extend(["--json", "--token", token, "--coordinator", &url]);
    let output = ladder_with_timeout(&args, CLIENT_TIMEOUT);
    parse_json_output(&args, &output)
}

/// Asserts that a verb failed and that its stderr contains `needle`.
fn assert_refused(args: &[&str], output: &Output, needle: &str) {
    assert!(!output.status.success(), "{}", describe(args, output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(needle),
        "stderr lacks {needle:?}: {}",
        describe(args, output)
    );
}

fn submit_as(coordinator: &Coordinator, token: &str, file: &Path) -> Value {
    json_as(
        coordinator,
        token,
        &["sweep", "submit", file.to_str().expect("utf-8")],
    )
}

/// A sweep whose runs sleep for a minute: it stays running until cancelled.
fn slow_sweep(dir: &Path, name: &str) -> PathBuf {
    write_file(
        dir,
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\nmethod: grid\nparameters:\n  a: {{values: [1, 2]}}\ncommand: [sleep, \"6{{{{a}}}}\"]\n"
        ),
    )
}

#[test]
fn a_member_sweep_runs_on_an_agent_with_an_agent_token_and_viewers_only_read() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    // The agent connects with the agent token.
    let cluster = with_auth(dir, &tokens)
        .agent_with("gpu-01", 2, &["--token", &tokens.agent])
        .start();
    let coordinator = &cluster.coordinator;

    write_script(
        dir,
        "objective.sh",
        "#!/bin/sh\necho \"@ladder {\\\"score\\\": $1}\"\n",
    );
    let sweep_file = write_file(
        dir,
        "grid.yaml",
        "name: owned\nmethod: grid\nmetric: {name: score}\nparallel: 2\nparameters:\n  a: {values: [1, 2, 3]}\ncommand: [sh, \"{{ladder.code_dir}}/objective.sh\", \"{{a}}\"]\n",
    );
    let sweep = submit_as(coordinator, &tokens.alice, &sweep_file);
    assert_eq!(
        sweep["owner"], "alice",
        "the token's user owns the sweep: {sweep}"
    );
    let sweep_id = as_str(&sweep["id"], "sweep id").to_string();

    // The token can also come from the environment.
    let url = coordinator.url();
    let watch_args = [
        "sweep",
        "watch",
        sweep_id.as_str(),
        "--json",
        "--coordinator",
        &url,
    ];
    let mut watch = ladder_command();
    watch
        .args(watch_args)
        .env("LADDER_TOKEN", &tokens.alice)
        .stdin(Stdio::null());
    let output = wait_with_timeout(watch, WATCH_TIMEOUT);
    let finished = parse_json_output(&watch_args, &output);
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_eq!(finished["counts"]["completed"], 3, "{finished}");
    assert_eq!(finished["owner"], "alice", "{finished}");

    // Victor (viewer) reads everything but may not submit.
    let listed = json_as(coordinator, &tokens.victor, &["sweep", "ls"]);
    assert_eq!(listed["sweeps"][0]["id"], sweep_id.as_str(), "{listed}");
    assert_eq!(listed["sweeps"][0]["owner"], "alice", "{listed}");
    let runs = json_as(
        coordinator,
        &tokens.victor,
        &["runs", "ls", "--sweep", &sweep_id],
    );
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(3), "{runs}");
    json_as(coordinator, &tokens.victor, &["agents", "ls"]);
    let args = ["sweep", "submit", sweep_file.to_str().expect("utf-8")];
    let output = as_user(coordinator, &tokens.victor, &args);
    assert_refused(&args, &output, "user victor (viewer) may not submit sweeps");
    // Only admins lift quarantines.
    let args = ["agents", "enable", "gpu-01"];
    let output = as_user(coordinator, &tokens.alice, &args);
    assert_refused(&args, &output, "user alice (member) may not enable agents");
    json_as(coordinator, &tokens.admin, &["agents", "enable", "gpu-01"]);
}

/// Runs `command` to completion, killing it and panicking after `timeout`.
fn wait_with_timeout(mut command: std::process::Command, timeout: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ladder");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(timeout) {
        Ok(output) => output.expect("wait for ladder"),
        Err(_) => {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("ladder did not finish within {timeout:?}");
        }
    }
}

#[test]
fn members_control_only_their_own_sweeps_and_admins_any() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    let coordinator = with_auth(dir, &tokens).start().coordinator;
    // No agent: the runs stay queued, and the sweeps running, until cancelled.
    let alices = submit_as(&coordinator, &tokens.alice, &slow_sweep(dir, "alices"));
    let alices = as_str(&alices["id"], "id").to_string();
    let bobs = submit_as(&coordinator, &tokens.bob, &slow_sweep(dir, "bobs"));
    let bobs = as_str(&bobs["id"], "id").to_string();

    for verb in ["pause", "cancel"] {
        let args = ["sweep", verb, alices.as_str()];
        let output = as_user(&coordinator, &tokens.bob, &args);
        assert_refused(
            &args,
            &output,
            "user bob (member) may not pause, resume or cancel sweeps owned by alice",
        );
        let args = ["sweep", verb, alices.as_str()];
        let output = as_user(&coordinator, &tokens.victor, &args);
        assert_refused(&args, &output, "user victor (viewer) may not");
    }
    let sweep = json_as(&coordinator, &tokens.admin, &["sweep", "show", &alices]);
    assert_eq!(
        sweep["status"], "running",
        "refused actions changed nothing: {sweep}"
    );

    let paused = json_as(&coordinator, &tokens.alice, &["sweep", "pause", &alices]);
    assert_eq!(paused["status"], "paused", "{paused}");
    let resumed = json_as(&coordinator, &tokens.alice, &["sweep", "resume", &alices]);
    assert_eq!(resumed["status"], "running", "{resumed}");
    let cancelled = json_as(&coordinator, &tokens.alice, &["sweep", "cancel", &alices]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    let cancelled = json_as(&coordinator, &tokens.admin, &["sweep", "cancel", &bobs]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["owner"], "bob", "{cancelled}");
}

#[test]
fn requests_without_a_valid_user_token_are_refused() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    let coordinator = with_auth(dir, &tokens).start().coordinator;

    let args = ["sweep", "ls"];
    let output = coordinator.ladder(&args);
    assert_refused(&args, &output, "missing bearer token");
    let output = as_user(&coordinator, "not-a-token", &args);
    assert_refused(&args, &output, "unknown token");
    let output = as_user(&coordinator, &tokens.agent, &args);
    assert_refused(&args, &output, "agent fleet may not read");

    // A user token cannot open an agent session: the agent never registers, and says why.
    let agent = Agent::start_with(
        &coordinator.url(),
        "impostor",
        1,
        &dir.join("impostor"),
        dir,
        &["--token", &tokens.admin],
    );
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the agent to log that its token was refused",
        || {
            let log = std::fs::read_to_string(agent.log()).unwrap_or_default();
            log.contains("refused this agent's token").then_some(log)
        },
    );
    let log = std::fs::read_to_string(agent.log()).unwrap_or_default();
    assert!(
        log.contains("user root (admin) may not open an agent session"),
        "{log}"
    );
    let agents = json_as(&coordinator, &tokens.admin, &["agents", "ls"]);
    assert_eq!(agents["agents"], Value::Array(vec![]), "{agents}");
}

/// A CA, and a certificate it signed for `localhost` and `127.0.0.1`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("ladder test CA {name}"));
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    Pki {
        ca: write_file(dir, &format!("{name}-ca.pem"), &ca_cert.pem()),
        cert: write_file(dir, &format!("{name}-server.pem"), &server_cert.pem()),
        key: write_file(
            dir,
            &format!("{name}-server.key"),
            &server_key.serialize_pem(),
        ),
    }
}

#[test]
fn tls_clients_and_agents_trust_the_right_ca_only() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    let pki = make_pki(dir, "good");
    let other = make_pki(dir, "other");
    // Started by hand: the coordinator serves TLS, so only a client given its CA can
    // list its agents, and the agent joins after the clients' checks.
    let coordinator = Coordinator::start(
        &dir.join("data"),
        &[
            "--auth",
            tokens.file.to_str().expect("utf-8"),
            "--tls-cert",
            pki.cert.to_str().expect("utf-8"),
            "--tls-key",
            pki.key.to_str().expect("utf-8"),
        ],
    );
    let url = format!("https://{}", coordinator.addr());
    let ca = pki.ca.to_str().expect("utf-8");
    let args = [
        "sweep",
        "ls",
        "--json",
        "--coordinator",
        &url,
        "--ca",
        ca,
        "--token",
        &tokens.victor,
    ];
    let output = ladder_with_timeout(&args, CLIENT_TIMEOUT);
    let listed = parse_json_output(&args, &output);
    assert_eq!(listed["sweeps"], Value::Array(vec![]), "{listed}");

    let wrong_ca = other.ca.to_str().expect("utf-8");
    let args = [
        "sweep",
        "ls",
        "--coordinator",
        &url,
        "--ca",
        wrong_ca,
        "--token",
        &tokens.victor,
    ];
    let output = ladder_with_timeout(&args, CLIENT_TIMEOUT);
    assert_refused(&args, &output, "TLS with the coordinator");
    assert_refused(&args, &output, "certificate");

    // An agent over TLS with its token registers.
    let _agent = Agent::start_with(
        &url,
        "tls-agent",
        1,
        &dir.join("tls-agent"),
        dir,
        &["--ca", ca, "--token", &tokens.agent],
    );
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the agent to connect over TLS",
        || {
            let args = [
                "agents",
                "ls",
                "--json",
                "--coordinator",
                &url,
                "--ca",
                ca,
                "--token",
                &tokens.admin,
            ];
            let output = ladder_with_timeout(&args, CLIENT_TIMEOUT);
            let agents = parse_json_output(&args, &output);
            agents["agents"]
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .any(|a| a["name"] == "tls-agent" && a["connected"] == true)
                })
                .then_some(())
        },
    );
}

/// Starts `ladder coordinator ARGS` expecting it to exit by itself; returns its output.
fn coordinator_exits(args: &[&str]) -> Output {
    let mut command = ladder_command();
    command.arg("coordinator").args(args).stdin(Stdio::null());
    wait_with_timeout(command, CLIENT_TIMEOUT)
}

#[test]
fn an_open_coordinator_listens_only_on_loopback_unless_told_otherwise() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let data = dir.join("data");
    let data = data.to_str().expect("utf-8");
    let args = ["coordinator", "--listen", "0.0.0.0:0", "--data", data];
    let output = coordinator_exits(&args[1..]);
    assert_refused(
        &args,
        &output,
        "refusing to listen on 0.0.0.0:0 without --auth",
    );
    assert_refused(&args, &output, "loopback");

    // With --insecure-listen-anywhere it serves on every address, loopback included.
    let mut child = ladder_command()
        .args(["coordinator", "--listen", "0.0.0.0:0", "--data", data])
        .arg("--insecure-listen-anywhere")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the coordinator");
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = line_tx.send(line);
        }
    });
    let line = line_rx.recv_timeout(Duration::from_secs(60));
    let port = line
        .as_deref()
        .ok()
        .and_then(|l| l.strip_prefix("ladder coordinator listening on 0.0.0.0:"))
        .map(|p| p.trim().to_string());
    let listed = port.as_ref().map(|port| {
        let url = format!("http://127.0.0.1:{port}");
        let args = ["sweep", "ls", "--json", "--coordinator", &url];
        let output = ladder_with_timeout(&args, CLIENT_TIMEOUT);
        (describe(&args, &output), output.status.success())
    });
    let _ = child.kill();
    let _ = child.wait();
    let port = port.unwrap_or_else(|| panic!("no listening line on 0.0.0.0: {line:?}"));
    let (described, ok) = listed.expect("listed");
    assert!(ok, "port {port}: {described}");
}

#[test]
fn a_bad_auth_file_is_a_startup_error_naming_file_line_entry_and_field() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let file = write_file(
        dir,
        "auth.yaml",
        "users:\n  - {name: alice, role: owner, token_sha256: 0123}\n",
    );
    let data = dir.join("data");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().expect("utf-8"),
        "--auth",
        file.to_str().expect("utf-8"),
    ];
    let output = coordinator_exits(&args);
    let expected = format!(
        "{}:2:25: users[0] (alice): field `role` must be one of viewer, member, admin",
        file.display()
    );
    assert_refused(&args, &output, &expected);
    assert_refused(&args, &output, "users[0] (alice): field `token_sha256`");
}

#[test]
fn without_auth_the_client_declares_the_owner() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let coordinator = Coordinator::start(&dir.join("data"), &[]);
    let file = slow_sweep(dir, "declared");
    let url = coordinator.url();
    let args = [
        "sweep",
        "submit",
        file.to_str().expect("utf-8"),
        "--json",
        "--coordinator",
        &url,
    ];
    let mut command = ladder_command();
    command
        .args(args)
        .env("LADDER_USER", "carol")
        .stdin(Stdio::null());
    let output = wait_with_timeout(command, CLIENT_TIMEOUT);
    let sweep = parse_json_output(&args, &output);
    assert_eq!(sweep["owner"], "carol", "{sweep}");
    // Without --auth the one local admin token (found by the CLI) controls every sweep.
    let id = as_str(&sweep["id"], "id");
    let cancelled = coordinator.json(&["sweep", "cancel", id]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
}

/// The agent `name` as `agents ls --json` shows it to `token`'s user.
fn agent_entry(coordinator: &Coordinator, token: &str, name: &str) -> Option<Value> {
    let agents = json_as(coordinator, token, &["agents", "ls"]);
    agents["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == name).cloned())
}

/// The mode bits of the secret file that keeps agent `name`'s secret in `work_dir`.
fn secret_file_mode(work_dir: &Path, name: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let path = work_dir.join("secrets").join(name);
    let metadata = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("no secret file {}: {e}", path.display()));
    metadata.permissions().mode() & 0o777
}

/// The fleet's agent token only enrolls a name: a second agent process holding it and
/// registering as a live agent's name is refused and stops, while the live agent's run
/// completes credited to it; a restarted agent with its work directory keeps its name;
/// after an admin's `agents forget`, a new agent enrolls the name.
#[test]
fn an_agent_token_cannot_take_a_live_agent_s_name_until_an_admin_forgets_it() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    let fleet = ["--token", tokens.agent.as_str()];
    let mut cluster = with_auth(dir, &tokens)
        .agent_with("gpu-01", 1, &fleet)
        .start();
    let mut real = cluster.take_agent("gpu-01");
    let coordinator = &cluster.coordinator;
    let url = coordinator.url();
    let real_dir = dir.join("gpu-01");
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "agent gpu-01 to connect and keep its secret",
        || {
            // The coordinator lists the agent once the registration is durable; the agent
            // writes the secret when the answer reaches it, a moment later.
            agent_entry(coordinator, &tokens.admin, "gpu-01")
                .filter(|a| a["connected"] == true)
                .filter(|_| real_dir.join("secrets").join("gpu-01").exists())
                .map(|_| ())
        },
    );
    assert_eq!(secret_file_mode(&real_dir, "gpu-01"), 0o600);
    let enrolled = std::fs::read_to_string(real_dir.join("secrets").join("gpu-01")).unwrap();

    // A run that holds until released, so that it is running while its agent's name is
    // claimed.
    let release = dir.join("release");
    write_script(
        dir,
        "held.sh",
        "#!/bin/sh\nwhile [ ! -f \"$1\" ]; do sleep 0.1; done\necho '@ladder {\"loss\": 0.5}'\n",
    );
    let sweep_file = write_file(
        dir,
        "held.yaml",
        &format!(
            "name: held\nmethod: grid\nmetric: {{name: loss, goal: minimize}}\nparameters:\n  x: {{value: 1}}\ncommand: [sh, \"{{{{ladder.code_dir}}}}/held.sh\", \"{}\"]\n",
            release.display()
        ),
    );
    let sweep = submit_as(coordinator, &tokens.alice, &sweep_file);
    let sweep_id = as_str(&sweep["id"], "sweep id").to_string();
    let run_id = format!("{sweep_id}-000000");
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the run to start on gpu-01",
        || {
            agent_entry(coordinator, &tokens.admin, "gpu-01")
                .filter(|a| a["runs"].as_array().is_some_and(|r| r.len() == 1))
                .map(|_| ())
        },
    );

    // The impostor: the fleet token, the same name, its own work directory.
    let mut impostor = Agent::start_with(&url, "gpu-01", 4, &dir.join("impostor"), dir, &fleet);
    let status = impostor
        .wait_exit(Duration::from_secs(60))
        .expect("the refused impostor stops");
    let log = std::fs::read_to_string(impostor.log()).unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("refused the agent name \"gpu-01\"")
            && log.contains("ladder agents forget gpu-01"),
        "{log}"
    );
    let live = agent_entry(coordinator, &tokens.admin, "gpu-01").expect("gpu-01 listed");
    assert_eq!(live["connected"], true, "{live}");
    assert_eq!(
        live["slots"], 1,
        "the impostor's registration was not applied: {live}"
    );
    assert_eq!(live["runs"][0], run_id.as_str(), "{live}");
    assert!(
        !live.to_string().contains(enrolled.trim()),
        "secrets are never listed: {live}"
    );

    // The real run goes on and completes on gpu-01, in its first attempt.
    std::fs::write(&release, "go").unwrap();
    let watch_args = ["sweep", "watch", sweep_id.as_str()];
    let finished = json_as(coordinator, &tokens.alice, &watch_args);
    assert_eq!(finished["counts"]["completed"], 1, "{finished}");
    let detail = json_as(coordinator, &tokens.alice, &["runs", "show", &run_id]);
    let attempts = detail["attempt_history"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "never lost nor restarted: {detail}");
    assert_eq!(attempts[0]["agent"], "gpu-01", "{detail}");
    assert_eq!(detail["metrics"]["loss"], 0.5, "{detail}");

    // Restarted with the same work directory, the real agent keeps its name.
    real.kill9();
    let mut real = Agent::start_with(&url, "gpu-01", 1, &real_dir, dir, &fleet);
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the restarted gpu-01 to reconnect",
        || {
            let log = std::fs::read_to_string(real.log()).unwrap_or_default();
            log.contains("connected").then_some(())
        },
    );
    assert!(
        real.wait_exit(Duration::ZERO).is_none(),
        "the restarted agent runs on"
    );
    assert_eq!(
        std::fs::read_to_string(real_dir.join("secrets").join("gpu-01")).unwrap(),
        enrolled,
        "proven with its secret, not enrolled again"
    );

    // Only admins forget agents, and a connected one only with --force.
    let args = ["agents", "forget", "gpu-01"];
    let output = as_user(coordinator, &tokens.alice, &args);
    assert_refused(&args, &output, "user alice (member) may not forget agents");
    let output = as_user(coordinator, &tokens.admin, &args);
    assert_refused(&args, &output, "--force");
    real.kill9();
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "gpu-01 to disconnect",
        || {
            agent_entry(coordinator, &tokens.admin, "gpu-01")
                .filter(|a| a["connected"] == false)
                .map(|_| ())
        },
    );
    json_as(coordinator, &tokens.admin, &args);

    // Now a new agent (a new work directory) enrolls the name, with a new secret.
    let new_dir = dir.join("replacement");
    let _replacement = Agent::start_with(&url, "gpu-01", 1, &new_dir, dir, &fleet);
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the replacement to enroll gpu-01 and keep its secret",
        || {
            agent_entry(coordinator, &tokens.admin, "gpu-01")
                .filter(|a| a["connected"] == true)
                .filter(|_| new_dir.join("secrets").join("gpu-01").exists())
                .map(|_| ())
        },
    );
    assert_eq!(secret_file_mode(&new_dir, "gpu-01"), 0o600);
    let replaced = std::fs::read_to_string(new_dir.join("secrets").join("gpu-01")).unwrap();
    assert_ne!(replaced, enrolled);
}
