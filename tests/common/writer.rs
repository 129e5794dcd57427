//! A process that writes a file on a volume step by step, for tests.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// A process that writes a file on the volume step by step, as told on its
/// standard input, answering `ok` or the errno of what failed: an application
/// of its own, which the test can leave mid-write or kill.
pub struct Writer {
    child: Child,
    answers: BufReader<ChildStdout>,
}

const WRITER: &str = r#"
import os, sys
source = open(sys.argv[1], "rb")
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for line in sys.stdin:
    word = line.split()
    try:
        if word[0] == "write":
            data = source.read(int(word[1]))
            while data:
                data = data[os.write(fd, data):]
        else:
            os.close(fd)
        print("ok", flush=True)
    except OSError as e:
        print(e.errno, flush=True)
"#;

impl Writer {
    /// Opens `target` for writing; its content comes from `data`.
    pub fn start(data: &[u8], target: &Path) -> (Writer, tempfile::NamedTempFile) {
        let source = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(source.path(), data).unwrap();
        let mut child = Command::new("python3")
            .args(["-c", WRITER])
            .arg(source.path())
            .arg(target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let answers = BufReader::new(child.stdout.take().unwrap());
        (Writer { child, answers }, source)
    }

    /// `write N` (the next N bytes of the data) or `close`: Ok, or the errno.
    pub fn step(&mut self, command: &str) -> Result<(), i32> {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        let mut answer = String::new();
        self.answers.read_line(&mut answer).unwrap();
        match answer.trim() {
            "ok" => Ok(()),
            errno => Err(errno
                .parse()
                .unwrap_or_else(|_| panic!("writer said {answer:?}"))),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
