//! Many official socket.io-client sessions in a node process of their own
//! (tests/js/sessions.mjs), kept open through something a test does to the gateway (a reload,
//! an upgrade), then asked what each one heard.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

/// The node process, once every session is connected and in its room.
pub struct Sessions {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Option<BufReader<ChildStdout>>,
}

impl Sessions {
    /// `per_transport` sessions on each of `modes` ("websocket", "polling" or both
    /// comma-separated), joined to `room`, that wait for `notes` "note" events (a count, or
    /// "stdin": the count is told later with [`Sessions::tell_notes`]). Returns once the
    /// script says it is ready.
    pub async fn start(
        base: &str,
        per_transport: usize,
        room: &str,
        notes: &str,
        modes: &str,
    ) -> Sessions {
        let mut child = Command::new("node")
            .arg(crate::workspace_root().join("tests/js/sessions.mjs"))
            .args([base, &per_transport.to_string(), room, notes, modes])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (ready, out) = read_line(out).await;
        assert!(ready.contains("ready"), "sessions.mjs: {ready}");
        Sessions {
            child,
            stdin,
            out: Some(out),
        }
    }

    /// How many notes the sessions are to wait for (with `notes` = "stdin").
    pub fn tell_notes(&mut self, notes: u64) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{notes}").expect("tell node");
    }

    /// The script's report (see tests/js/sessions.mjs), asserted to be no error.
    pub async fn report(mut self) -> Value {
        let out = self.out.take().expect("read once");
        let (line, _) = read_line(out).await;
        let status = self.child.wait().expect("node exits");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(status.success() && v.get("error").is_none(), "{v}");
        v
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of the script's output, read off the test's runtime threads.
async fn read_line(mut out: BufReader<ChildStdout>) -> (String, BufReader<ChildStdout>) {
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line).expect("a line from node");
        (line, out)
    })
    .await
    .expect("node reader")
}
