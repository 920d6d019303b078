//! The web pages, end to end in a real headless chromium: a coordinator with an auth
//! file and an agent run sweeps, and the tests open the leaderboard, sweep, run card and
//! agents pages as a user would (through the sign-in link), asserting on what the pages
//! show once their scripts ran: run ids, values, the number of points drawn in a curve,
//! a live update arriving while a run goes on, and a viewer refused a cancel.
//! Screenshots of every page are left in `target/e2e-output/` (see
//! [`ladder_e2e::browser::output_dir`]).

use std::path::Path;
use std::time::Duration;

use ladder_e2e::browser::{self, Browser};
use ladder_e2e::{
    as_str, ladder_with_timeout, parse_json_output, wait_until, write_file, write_script, Cluster,
    Coordinator, TestDir, Value, CLIENT_TIMEOUT, WATCH_TIMEOUT,
};

/// The user tokens of the auth file (which also has admin root and agent fleet).
struct Tokens {
    alice: String,
    victor: String,
}

fn new_token(name: &str, role: &str) -> (String, String) {
    let args = ["auth", "token", "--name", name, "--role", role, "--json"];
    let output = ladder_with_timeout(&args, CLIENT_TIMEOUT);
    let value = parse_json_output(&args, &output);
    (
        as_str(&value["token"], "token").to_string(),
        as_str(&value["token_sha256"], "token_sha256").to_string(),
    )
}

/// A coordinator with an auth file and one agent `a1` of 2 slots, its code in `dir`.
fn start(dir: &Path) -> (Cluster, Tokens) {
    let (root, root_hash) = new_token("root", "admin");
    let (alice, alice_hash) = new_token("alice", "member");
    let (victor, victor_hash) = new_token("victor", "viewer");
    let (fleet, fleet_hash) = new_token("fleet", "agent");
    let auth = write_file(
        dir,
        "auth.yaml",
        &format!(
            "users:\n\
             \x20 - {{name: root, role: admin, token_sha256: {root_hash}}}\n\
             \x20 - {{name: alice, role: member, token_sha256: {alice_hash}}}\n\
             \x20 - {{name: victor, role: viewer, token_sha256: {victor_hash}}}\n\
             agents:\n\
             \x20 - {{name: fleet, token_sha256: {fleet_hash}}}\n"
        ),
    );
    // N points of loss 1/(step+A) and score A*step/10, PAUSE seconds apart.
    write_script(
        dir,
        "curve.sh",
        "#!/bin/sh\nawk -v a=\"$1\" -v n=\"$2\" -v p=\"$3\" 'BEGIN { for (i = 1; i <= n; i++) { \
         printf \"@ladder {\\\"step\\\": %d, \\\"loss\\\": %.4f, \\\"score\\\": %.4f}\\n\", i, 1/(i+a), a*i/10; \
         fflush(); if (p > 0) system(\"sleep \" p) } }'\n",
    );
    let cluster = Cluster::builder(dir)
        .coordinator_args(&["--auth", auth.to_str().expect("utf-8 path")])
        .admin_token(&root)
        .agent_with("a1", 2, &["--token", &fleet])
        .start();
    let tokens = Tokens { alice, victor };
    (cluster, tokens)
}

/// `ladder ARGS --coordinator URL --token TOKEN --json`, parsed.
fn json_as(coordinator: &Coordinator, token: &str, args: &[&str], timeout: Duration) -> Value {
    let url = coordinator.url();
    let mut args = args.to_vec();
    args.extend(["--json", "--token", token, "--coordinator", &url]);
    let output = ladder_with_timeout(&args, timeout);
    parse_json_output(&args, &output)
}

/// Submits `yaml` as alice; the sweep's id.
fn submit(
    coordinator: &Coordinator,
    dir: &Path,
    tokens: &Tokens,
    name: &str,
    yaml: &str,
) -> String {
    let file = write_file(dir, &format!("{name}.yaml"), yaml);
    let sweep = json_as(
        coordinator,
        &tokens.alice,
        &["sweep", "submit", file.to_str().expect("utf-8")],
        CLIENT_TIMEOUT,
    );
    as_str(&sweep["id"], "sweep id").to_string()
}

/// The sign-in link of `token` that lands on `page`.
fn signin(coordinator: &Coordinator, token: &str, page: &str) -> String {
    format!("{}/signin?token={token}&next={page}", coordinator.url())
}

/// `GET path` of the JSON API with `token`: the status and the parsed body.
fn api(coordinator: &Coordinator, token: &str, path: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    let (status, body) = browser::http(
        coordinator.addr(),
        "GET",
        path,
        &[("Authorization", &bearer)],
    );
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path} answered {status} with no JSON ({e}): {body}"));
    (status, value)
}

/// The attribute `name` of every element that has it, in document order.
fn attributes(dom: &str, name: &str) -> Vec<String> {
    let needle = format!("{name}=\"");
    dom.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &dom[at + needle.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_string()
        })
        .collect()
}

/// The text of the element whose id is `id` (its markup stripped), from a dump.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"));
    let rest = &dom[start..];
    let open = rest.find('>').map_or(0, |i| i + 1);
    let mut text = String::new();
    let mut depth = 0usize;
    let mut in_tag = false;
    let body = &rest[open..];
    for (i, c) in body.char_indices() {
        match c {
            '<' => {
                if body[i..].starts_with("</") {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                } else {
                    depth += 1;
                }
                in_tag = true;
            }
            '>' => {
                if in_tag && body[..i].ends_with('/') {
                    depth = depth.saturating_sub(1);
                }
                in_tag = false;
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

#[test]
fn the_pages_show_the_leaderboard_sweep_run_card_and_agents_after_their_scripts_ran() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let out = browser::output_dir("web-pages");
    let (cluster, tokens) = start(dir);
    let coordinator = &cluster.coordinator;
    let sweep_id = submit(
        coordinator,
        dir,
        &tokens,
        "grid",
        "name: web-grid\nproject: web\nmethod: grid\nmetric: {name: score, goal: maximize}\n\
         parallel: 2\nparameters:\n  a: {values: [1, 2, 3]}\n\
         command: [sh, \"{{ladder.code_dir}}/curve.sh\", \"{{a}}\", \"20\", \"0\"]\n",
    );
    let finished = json_as(
        coordinator,
        &tokens.victor,
        &["sweep", "watch", &sweep_id],
        WATCH_TIMEOUT,
    );
    assert_eq!(finished["counts"]["completed"], 3, "{finished}");

    // The JSON API behind the pages: the runs of the sweep, paginated, and its refusals.
    let (status, page) = api(
        coordinator,
        &tokens.victor,
        &format!("/api/v1/runs?sweep={sweep_id}&limit=2"),
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(2), "{page}");
    let cursor = as_str(&page["next_cursor"], "next_cursor").to_string();
    let (_, rest) = api(
        coordinator,
        &tokens.victor,
        &format!("/api/v1/runs?sweep={sweep_id}&limit=2&cursor={cursor}"),
    );
    assert_eq!(rest["runs"].as_array().map(Vec::len), Some(1), "{rest}");
    assert!(rest["next_cursor"].is_null(), "{rest}");
    let (status, refused) = api(coordinator, &tokens.victor, "/api/v1/runs?limit=5000");
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["field"], "limit", "{refused}");
    let (status, refused) = api(coordinator, &tokens.victor, "/api/v1/runs?colour=red");
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["field"], "colour", "{refused}");
    let (status, refused) = api(coordinator, "not-a-token", "/api/v1/sweeps");
    assert_eq!(status, 401, "{refused}");

    // Which run is which: score at the last step is 2·a, so a = 3 ranks first with 6.
    let runs = page["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(rest["runs"].as_array().into_iter().flatten())
        .cloned()
        .collect::<Vec<Value>>();
    let best = runs
        .iter()
        .find(|run| run["params"]["a"] == 3)
        .unwrap_or_else(|| panic!("no run with a = 3 in {runs:?}"));
    let best_id = as_str(&best["id"], "run id").to_string();
    assert_eq!(best["metrics"]["score"], 6.0, "{best}");

    let profile = dir.join("chromium");

    // Leaderboard: one row per run, best first, each linking to its run card.
    let url = signin(coordinator, &tokens.victor, "/?project=web");
    let board = browser::dump_dom(&url, &profile);
    browser::screenshot(&url, &profile, &out.join("leaderboard.png"));
    assert!(board.contains("data-ready=\"1\""), "{board}");
    let rows = attributes(&board, "data-run-id");
    assert_eq!(rows.len(), 3, "three ranked runs: {rows:?}\n{board}");
    assert_eq!(rows[0], best_id, "the best run first: {board}");
    assert!(
        board.contains(&format!("href=\"/runs/{best_id}\"")),
        "rows link to the run card: {board}"
    );
    assert!(
        board.contains(">6</td>"),
        "the best score is shown: {board}"
    );
    assert!(
        board.contains("victor (viewer)"),
        "signed in as victor: {board}"
    );

    // Sweep page: every trial's objective drawn, and the best-so-far curve.
    let url = signin(coordinator, &tokens.victor, &format!("/sweeps/{sweep_id}"));
    let sweep = browser::dump_dom(&url, &profile);
    browser::screenshot(&url, &profile, &out.join("sweep.png"));
    let counts = text_of(&sweep, "counts");
    assert!(counts.contains("3 completed"), "{counts}");
    assert_eq!(
        attributes(&sweep, "data-points"),
        vec!["3", "3"],
        "3 trials and 3 best-so-far points drawn: {sweep}"
    );
    assert_eq!(attributes(&sweep, "data-run-id").len(), 3, "{sweep}");

    // Run card: parameters, command, and every point of both curves.
    let url = signin(coordinator, &tokens.victor, &format!("/runs/{best_id}"));
    let card = browser::dump_dom(&url, &profile);
    browser::screenshot(&url, &profile, &out.join("run.png"));
    assert_eq!(text_of(&card, "run-id"), best_id);
    assert!(
        text_of(&card, "command").contains("curve.sh 3 20 0"),
        "{card}"
    );
    assert!(card.contains("data-param=\"a\">3<"), "{card}");
    assert_eq!(
        attributes(&card, "data-metric")
            .into_iter()
            .filter(|m| m == "loss" || m == "score")
            .count(),
        4,
        "a metrics row and a chart for each of loss and score: {card}"
    );
    assert_eq!(
        attributes(&card, "data-points"),
        vec!["20", "20"],
        "20 points drawn in each curve: {card}"
    );
    assert_eq!(text_of(&card, "point-count"), "20");

    // Agents page.
    let url = signin(coordinator, &tokens.victor, "/agents");
    let agents = browser::dump_dom(&url, &profile);
    browser::screenshot(&url, &profile, &out.join("agents.png"));
    assert_eq!(attributes(&agents, "data-agent"), vec!["a1"], "{agents}");
    assert!(agents.contains("connected"), "{agents}");

    // Without a token a page sends the browser to the sign-in form, and a wrong token
    // is refused there.
    let signin_page = browser::dump_dom(
        &format!("{}/runs/{best_id}", coordinator.url()),
        &dir.join("fresh"),
    );
    assert!(signin_page.contains("name=\"token\""), "{signin_page}");
    let refused = browser::dump_dom(&signin(coordinator, "wrong", "/"), &dir.join("fresh"));
    assert!(
        refused.contains("Sign-in refused: unknown token"),
        "{refused}"
    );
    eprintln!("screenshots in {}", out.display());
}

#[test]
fn a_running_run_updates_live_and_a_viewer_is_refused_a_cancel_that_the_owner_may_do() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let out = browser::output_dir("web-live");
    let (cluster, tokens) = start(dir);
    let coordinator = &cluster.coordinator;
    // 600 points a tenth of a second apart: running for about a minute unless cancelled.
    let sweep_id = submit(
        coordinator,
        dir,
        &tokens,
        "slow",
        "name: web-slow\nproject: web\nmethod: grid\nmetric: {name: score, goal: maximize}\n\
         parameters:\n  a: {values: [5]}\n\
         command: [sh, \"{{ladder.code_dir}}/curve.sh\", \"{{a}}\", \"600\", \"0.1\"]\n",
    );
    let run_id = format!("{sweep_id}-000000");
    wait_until(
        WATCH_TIMEOUT,
        Duration::from_millis(200),
        "the run to report its first points",
        || {
            let (status, card) = api(
                coordinator,
                &tokens.victor,
                &format!("/api/v1/runs/{run_id}"),
            );
            (status == 200 && card["series"][0]["total_points"].as_u64() > Some(3)).then_some(())
        },
    );

    let mut chromium = Browser::start(&dir.join("chromium"));
    // The run card as the viewer: its curve grows while the page stays open.
    chromium.navigate(&signin(
        coordinator,
        &tokens.victor,
        &format!("/runs/{run_id}"),
    ));
    chromium.wait_for(
        "document.body && document.body.dataset.ready === '1'",
        Duration::from_secs(60),
        "the run card to load",
    );
    let first = chromium
        .eval("Number(document.getElementById('point-count').textContent)")
        .as_f64()
        .expect("a point count");
    assert!(first > 0.0, "the card shows the points so far");
    assert_eq!(
        chromium.eval("document.getElementById('live').textContent"),
        "● live"
    );
    let grown = chromium.wait_for(
        &format!(
            "(() => {{ const n = Number(document.getElementById('point-count').textContent); \
             return n >= {first} + 10 ? n : 0; }})()"
        ),
        Duration::from_secs(60),
        "ten more points to arrive over the live feed",
    );
    let drawn = chromium.eval(
        "Number(document.querySelector('figure[data-metric=\"score\"] polyline').getAttribute('data-points'))",
    );
    assert!(
        drawn.as_f64() >= Some(first + 10.0),
        "the score curve drew the new points ({drawn} drawn, {grown} received)"
    );
    let (_, card) = api(
        coordinator,
        &tokens.victor,
        &format!("/api/v1/runs/{run_id}"),
    );
    assert_eq!(
        card["run"]["status"], "running",
        "the update came while the run went on"
    );
    chromium.screenshot(&out.join("run-live.png"));

    // The sweep page as the viewer: cancel is refused, and the sweep goes on.
    chromium.navigate(&signin(
        coordinator,
        &tokens.victor,
        &format!("/sweeps/{sweep_id}"),
    ));
    chromium.wait_for(
        "document.body && document.body.dataset.ready === '1' && document.getElementById('cancel')",
        Duration::from_secs(60),
        "the sweep page to load",
    );
    chromium.eval("document.getElementById('cancel').click()");
    let message = chromium.wait_for(
        "document.getElementById('message').textContent",
        Duration::from_secs(30),
        "an answer to the cancel",
    );
    assert_eq!(
        message,
        "user victor (viewer) may not pause, resume or cancel sweeps owned by alice; viewers only read",
        "the viewer is refused"
    );
    assert_eq!(
        chromium.eval("document.getElementById('message').className"),
        "message error"
    );
    chromium.screenshot(&out.join("sweep-viewer-refused.png"));
    let (_, sweep) = api(
        coordinator,
        &tokens.victor,
        &format!("/api/v1/sweeps/{sweep_id}"),
    );
    assert_eq!(sweep["status"], "running", "{sweep}");

    // A request without the page's header is refused as a possible forgery, even with
    // the owner's cookie.
    let cookie = format!("ladder_token={}", tokens.alice);
    let (status, body) = browser::http(
        coordinator.addr(),
        "POST",
        &format!("/api/v1/sweeps/{sweep_id}/cancel"),
        &[("Cookie", &cookie)],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("csrf_header_missing"), "{body}");

    // The owner cancels from the same page, and it shows the sweep cancelled.
    chromium.navigate(&signin(
        coordinator,
        &tokens.alice,
        &format!("/sweeps/{sweep_id}"),
    ));
    chromium.wait_for(
        "document.body && document.body.dataset.ready === '1' && document.getElementById('cancel')",
        Duration::from_secs(60),
        "the sweep page to load for alice",
    );
    chromium.eval("document.getElementById('cancel').click()");
    let message = chromium.wait_for(
        "document.getElementById('message').textContent",
        Duration::from_secs(30),
        "an answer to alice's cancel",
    );
    assert_eq!(message, "cancel: the sweep is cancelled");
    chromium.wait_for(
        "document.querySelector('h1 .status').dataset.status === 'cancelled'",
        Duration::from_secs(30),
        "the page to show the sweep cancelled",
    );
    chromium.screenshot(&out.join("sweep-owner-cancelled.png"));
    eprintln!("screenshots in {}", out.display());
}
