//! A real headless browser for the tests of the web pages: Debian's `chromium`
//! (installed by `tests/setup.sh`), driven two ways.
//!
//! - [`dump_dom`] and [`screenshot`]: one `chromium --headless` process per page, which
//!   loads it, lets its scripts run for a virtual-time budget and prints the document
//!   (or writes a PNG). Enough for a page that stops changing.
//! - [`Browser`]: the DevTools protocol over `--remote-debugging-pipe` (file
//!   descriptors 3 and 4, NUL-separated JSON messages), for pages that keep changing:
//!   evaluate expressions, wait for a condition, click, take screenshots.
//!
//! A missing `chromium` fails the test with how to install it; it never skips.
//! [`http`] is a minimal HTTP/1.1 client for asserting on the JSON API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one `chromium` process may take for a page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The `chromium` binary; panics, naming the fix, when it is not installed.
pub fn chromium() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join("chromium");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "chromium is not installed, and the web pages are tested in a real browser: run \
         tests/setup.sh (or `apt-get install -y --no-install-recommends chromium`)"
    );
}

/// Where a test leaves its screenshots: `$LADDER_E2E_OUT/TEST`, or
/// `target/e2e-output/TEST` in the workspace; created empty.
pub fn output_dir(test: &str) -> PathBuf {
    let base = match std::env::var_os("LADDER_E2E_OUT") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-output"),
    };
    let dir = base.join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn headless(profile: &Path) -> Command {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null());
    command
}

/// Runs `command` to its end within [`PAGE_TIMEOUT`]; its stdout.
fn run_chromium(mut command: Command, what: &str) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromium for {what}: {e}"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + PAGE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish {what} within {PAGE_TIMEOUT:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed {what} ({status}); stderr:\n{}",
        err.join().unwrap_or_default()
    );
    stdout
}

/// The document of `url` after its scripts ran (`--dump-dom`, with a virtual-time
/// budget), in a browser profile kept in `profile`.
pub fn dump_dom(url: &str, profile: &Path) -> String {
    let mut command = headless(profile);
    command
        .arg("--virtual-time-budget=10000")
        .arg("--dump-dom")
        .arg(url);
    run_chromium(command, &format!("loading {url}"))
}

/// A PNG of `url` after its scripts ran, written to `path`.
pub fn screenshot(url: &str, profile: &Path, path: &Path) {
    let mut command = headless(profile);
    command
        .arg("--virtual-time-budget=10000")
        .arg(format!("--screenshot={}", path.display()))
        .arg(url);
    run_chromium(command, &format!("taking a screenshot of {url}"));
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 1000,
        "chromium wrote no screenshot of {url} to {}",
        path.display()
    );
}

/// A headless chromium driven over the DevTools protocol, with one page open. Killed
/// on drop.
pub struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
}

/// A pipe's (read end, write end).
fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into the array it is given. Close-on-exec,
    // so that no other child inherits them; dup2 in the browser's child clears it.
    let result = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(result, 0, "pipe: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

impl Browser {
    /// Starts chromium with its profile in `profile` and opens a blank page.
    pub fn start(profile: &Path) -> Browser {
        let (browser_reads, to_browser) = pipe();
        let (from_browser, browser_writes) = pipe();
        let read_fd = browser_reads.as_raw_fd();
        let write_fd = browser_writes.as_raw_fd();
        let mut command = headless(profile);
        command
            .arg("--remote-debugging-pipe")
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: fcntl(2) and dup2(2) are async-signal-safe; the child gets the pipe ends as the
        // descriptors 3 (commands in) and 4 (answers out) the protocol uses.
        unsafe {
            command.pre_exec(move || {
                // Moved above 10 first: either end may be 3 or 4 itself.
                let read_high = libc::fcntl(read_fd, libc::F_DUPFD, 10);
                let write_high = libc::fcntl(write_fd, libc::F_DUPFD, 10);
                if read_high < 0
                    || write_high < 0
                    || libc::dup2(read_high, 3) < 0
                    || libc::dup2(write_high, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
        drop(browser_reads);
        drop(browser_writes);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_browser);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if message.last() == Some(&0) {
                            message.pop();
                        }
                        if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                            if tx.send(value).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            to_browser,
            from_browser: rx,
            session: String::new(),
            next_id: 1,
        };
        let target = browser.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        browser.page("Page.enable", json!({}));
        browser.page("Runtime.enable", json!({}));
        browser
    }

    /// Sends one command (to the page's session when given) and waits for its answer.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .unwrap_or_else(|error| panic!("chromium refused {method}: {error}"))
    }

    /// Like [`Browser::call`], the protocol's refusal as an error.
    fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = Value::String(session.to_string());
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("cannot send {method} to chromium: {e}"));
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e:?}"));
            if answer["id"].as_u64() == Some(id) {
                if let Some(error) = answer.get("error") {
                    return Err(error.to_string());
                }
                return Ok(answer["result"].clone());
            }
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Opens `url` in the page (following redirects) without waiting for its scripts.
    pub fn navigate(&mut self, url: &str) {
        let answer = self.page("Page.navigate", json!({"url": url}));
        assert!(
            answer.get("errorText").is_none(),
            "chromium cannot open {url}: {answer}"
        );
    }

    /// The value of the JavaScript `expression` in the page (awaited when a promise).
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|error| panic!("{expression} failed in the page: {error}"))
    }

    /// Like [`Browser::eval`]; an exception, or a page between two documents, is an error.
    fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let answer = self.try_call(
            Some(&session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(exception) = answer.get("exceptionDetails") {
            return Err(exception.to_string());
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy (not null, false, 0 or ""), and returns
    /// its value; panics with `what` after `timeout`.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration, what: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            // While the page loads, the expression may throw or find no document.
            let value = self.try_eval(expression).unwrap_or(Value::Null);
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let body = self
                    .try_eval("document.body ? document.body.innerText : ''")
                    .unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for {what}; the page shows:\n{body}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as it is now, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let answer = self.page("Page.captureScreenshot", json!({"format": "png"}));
        let data = answer["data"].as_str().expect("screenshot data");
        let bytes = base64_decode(data);
        std::fs::write(path, bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes standard base64 (what the DevTools protocol sends binary data as).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let Some(v) = value(c) else { continue };
        buffer = (buffer << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// One HTTP/1.1 request to `addr` (`Connection: close`): the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(PAGE_TIMEOUT))
        .expect("read timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .unwrap_or_else(|e| panic!("read the answer to {method} {path}: {e}"));
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in the answer to {method} {path}: {head}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_what_the_protocol_sends() {
        assert_eq!(base64_decode("aGVsbG8="), b"hello");
        assert_eq!(base64_decode("aGk="), b"hi");
        assert_eq!(dechunk("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"), "hello!");
    }
}
