//! Keeps the external ID out of `ps`: an external ID given on the command line
//! (`--external-id ID`, `--external-id=ID`, or `external_id=ID` in an `-o` list,
//! as mount(8) passes an fstab line's options to `mount.s3vol`) is overwritten
//! in the process's own argument memory, which is what /proc/PID/cmdline shows,
//! as soon as the program starts and before the daemon is forked (the daemon
//! shares that memory's contents). Only the value is overwritten, with `*`; the
//! option's name stays, so `ps` still shows how the volume was mounted.

use std::ffi::OsString;

/// The option names that carry an external ID, as the command line and `-o`
/// lists may spell them.
const NAMES: [&str; 2] = ["external-id", "external_id"];

/// Overwrites the external IDs in this process's argument memory. An error
/// means the memory could not be found; the caller then refuses inline external
/// IDs.
pub fn scrub_external_ids(args: &[OsString]) -> Result<(), String> {
    let inline = args.iter().any(|arg| {
        let arg = arg.to_string_lossy();
        flag(arg.as_bytes()) || !secret_values(arg.as_bytes()).is_empty()
    });
    if !inline {
        return Ok(());
    }
    let (start, end) = argument_memory().map_err(|why| {
        format!(
            "cannot hide the external ID from other users' `ps` ({why}); give it in a \
             file instead: --external-id-file (external_id_file= in an fstab line)"
        )
    })?;
    // SAFETY: [start, end) is this process's argument area as the kernel reports
    // it (/proc/self/stat, arg_start and arg_end): memory on the initial stack,
    // mapped readable and writable for the process's life, that holds the
    // NUL-terminated arguments. Nothing else in the program refers to it now:
    // `args` is a copy. Bytes are only replaced in place, never the NULs, so
    // every argument keeps its length and the area its layout.
    let memory = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    scrub(memory);
    Ok(())
}

/// Whether an argument is the external ID option whose value is the next one.
fn flag(arg: &[u8]) -> bool {
    NAMES.iter().any(|n| arg == format!("--{n}").as_bytes())
}

/// Replaces the values of external ID options in NUL-separated arguments.
fn scrub(memory: &mut [u8]) {
    let mut secret_next = false;
    let mut at = 0;
    while at < memory.len() {
        let len = memory[at..]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(memory.len() - at);
        let arg = &mut memory[at..at + len];
        if secret_next {
            arg.fill(b'*');
            secret_next = false;
        } else if flag(arg) {
            secret_next = true;
        } else {
            for span in secret_values(arg) {
                arg[span].fill(b'*');
            }
        }
        at += len + 1;
    }
}

/// Where the values of `external-id=` and `external_id=` lie in one argument:
/// from after the `=` to the end of that option in an `-o` list, which is the
/// first comma that is neither quoted nor escaped (or the end).
fn secret_values(arg: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    for name in NAMES {
        let pattern = format!("{name}=");
        let mut from = 0;
        while let Some(found) = find(&arg[from..], pattern.as_bytes()) {
            let start = from + found + pattern.len();
            let (mut end, mut quoted, mut escaped) = (start, false, false);
            while end < arg.len() {
                match arg[end] {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => quoted = !quoted,
                    b',' if !quoted => break,
                    _ => {}
                }
                end += 1;
            }
            spans.push(start..end);
            from = end;
        }
    }
    spans
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// arg_start and arg_end of this process, from /proc/self/stat (fields 48 and
/// 49; the command name before them may hold spaces, so fields are counted
/// from its closing parenthesis).
fn argument_memory() -> Result<(usize, usize), String> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| format!("cannot read /proc/self/stat: {e}"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // The first field after the name is field 3.
    let field = |n: usize| -> Option<usize> { fields.get(n - 3)?.parse().ok() };
    match (field(48), field(49)) {
        (Some(start), Some(end)) if start < end => Ok((start, end)),
        _ => Err("/proc/self/stat does not show where the arguments are".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(args: &[&str]) -> Vec<String> {
        let mut memory: Vec<u8> = args.join("\0").into_bytes();
        memory.push(0);
        scrub(&mut memory);
        let text = String::from_utf8(memory).unwrap();
        text.trim_end_matches('\0')
            .split('\0')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn external_ids_are_starred_however_they_were_given() {
        assert_eq!(
            scrubbed(&[
                "s3vol",
                "mount",
                "b",
                "/m",
                "--external-id",
                "abc123",
                "--x"
            ]),
            [
                "s3vol",
                "mount",
                "b",
                "/m",
                "--external-id",
                "******",
                "--x"
            ]
        );
        assert_eq!(
            scrubbed(&["s3vol", "--external-id=abc123", "--region=x"]),
            ["s3vol", "--external-id=******", "--region=x"]
        );
        assert_eq!(
            scrubbed(&[
                "mount.s3vol",
                "b",
                "/m",
                "-o",
                r#"rw,external_id="a,b",region=x,external-id=c\,d"#
            ]),
            [
                "mount.s3vol",
                "b",
                "/m",
                "-o",
                r#"rw,external_id=*****,region=x,external-id=****"#
            ]
        );
        assert_eq!(
            scrubbed(&["mount.s3vol", "-oexternal_id=zz"]),
            ["mount.s3vol", "-oexternal_id=**"]
        );
        // Nothing else changes, the file's path included.
        let plain = [
            "s3vol",
            "--external-id-file",
            "/etc/id",
            "-o",
            "external_id_file=/etc/id,external-id-file=/x",
        ];
        assert_eq!(scrubbed(&plain), plain);
    }

    #[test]
    fn this_process_s_arguments_are_found() {
        let (start, end) = argument_memory().unwrap();
        let len = std::env::args_os().map(|a| a.len() + 1).sum::<usize>();
        assert_eq!(end - start, len);
    }
}
