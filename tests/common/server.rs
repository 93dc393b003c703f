//! Local servers the tests start on 127.0.0.1 (S3, Azurite, Swift, …).
//!
//! A test binary starts each server at most once and shares it between its
//! tests. Rust never drops statics, so a server is started under a small
//! shell "reaper" that holds the read end of a pipe whose write end only
//! this process has: when the test process exits (normally, by panic or by
//! a signal), the pipe closes, the reaper's `read` returns and it kills the
//! server's whole process group. Nothing outlives the test run.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A server started by the harness; it lives until the test process exits.
pub struct ServerProcess {
    pub name: String,
    /// The server's own scratch directory, removed after it stops.
    pub dir: PathBuf,
    reaper: Mutex<(Child, ChildStdin)>,
}

impl ServerProcess {
    /// Starts `program args…` with `envs` in a fresh scratch directory
    /// ([`Self::dir`], also its working directory); its output goes to
    /// `server.log` there. `configure` may write files into the directory
    /// first and returns the arguments (which may name those files).
    pub fn spawn(
        name: &str,
        program: &Path,
        envs: &[(String, String)],
        configure: impl FnOnce(&Path) -> Vec<String>,
    ) -> ServerProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wal-e-test-{name}-"))
            .tempdir()
            .unwrap()
            .keep();
        let args = configure(&dir);
        // setsid gives the server a process group of its own, so that the
        // reaper kills it and everything it forked (swift's workers).
        let script = r#"
            dir="$1"; shift
            cd "$dir" || exit 1
            setsid "$@" >>"$dir/server.log" 2>&1 </dev/null &
            pid=$!
            read -r _ || true
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            kill -KILL -- "-$pid" 2>/dev/null
            rm -rf "$dir"
        "#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("reaper")
            .arg(&dir)
            .arg(program)
            .args(&args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", program.display()));
        let stdin = child.stdin.take().unwrap();
        ServerProcess {
            name: name.to_string(),
            dir,
            reaper: Mutex::new((child, stdin)),
        }
    }

    /// Waits until the server accepts TCP connections on `port`, failing the
    /// test with the server's log if it dies or does not listen in time.
    pub fn wait_for_port(&self, port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.reaper.lock().unwrap().0.try_wait() {
                panic!(
                    "{} exited ({status}) before listening:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on 127.0.0.1:{port} within {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server now and waits until it is gone (tests of "the store
    /// went away").
    pub fn stop(&self) {
        let mut guard = self.reaper.lock().unwrap();
        let (child, stdin) = &mut *guard;
        let _ = stdin.write_all(b"stop\n");
        let _ = stdin.flush();
        let _ = child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
