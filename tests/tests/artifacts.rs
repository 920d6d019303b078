//! Artifacts, end to end: a coordinator with `--auth` and its artifact store in the data
//! directory, a real agent that uploads what a run declares (`artifacts:`) and reports
//! (`@ladder.artifact`), and the client verbs that list and download them; uploads that
//! break off mid-file leave nothing recorded.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ladder_e2e::{
    as_str, describe, ladder_with_timeout, parse_json_output, wait_until, write_file, write_script,
    Cluster, Coordinator, TestDir, Value, CLIENT_TIMEOUT, WATCH_TIMEOUT,
};
use ladder_proto::v1 as pb;
use ladder_proto::v1::artifact_service_client::ArtifactServiceClient;
use ladder_proto::v1::run_service_client::RunServiceClient;

struct Tokens {
    admin: String,
    alice: String,
    victor: String,
    agent: String,
    file: PathBuf,
}

/// `ladder auth token --name NAME --role ROLE --json`: the token and its hash.
fn new_token(name: &str, role: &str) -> (String, String) {
    let args = ["auth", "token", "--name", name, "--role", role, "--json"];
    let output = ladder_with_timeout(&args, CLIENT_TIMEOUT);
    let value = parse_json_output(&args, &output);
    (
        as_str(&value["token"], "token").to_string(),
        as_str(&value["token_sha256"], "token_sha256").to_string(),
    )
}

/// Admin `root`, member alice, viewer victor and agent `fleet`, in `DIR/auth.yaml`.
fn write_auth_file(dir: &Path) -> Tokens {
    let (admin, admin_hash) = new_token("root", "admin");
    let (alice, alice_hash) = new_token("alice", "member");
    let (victor, victor_hash) = new_token("victor", "viewer");
    let (agent, agent_hash) = new_token("fleet", "agent");
    let file = write_file(
        dir,
        "auth.yaml",
        &format!(
            "users:\n\
             \x20 - {{name: root, role: admin, token_sha256: {admin_hash}}}\n\
             \x20 - {{name: alice, role: member, token_sha256: {alice_hash}}}\n\
             \x20 - {{name: victor, role: viewer, token_sha256: {victor_hash}}}\n\
             agents:\n\
             \x20 - {{name: fleet, token_sha256: {agent_hash}}}\n"
        ),
    );
    Tokens {
        admin,
        alice,
        victor,
        agent,
        file,
    }
}

/// A coordinator with `--auth` and one agent `gpu-01` holding the agent token.
fn cluster(dir: &Path, tokens: &Tokens) -> Cluster {
    let auth = tokens.file.to_str().expect("utf-8 path");
    Cluster::builder(dir)
        .coordinator_args(&["--auth", auth, "--heartbeat-interval", "0.5"])
        .admin_token(&tokens.admin)
        .agent_with("gpu-01", 2, &["--token", &tokens.agent])
        .start()
}

/// `ladder ARGS --coordinator URL --token TOKEN` (any exit code).
fn as_user(coordinator: &Coordinator, token: &str, args: &[&str]) -> Output {
    let url = coordinator.url();
    let mut args = args.to_vec();
    args.extend(["--coordinator", &url, "--token", token]);
    ladder_with_timeout(&args, WATCH_TIMEOUT)
}

/// Like [`as_user`] with `--json`, parsed; panics when the verb fails.
fn json_as(coordinator: &Coordinator, token: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = as_user(coordinator, token, &args);
    parse_json_output(&args, &output)
}

/// Submits `file` as alice and watches the sweep to its end; its only run's id.
fn run_one(coordinator: &Coordinator, tokens: &Tokens, file: &Path) -> String {
    let sweep = json_as(
        coordinator,
        &tokens.alice,
        &["sweep", "submit", file.to_str().expect("utf-8")],
    );
    let sweep_id = as_str(&sweep["id"], "sweep id").to_string();
    let done = json_as(coordinator, &tokens.alice, &["sweep", "watch", &sweep_id]);
    assert_eq!(done["status"], "completed", "{done}");
    let runs = json_as(
        coordinator,
        &tokens.victor,
        &["runs", "ls", "--sweep", &sweep_id],
    );
    as_str(&runs["runs"][0]["id"], "run id").to_string()
}

/// The run directory of `run_id` on the agent working in `DIR/gpu-01`.
fn run_dir(dir: &Path, run_id: &str) -> PathBuf {
    let name: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join("gpu-01").join("runs").join(name)
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("under dir");
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

fn sha256_of(path: &Path) -> String {
    let output = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(output.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string()
}

const MAKE_FILES: &str = r#"#!/bin/sh
set -e
mkdir -p model/tokenizer extra
head -c 2500000 /dev/urandom > model/weights.bin
printf '{"layers": 2}' > model/config.json
printf 'vocab' > model/tokenizer/vocab.txt
printf '{"acc": 0.5}' > results.json
printf 'reported by the run' > extra/notes.txt
printf 'neither declared nor reported' > other.txt
echo '@ladder.artifact {"path": "extra/notes.txt"}'
echo '@ladder {"step": 1, "acc": 0.5}'
"#;

#[test]
fn declared_and_reported_files_are_uploaded_and_a_viewer_downloads_them_verified() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    let cluster = cluster(dir, &tokens);
    let coordinator = &cluster.coordinator;
    write_script(dir, "make_files.sh", MAKE_FILES);
    let sweep_file = write_file(
        dir,
        "artifacts.yaml",
        "name: artifacts\nmethod: grid\nmetric: {name: acc}\nartifacts: [model/, results.json]\ncommand: [sh, \"{{ladder.code_dir}}/make_files.sh\"]\n",
    );
    let run_id = run_one(coordinator, &tokens, &sweep_file);
    let produced = run_dir(dir, &run_id);
    let expected_names = [
        "extra/notes.txt",
        "model/config.json",
        "model/tokenizer/vocab.txt",
        "model/weights.bin",
        "results.json",
    ];

    // The completed run lists both the declared and the reported files, with sizes and
    // hashes of what the run wrote.
    let detail = json_as(coordinator, &tokens.victor, &["runs", "show", &run_id]);
    assert_eq!(detail["status"], "completed", "{detail}");
    let artifacts = detail["artifacts"].as_array().expect("artifacts array");
    let names: Vec<&str> = artifacts
        .iter()
        .map(|a| as_str(&a["name"], "name"))
        .collect();
    assert_eq!(names, expected_names, "{detail}");
    for artifact in artifacts {
        let name = as_str(&artifact["name"], "name");
        let path = produced.join(name);
        assert_eq!(
            artifact["size"].as_u64(),
            Some(std::fs::metadata(&path).expect("produced file").len()),
            "{artifact}"
        );
        assert_eq!(artifact["sha256"], sha256_of(&path).as_str(), "{artifact}");
        assert_eq!(artifact["attempt"], 1, "{artifact}");
    }
    let listed = json_as(coordinator, &tokens.victor, &["artifacts", "ls", &run_id]);
    assert_eq!(listed.as_array().map(Vec::len), Some(5), "{listed}");
    let text = as_user(coordinator, &tokens.victor, &["runs", "show", &run_id]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("model/weights.bin"),
        "{}",
        describe(&["runs", "show"], &text)
    );

    // A viewer downloads every file, byte for byte what the run wrote.
    let out = dir.join("download");
    let out_arg = out.to_str().expect("utf-8");
    let written = json_as(
        coordinator,
        &tokens.victor,
        &["artifacts", "get", &run_id, "--out", out_arg],
    );
    assert_eq!(written.as_array().map(Vec::len), Some(5), "{written}");
    assert_eq!(files_under(&out), expected_names);
    for name in expected_names {
        assert!(
            std::fs::read(out.join(name)).unwrap() == std::fs::read(produced.join(name)).unwrap(),
            "{name} differs from what the run wrote"
        );
    }
    // One directory of them.
    let only_model = dir.join("model-only");
    json_as(
        coordinator,
        &tokens.victor,
        &[
            "artifacts",
            "get",
            &run_id,
            "model/",
            "--out",
            only_model.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(
        files_under(&only_model),
        [
            "model/config.json",
            "model/tokenizer/vocab.txt",
            "model/weights.bin"
        ]
    );
    let missing = as_user(
        coordinator,
        &tokens.victor,
        &["artifacts", "get", &run_id, "nope.bin", "--out", out_arg],
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("has no artifact \"nope.bin\""),
        "{}",
        describe(&["artifacts", "get"], &missing)
    );

    // The store holds each content once, named by its hash, and nothing half-written.
    let store = dir.join("data").join("artifacts");
    assert!(files_under(&store.join("tmp")).is_empty());
    let objects = files_under(&store.join("objects"));
    assert_eq!(objects.len(), 5, "{objects:?}");
    let weights = sha256_of(&produced.join("model/weights.bin"));
    assert!(
        objects.contains(&format!("{}/{weights}", &weights[..2])),
        "{objects:?}"
    );
}

/// moto's S3 server (`tests/s3_server.py`, installed by `tests/setup.sh`) with one
/// bucket, stopped when dropped.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> S3Server {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/s3_server.py"))
            .arg(bucket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs tests/s3_server.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reads the endpoint");
        let endpoint = line.trim().to_string();
        assert!(
            endpoint.starts_with("http://127.0.0.1:"),
            "tests/s3_server.py did not start (moto is installed by tests/setup.sh): {line:?}"
        );
        S3Server { child, endpoint }
    }

    /// The keys under `prefix`, listed by boto3: a client other than ladder's.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let script = "import sys, boto3\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
            pages = s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2], Prefix=sys.argv[3])\n\
            print('\\n'.join(o['Key'] for p in pages for o in p.get('Contents', [])))\n";
        let output = std::process::Command::new("python3")
            .args(["-c", script, &self.endpoint, bucket, prefix])
            .output()
            .expect("python3 runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut keys: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn artifacts_kept_in_an_s3_bucket_are_uploaded_and_downloaded_verified() {
    let s3 = S3Server::start("team-models");
    // The coordinator reads its S3 settings from the environment, as AWS tools do; the
    // agents and clients started here inherit them but never use them.
    for (name, value) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", s3.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ] {
        std::env::set_var(name, value);
    }
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    let auth = tokens.file.to_str().expect("utf-8 path");
    let cluster = Cluster::builder(dir)
        .coordinator_args(&[
            "--auth",
            auth,
            "--heartbeat-interval",
            "0.5",
            "--artifacts",
            "s3://team-models/ladder/prod",
        ])
        .admin_token(&tokens.admin)
        .agent_with("gpu-01", 2, &["--token", &tokens.agent])
        .start();
    let coordinator = &cluster.coordinator;
    write_script(dir, "make_files.sh", MAKE_FILES);
    let sweep_file = write_file(
        dir,
        "artifacts.yaml",
        "name: artifacts\nmethod: grid\nmetric: {name: acc}\nartifacts: [model/, results.json]\ncommand: [sh, \"{{ladder.code_dir}}/make_files.sh\"]\n",
    );
    let run_id = run_one(coordinator, &tokens, &sweep_file);
    let produced = run_dir(dir, &run_id);

    // Each content is one object in the bucket, under the prefix, named by its hash.
    let keys = s3.keys("team-models", "ladder/prod/");
    assert_eq!(keys.len(), 5, "{keys:?}");
    let weights = sha256_of(&produced.join("model/weights.bin"));
    assert!(
        keys.contains(&format!("ladder/prod/objects/{}/{weights}", &weights[..2])),
        "{keys:?}"
    );
    assert!(
        !dir.join("data").join("artifacts").join("objects").exists(),
        "objects written to the data directory too"
    );

    // A viewer downloads them through the coordinator, verified, byte for byte.
    let out = dir.join("download");
    let written = json_as(
        coordinator,
        &tokens.victor,
        &[
            "artifacts",
            "get",
            &run_id,
            "--out",
            out.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(written.as_array().map(Vec::len), Some(5), "{written}");
    for name in ["model/weights.bin", "model/config.json", "results.json"] {
        assert!(
            std::fs::read(out.join(name)).unwrap() == std::fs::read(produced.join(name)).unwrap(),
            "{name} differs from what the run wrote"
        );
    }
}

/// A gRPC client of the test's own, to upload as the agent would, with its lease and
/// secret, and break off mid-file.
struct RawAgent {
    runtime: tokio::runtime::Runtime,
    url: String,
    agent_token: String,
    admin_token: String,
    /// The coordinator's artifact directory.
    store: PathBuf,
}

impl RawAgent {
    fn request<T>(&self, message: T, token: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii token"),
        );
        request
    }

    /// The lease of the current attempt of `run_id` (its epoch is only in the gRPC answer).
    fn lease(&self, run_id: &str) -> pb::Lease {
        self.runtime.block_on(async {
            let mut client = RunServiceClient::connect(self.url.clone()).await.unwrap();
            let detail = client
                .get_run(self.request(
                    pb::GetRunRequest {
                        run_id: run_id.to_string(),
                        log_tail: 1,
                    },
                    &self.admin_token,
                ))
                .await
                .unwrap()
                .into_inner();
            let attempt = detail.run.unwrap().attempts.pop().expect("an attempt");
            pb::Lease {
                run_id: run_id.to_string(),
                attempt: attempt.number,
                epoch: attempt.epoch,
            }
        })
    }

    /// Uploads `start`, then `chunks`; then either ends the stream (`finish`) or drops
    /// the whole call mid-stream, as a killed agent would.
    fn upload(
        &self,
        start: pb::UploadArtifactStart,
        chunks: Vec<Vec<u8>>,
        finish: bool,
    ) -> Option<Result<pb::UploadArtifactResponse, tonic::Status>> {
        self.runtime.block_on(async {
            let mut client = ArtifactServiceClient::connect(self.url.clone())
                .await
                .unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            tx.send(pb::UploadArtifactRequest {
                kind: Some(pb::upload_artifact_request::Kind::Start(start)),
            })
            .await
            .unwrap();
            for chunk in chunks {
                tx.send(pb::UploadArtifactRequest {
                    kind: Some(pb::upload_artifact_request::Kind::Chunk(chunk)),
                })
                .await
                .unwrap();
            }
            let request = self.request(tokio_stream_of(rx), &self.agent_token);
            if finish {
                drop(tx);
                return Some(
                    client
                        .upload_artifact(request)
                        .await
                        .map(|r| r.into_inner()),
                );
            }
            // The call is dropped with its stream still open once the coordinator has
            // written part of the file: the connection's stream is reset, as when the
            // agent dies mid-file. The sender is kept until then, so the stream never
            // ends cleanly.
            let call = tokio::spawn(async move { client.upload_artifact(request).await });
            let temp = self.store.join("tmp");
            wait_until(
                WATCH_TIMEOUT,
                Duration::from_millis(20),
                "part of the upload to be written",
                || {
                    std::fs::read_dir(&temp)
                        .ok()?
                        .flatten()
                        .any(|entry| entry.metadata().is_ok_and(|m| m.len() >= 1_000_000))
                        .then_some(())
                },
            );
            call.abort();
            let _ = call.await;
            drop(tx);
            None
        })
    }
}

/// A request stream of the messages `rx` receives.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<pb::UploadArtifactRequest>,
) -> tonic::codegen::tokio_stream::wrappers::ReceiverStream<pb::UploadArtifactRequest> {
    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[test]
fn uploads_that_break_off_mid_file_or_lack_the_lease_record_nothing() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    let cluster = cluster(dir, &tokens);
    let coordinator = &cluster.coordinator;
    // The run waits for the test to let it end, so its attempt holds a live lease.
    let release = dir.join("release");
    write_script(
        dir,
        "wait.sh",
        "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.1; done\necho '@ladder {\"acc\": 1}'\n",
    );
    let sweep_file = write_file(
        dir,
        "waits.yaml",
        &format!(
            "name: waits\nmethod: grid\ncommand: [sh, \"{{{{ladder.code_dir}}}}/wait.sh\", \"{}\"]\n",
            release.display()
        ),
    );
    let sweep = json_as(
        coordinator,
        &tokens.alice,
        &["sweep", "submit", sweep_file.to_str().expect("utf-8")],
    );
    let sweep_id = as_str(&sweep["id"], "sweep id").to_string();
    let run_id = wait_until(
        WATCH_TIMEOUT,
        Duration::from_millis(100),
        "the run to start",
        || {
            let runs = json_as(
                coordinator,
                &tokens.victor,
                &["runs", "ls", "--sweep", &sweep_id],
            );
            (runs["runs"][0]["status"] == "running")
                .then(|| as_str(&runs["runs"][0]["id"], "run id").to_string())
        },
    );
    let raw = RawAgent {
        runtime: tokio::runtime::Runtime::new().unwrap(),
        url: coordinator.url(),
        agent_token: tokens.agent.clone(),
        admin_token: tokens.admin.clone(),
        store: dir.join("data").join("artifacts"),
    };
    let lease = raw.lease(&run_id);
    let secret = std::fs::read_to_string(dir.join("gpu-01").join("secrets").join("gpu-01"))
        .expect("the agent's secret")
        .trim()
        .to_string();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let content_file = write_file(dir, "content.bin", "");
    std::fs::write(&content_file, &content).unwrap();
    let sha256 = sha256_of(&content_file);
    let start = |name: &str, lease: pb::Lease, secret: &str| pb::UploadArtifactStart {
        lease: Some(lease),
        agent: "gpu-01".into(),
        agent_secret: secret.to_string(),
        name: name.into(),
        size: content.len() as u64,
        sha256: sha256.clone(),
    };
    let chunks =
        |bytes: &[u8]| -> Vec<Vec<u8>> { bytes.chunks(1 << 20).map(<[u8]>::to_vec).collect() };
    let store = dir.join("data").join("artifacts");

    // A stream that ends after 2 of the 3 MB declared: refused, nothing stored.
    let truncated = raw
        .upload(
            start("truncated.bin", lease.clone(), &secret),
            chunks(&content[..2_000_000]),
            true,
        )
        .expect("an answer");
    let status = truncated.expect_err("a truncated upload is refused");
    assert!(
        status
            .message()
            .contains("ended after 2000000 of the 3000000"),
        "{status:?}"
    );
    // A call dropped mid-file (the agent died): the coordinator removes its partial file.
    raw.upload(
        start("dropped.bin", lease.clone(), &secret),
        chunks(&content[..2_000_000]),
        false,
    );
    wait_until(
        WATCH_TIMEOUT,
        Duration::from_millis(20),
        "the partial upload to be removed",
        || files_under(&store.join("tmp")).is_empty().then_some(()),
    );
    // Bytes whose hash is not the declared one.
    let mut forged = content.clone();
    forged[1_500_000] ^= 0xff;
    let status = raw
        .upload(
            start("forged.bin", lease.clone(), &secret),
            chunks(&forged),
            true,
        )
        .expect("an answer")
        .expect_err("a forged upload is refused");
    assert!(status.message().contains("not the"), "{status:?}");
    // A stale lease, or a secret that is not the agent's, is refused before any byte.
    let stale = pb::Lease {
        epoch: lease.epoch + 1000,
        ..lease.clone()
    };
    let status = raw
        .upload(start("stale.bin", stale, &secret), chunks(&content), true)
        .expect("an answer")
        .expect_err("a stale lease is refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let status = raw
        .upload(
            start("impostor.bin", lease.clone(), &"ab".repeat(32)),
            chunks(&content),
            true,
        )
        .expect("an answer")
        .expect_err("another secret is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // A viewer may not upload.
    let status = raw.runtime.block_on(async {
        let mut client = ArtifactServiceClient::connect(raw.url.clone())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::UploadArtifactRequest {
            kind: Some(pb::upload_artifact_request::Kind::Start(start(
                "v.bin",
                lease.clone(),
                &secret,
            ))),
        })
        .await
        .unwrap();
        drop(tx);
        client
            .upload_artifact(raw.request(tokio_stream_of(rx), &tokens.victor))
            .await
            .expect_err("a viewer may not upload")
    });
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let detail = json_as(coordinator, &tokens.victor, &["runs", "show", &run_id]);
    assert_eq!(detail["artifacts"], serde_json::json!([]), "{detail}");
    assert!(files_under(&store.join("objects")).is_empty());
    assert!(files_under(&store.join("tmp")).is_empty());

    // The same lease and secret upload the whole file: recorded, so the refusals above
    // were for the breaks, not for the lease.
    let stored = raw
        .upload(
            start("whole.bin", lease.clone(), &secret),
            chunks(&content),
            true,
        )
        .expect("an answer")
        .expect("a whole upload is stored");
    assert_eq!(stored.artifact.as_ref().map(|a| a.size), Some(3_000_000));
    assert!(!stored.already_stored);
    // The same content under another name is not sent again.
    let again = raw
        .upload(start("copy.bin", lease.clone(), &secret), Vec::new(), true)
        .expect("an answer")
        .expect("known content is recorded at once");
    assert!(again.already_stored);

    std::fs::write(&release, b"").unwrap();
    let done = json_as(coordinator, &tokens.alice, &["sweep", "watch", &sweep_id]);
    assert_eq!(done["status"], "completed", "{done}");
    let detail = json_as(coordinator, &tokens.victor, &["runs", "show", &run_id]);
    let names: Vec<&str> = detail["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| as_str(&a["name"], "name"))
        .collect();
    assert_eq!(names, ["copy.bin", "whole.bin"], "{detail}");
    assert_eq!(files_under(&store.join("objects")).len(), 1);
    let out = dir.join("got");
    json_as(
        coordinator,
        &tokens.victor,
        &[
            "artifacts",
            "get",
            &run_id,
            "copy.bin",
            "--out",
            out.to_str().expect("utf-8"),
        ],
    );
    assert!(std::fs::read(out.join("copy.bin")).unwrap() == content);
}

#[test]
fn an_agent_killed_while_uploading_a_big_file_records_nothing() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let tokens = write_auth_file(dir);
    let mut cluster = cluster(dir, &tokens);
    let mut agent = cluster.take_agent("gpu-01");
    let coordinator = &cluster.coordinator;
    // A sparse 512 MiB file: no disk on the agent's side, and far more than the
    // coordinator receives between the first megabyte and the kill.
    write_script(
        dir,
        "big.sh",
        "#!/bin/sh\nset -e\nmkdir -p model\ntruncate -s 512M model/big.bin\nprintf small > model/small.txt\n",
    );
    let sweep_file = write_file(
        dir,
        "big.yaml",
        "name: big\nmethod: grid\nartifacts: [model/]\ncommand: [sh, \"{{ladder.code_dir}}/big.sh\"]\n",
    );
    let sweep = json_as(
        coordinator,
        &tokens.alice,
        &["sweep", "submit", sweep_file.to_str().expect("utf-8")],
    );
    let sweep_id = as_str(&sweep["id"], "sweep id").to_string();
    let store = dir.join("data").join("artifacts");
    // The agent uploads model/big.bin first (by name); once part of it is on the
    // coordinator's disk, the agent dies.
    wait_until(
        WATCH_TIMEOUT,
        Duration::from_millis(10),
        "the big file's upload to begin",
        || {
            std::fs::read_dir(store.join("tmp"))
                .ok()?
                .flatten()
                .any(|entry| entry.metadata().is_ok_and(|m| m.len() >= 1_000_000))
                .then_some(())
        },
    );
    agent.kill9();
    wait_until(
        WATCH_TIMEOUT,
        Duration::from_millis(20),
        "the partial upload to be removed",
        || files_under(&store.join("tmp")).is_empty().then_some(()),
    );
    let runs = json_as(
        coordinator,
        &tokens.victor,
        &["runs", "ls", "--sweep", &sweep_id],
    );
    let run_id = as_str(&runs["runs"][0]["id"], "run id").to_string();
    let detail = json_as(coordinator, &tokens.victor, &["runs", "show", &run_id]);
    assert_eq!(detail["artifacts"], serde_json::json!([]), "{detail}");
    assert_ne!(detail["status"], "completed", "{detail}");
    assert!(files_under(&store.join("objects")).is_empty());
}
