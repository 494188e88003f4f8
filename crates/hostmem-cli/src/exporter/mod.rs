//! `hostmem exporter`: every VM's memory placement and the host's room, as OpenMetrics
//! on HTTP for the fleet's Prometheus (docs/exporter.md, DESIGN.md §12).
//!
//! Each scrape reads afresh: the QMP sockets (globs expanded again, so VMs started
//! since are found), each asked on its own thread with a deadline (`collect`), where
//! each memory device's pages are (`placement`: the one call the scrape's cost depends
//! on, walked or sampled at a bounded cost), and the host's nodes, pools and cgroup room. `metrics` turns that into
//! prometheus-client's registry and text.

pub mod collect;
pub mod metrics;
pub mod placement;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hostmem::limits::Snapshot;
use hostmem::HostTopology;

use collect::{Busy, Identity};
use metrics::Exposition;

pub const EXAMPLES: &str = "Examples:
  hostmem exporter --listen 127.0.0.1:9713 --qmp /run/vm1.qmp --qmp /run/vm2.qmp
  hostmem exporter --listen :9713 --qmp '/run/libvirt/qemu/*-hostmem.qmp'
      every VM whose second QMP monitor matches the glob (docs/vm.md: libvirt)
  curl -s http://127.0.0.1:9713/metrics";

/// The OpenMetrics content type Prometheus asks for and the encoder writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapes served at once; more wait for none and get 503 (each may hold a thread per VM).
const MAX_CONCURRENT: usize = 4;

#[derive(Args)]
pub struct ExporterArgs {
    /// Address and port to serve /metrics on (`:PORT` listens on every address).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// A QEMU QMP socket (`unix:PATH[,...]` accepted); repeatable; a glob (`*`, `?`,
    /// `[...]`) is expanded at every scrape. Give each VM a QMP monitor of its own for
    /// hostmem: QEMU serves one client per monitor.
    #[arg(long = "qmp", value_name = "SOCKET")]
    pub qmp: Vec<String>,
    /// Seconds a scrape waits for each VM (all are asked at once); a VM that has not
    /// answered by then is reported down (hostmem_scrape_source_up 0).
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    pub timeout: f64,
}

/// What the scrapes share: the sources, the sockets still being asked, the error
/// counts and the identity each socket last answered with.
struct State {
    patterns: Vec<String>,
    timeout: Duration,
    busy: Busy,
    known: Mutex<BTreeMap<PathBuf, Identity>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

impl State {
    /// The sockets now: plain paths as given (a missing one is a VM down), globs
    /// expanded.
    fn sockets(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in &self.patterns {
            let path = crate::vm::socket_path(p);
            let text = path.to_string_lossy();
            if !is_glob(&text) {
                out.push(path);
                continue;
            }
            if let Ok(paths) = glob::glob(&text) {
                out.extend(paths.flatten());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Adds one to `source`'s error count when `failed`; returns the count.
    fn count_error(&self, source: &str, failed: bool) -> u64 {
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let n = e.entry(source.to_string()).or_default();
        *n += u64::from(failed);
        *n
    }

    /// One scrape: every VM and the host, read now.
    fn scrape(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let out = Exposition::default();
        let vms = collect::vms(&self.sockets(), self.timeout, &self.busy, &self.known);
        for r in &vms {
            let source = r.socket.display().to_string();
            let failed = r.data.is_err()
                || r.data.as_ref().is_ok_and(|d| {
                    d.memdevs
                        .iter()
                        .any(|m| matches!(m.placement, Some(Err(_))))
                });
            let errors = self.count_error(&source, failed);
            out.source(&source, r.data.is_ok(), r.seconds, errors);
            out.vm(r);
        }
        let t = Instant::now();
        let topo = HostTopology::read();
        let lim = Snapshot::read(topo.has_memory.iter(), &topo.huge_page_sizes);
        let failed = out.host(&topo, &lim);
        let errors = self.count_error("host", failed > 0);
        out.source("host", true, t.elapsed().as_secs_f64(), errors);
        out.encode(openmetrics)
    }
}

/// `:9713` → `0.0.0.0:9713`.
fn listen_addr(a: &str) -> String {
    match a.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => a.to_string(),
    }
}

fn respond(req: tiny_http::Request, state: &State) {
    let path = req.url().split('?').next().unwrap_or("");
    // OpenMetrics for whoever asks for it (Prometheus does), else text format 0.0.4.
    let openmetrics = req.headers().iter().any(|h| {
        h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text")
    });
    let content_type = if openmetrics {
        OPENMETRICS
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    let reply = match path {
        "/metrics" => match state.scrape(openmetrics) {
            Ok(text) => {
                let r = tiny_http::Response::from_string(text);
                match tiny_http::Header::from_bytes("Content-Type", content_type) {
                    Ok(h) => r.with_header(h),
                    Err(()) => r,
                }
            }
            Err(_) => tiny_http::Response::from_string("hostmem: encoding the metrics failed\n")
                .with_status_code(500),
        },
        "/" => tiny_http::Response::from_string(
            "hostmem exporter: the metrics are at /metrics (docs/exporter.md)\n",
        ),
        _ => tiny_http::Response::from_string("not found: the metrics are at /metrics\n")
            .with_status_code(404),
    };
    // A client that went away before the answer is not the exporter's problem.
    let _ = req.respond(reply);
}

pub fn main(a: ExporterArgs) -> ExitCode {
    if a.qmp.is_empty() {
        eprintln!("hostmem: exporter: give at least one --qmp SOCKET (a glob is accepted)");
        return ExitCode::from(2);
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        eprintln!(
            "hostmem: --timeout {}: must be a positive number of seconds",
            a.timeout
        );
        return ExitCode::from(2);
    }
    let addr = listen_addr(&a.listen);
    let server = match tiny_http::Server::http(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hostmem: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let state = Arc::new(State {
        patterns: a.qmp,
        timeout: Duration::from_secs_f64(a.timeout),
        busy: Busy::default(),
        known: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(BTreeMap::new()),
    });
    // The address bound (a port 0 asked for becomes the one the kernel chose).
    let bound = server
        .server_addr()
        .to_ip()
        .map_or(addr.clone(), |a| a.to_string());
    eprintln!("hostmem: exporter serving http://{bound}/metrics");
    let running = Arc::new(AtomicUsize::new(0));
    for req in server.incoming_requests() {
        if running.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT {
            running.fetch_sub(1, Ordering::SeqCst);
            let busy = tiny_http::Response::from_string("too many scrapes at once\n");
            let _ = req.respond(busy.with_status_code(503));
            continue;
        }
        let (state, done) = (state.clone(), running.clone());
        let spawned = std::thread::Builder::new()
            .name("hostmem-scrape".into())
            .spawn(move || {
                respond(req, &state);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            running.fetch_sub(1, Ordering::SeqCst);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_and_globs() {
        assert_eq!(listen_addr(":9713"), "0.0.0.0:9713");
        assert_eq!(listen_addr("127.0.0.1:9713"), "127.0.0.1:9713");
        assert!(is_glob("/run/libvirt/qemu/*.qmp") && !is_glob("/run/vm1.qmp"));
    }

    #[test]
    fn plain_paths_stay_and_globs_expand_to_what_exists() {
        let dir = std::env::temp_dir().join(format!("hostmem-exp-glob-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["a.qmp", "b.qmp", "c.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let state = State {
            patterns: vec![
                format!("{}/*.qmp", dir.display()),
                format!("unix:{}/gone.qmp,server=on", dir.display()),
            ],
            timeout: Duration::from_secs(1),
            busy: Busy::default(),
            known: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
        };
        let got = state.sockets();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got,
            vec![dir.join("a.qmp"), dir.join("b.qmp"), dir.join("gone.qmp")]
        );
    }
}
