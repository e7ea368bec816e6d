//! A tiny imitation of the Hugging Face Hub for download tests (weights.md section 6.6): the
//! resolve route answers LFS files with a 302 to a CDN route on the same server, carrying
//! X-Repo-Commit, X-Linked-Etag (the sha256) and X-Linked-Size; the CDN route serves the bytes
//! with Range support and an unrelated ETag. Plain files (like the GitHub-hosted prompt) are
//! served directly under `/raw/`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone, Default)]
pub struct Fault {
    /// Serve these bytes instead of the real ones (same size: only sha256 can catch it).
    pub wrong_bytes: Option<Vec<u8>>,
    /// The first N body requests send only this many bytes, then close the connection.
    pub truncate_first: usize,
    pub truncate_at: usize,
    /// Answer ranged requests with a plain 200 (server without Range support).
    pub ignore_range: bool,
}

#[derive(Clone)]
struct Entry {
    bytes: Vec<u8>,
    sha256: String,
    fault: Fault,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    /// `repo/path` → file (served via resolve + CDN).
    hub: HashMap<String, Entry>,
    /// `name` → file served at `/raw/name`.
    raw: HashMap<String, Entry>,
    log: Vec<Logged>,
    body_requests: HashMap<String, usize>,
}

pub struct HubEmulator {
    pub base: String,
    state: Arc<Mutex<State>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl HubEmulator {
    pub fn start() -> HubEmulator {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let b = base.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                let b = b.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st, &b);
                });
            }
        });
        HubEmulator { base, state }
    }

    pub fn add_hub_file(&self, repo: &str, path: &str, bytes: Vec<u8>, fault: Fault) -> String {
        let sha = sha256_hex(&bytes);
        self.state.lock().unwrap().hub.insert(
            format!("{repo}/{path}"),
            Entry {
                bytes,
                sha256: sha.clone(),
                fault,
            },
        );
        sha
    }

    pub fn add_raw_file(&self, name: &str, bytes: Vec<u8>, fault: Fault) -> String {
        let sha = sha256_hex(&bytes);
        self.state.lock().unwrap().raw.insert(
            name.to_string(),
            Entry {
                bytes,
                sha256: sha.clone(),
                fault,
            },
        );
        sha
    }

    pub fn raw_url(&self, name: &str) -> String {
        format!("{}/raw/{name}", self.base)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

fn serve(conn: TcpStream, st: &Arc<Mutex<State>>, base: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let path = target.split('?').next().unwrap_or("").to_string();
    st.lock().unwrap().log.push(Logged {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
    });

    // /raw/<name>: plain file (GitHub raw).
    if let Some(name) = path.strip_prefix("/raw/") {
        let entry = st.lock().unwrap().raw.get(name).cloned();
        return match entry {
            Some(e) => send_body(
                &mut conn,
                st,
                &format!("raw/{name}"),
                &e,
                &method,
                range.as_deref(),
                &[],
            ),
            None => send(&mut conn, "404 Not Found", &[], b"not found"),
        };
    }
    // /cdn/<repo>/<path>: the bytes of an LFS file (signed-URL stand-in).
    if let Some(key) = path.strip_prefix("/cdn/") {
        let entry = st.lock().unwrap().hub.get(key).cloned();
        return match entry {
            Some(e) => {
                let etag = format!("\"{}\"", "f".repeat(64)); // not the file's sha256, as on the real CDN
                send_body(
                    &mut conn,
                    st,
                    key,
                    &e,
                    &method,
                    range.as_deref(),
                    &[("ETag", etag)],
                )
            }
            None => send(&mut conn, "404 Not Found", &[], b"not found"),
        };
    }
    // /<owner>/<name>/resolve/<rev>/<path>
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segs.len() == 5 && segs[2] == "resolve" {
        let repo = format!("{}/{}", segs[0], segs[1]);
        let key = format!("{repo}/{}", segs[4]);
        let entry = st.lock().unwrap().hub.get(&key).cloned();
        let known_repo = st
            .lock()
            .unwrap()
            .hub
            .keys()
            .any(|k| k.starts_with(&format!("{repo}/")));
        return match entry {
            Some(e) => {
                let headers = vec![
                    ("Location", format!("{base}/cdn/{key}")),
                    ("X-Repo-Commit", COMMIT.to_string()),
                    ("X-Linked-Etag", format!("\"{}\"", e.sha256)),
                    ("X-Linked-Size", e.bytes.len().to_string()),
                ];
                send(&mut conn, "302 Found", &headers, b"")
            }
            None => {
                let code = if known_repo {
                    "EntryNotFound"
                } else {
                    "RepoNotFound"
                };
                send(
                    &mut conn,
                    "404 Not Found",
                    &[("X-Error-Code", code.to_string())],
                    b"",
                )
            }
        };
    }
    send(&mut conn, "404 Not Found", &[], b"")
}

fn send(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

fn send_body(
    conn: &mut TcpStream,
    st: &Arc<Mutex<State>>,
    key: &str,
    e: &Entry,
    method: &str,
    range: Option<&str>,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let bytes = e
        .fault
        .wrong_bytes
        .clone()
        .unwrap_or_else(|| e.bytes.clone());
    let total = bytes.len();
    let start = if e.fault.ignore_range {
        None
    } else {
        range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<usize>().ok())
    };
    let mut headers: Vec<(&str, String)> = extra.to_vec();
    let (status, body) = match start {
        Some(s) if s < total => {
            headers.push(("Content-Range", format!("bytes {s}-{}/{total}", total - 1)));
            ("206 Partial Content", &bytes[s..])
        }
        Some(_) => {
            headers.push(("Content-Range", format!("bytes */{total}")));
            return send(conn, "416 Range Not Satisfiable", &headers, b"");
        }
        None => ("200 OK", &bytes[..]),
    };
    if method == "HEAD" {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes())?;
        return conn.flush();
    }
    let n = {
        let mut s = st.lock().unwrap();
        let n = s.body_requests.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    };
    if n <= e.fault.truncate_first {
        // Promise the whole body, send part of it, hang up.
        let mut head = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes())?;
        conn.write_all(&body[..e.fault.truncate_at.min(body.len())])?;
        conn.flush()?;
        return conn.shutdown(std::net::Shutdown::Both);
    }
    send(conn, status, &headers, body)
}

/// Drain helper for clients that send bodies (not used by GET/HEAD).
#[allow(unused)]
fn drain(r: &mut impl Read) {
    let mut b = [0u8; 1024];
    while let Ok(n) = r.read(&mut b) {
        if n == 0 {
            break;
        }
    }
}
