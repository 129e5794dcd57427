//! The manual pages and shell completions the package installs, generated from
//! the command line's own definitions so they never disagree with `--help`:
//! `s3vol(8)`, one page per command (`s3vol-mount(8)`, ...), `mount.s3vol(8)`,
//! and completions for bash and zsh. `s3vol generate-assets DIR` (hidden)
//! writes them; `scripts/package.sh` runs it.

use std::path::Path;

use clap::{Arg, ArgAction, CommandFactory};

use super::Cli;
use super::helper::USAGE;

/// Writes `DIR/man/*.8` and `DIR/completions/{s3vol.bash,_s3vol}`.
pub fn generate(dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cli = Cli::command();
    cli.build();
    page(&man, "s3vol", cli.clone())?;
    let documented = |c: &&clap::Command| !c.is_hide_set() && c.get_name() != "help";
    for command in cli.get_subcommands().filter(documented) {
        let name = format!("s3vol-{}", command.get_name());
        page(&man, &name, command.clone().name(name.clone()))?;
    }
    page(&man, "mount.s3vol", helper_command())?;
    let mut bash = std::fs::File::create(completions.join("s3vol.bash"))?;
    clap_complete::generate(clap_complete::Shell::Bash, &mut cli, "s3vol", &mut bash);
    let mut zsh = std::fs::File::create(completions.join("_s3vol"))?;
    clap_complete::generate(clap_complete::Shell::Zsh, &mut cli, "s3vol", &mut zsh);
    Ok(())
}

/// `command`'s page in section 8 (system administration), as `DIR/NAME.8`.
fn page(dir: &Path, name: &str, command: clap::Command) -> std::io::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .title(name.to_uppercase())
        .section("8")
        .source(format!("s3vol {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration")
        .render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.8")), out)
}

/// `mount.s3vol` as mount(8) runs it: not a clap parser of its own
/// (`helper::parse_args` reads mount(8)'s line), so described here.
fn helper_command() -> clap::Command {
    let flag = |short: char, help: &'static str| {
        Arg::new(short.to_string())
            .short(short)
            .action(ArgAction::SetTrue)
            .help(help)
    };
    clap::Command::new("mount.s3vol")
        .about("Mount an s3vol volume for mount(8) and /etc/fstab")
        .long_about(
            "mount(8) runs this helper for `mount -t s3vol` and for /etc/fstab lines of type \
             s3vol (installed as mount.fuse.s3vol, of type fuse.s3vol). It mounts the volume as \
             `s3vol mount` does and returns once it serves.",
        )
        .override_usage(USAGE.trim_start_matches("usage: "))
        .arg(
            Arg::new("source")
                .value_name("BUCKET[/PREFIX]")
                .required(true)
                .help("The bucket and the prefix to attach (s3://BUCKET/PREFIX/ also works)"),
        )
        .arg(
            Arg::new("mountpoint")
                .value_name("MOUNTPOINT")
                .required(true)
                .help("The directory to attach it to"),
        )
        .arg(
            Arg::new("options")
                .short('o')
                .value_name("OPTIONS")
                .help(
                    "Comma-separated options: every long option of s3vol mount, `--name VALUE` \
                     written name=VALUE and `--flag` written flag; ro and rw; and the options \
                     mount(8) and systemd add (defaults, _netdev, nofail, x-systemd.*, ...), \
                     which s3vol ignores",
                ),
        )
        .arg(flag('s', "Tolerate options s3vol does not know (sloppy)"))
        .arg(flag('f', "Check everything, mount nothing (fake)"))
        .arg(flag('n', "Do not write /etc/mtab (s3vol never does)"))
        .arg(flag('v', "Say what is being run"))
        .arg(
            Arg::new("namespace")
                .short('N')
                .value_name("NAMESPACE")
                .help("Mount in this mount namespace (a PID or a namespace file)"),
        )
        .arg(
            Arg::new("type")
                .short('t')
                .value_name("TYPE")
                .help("s3vol or fuse.s3vol"),
        )
        .after_long_help(
            "An /etc/fstab line that attaches a prefix read-write at boot, once the network is \
             up:\n\n    my-bucket/data  /mnt/data  s3vol  _netdev,nofail,rw,region=eu-west-1  0 0\n\n\
             See s3vol-mount(8) for every option, and /usr/share/doc/s3vol/DEPLOY.md.",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_its_page_and_both_shells_their_completions() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(dir.path().join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        for wanted in [
            "s3vol.8",
            "s3vol-mount.8",
            "s3vol-csi.8",
            "s3vol-stats.8",
            "mount.s3vol.8",
        ] {
            assert!(pages.iter().any(|p| p == wanted), "{wanted}: {pages:?}");
        }
        assert!(
            !pages
                .iter()
                .any(|p| p.contains("generate") || p.contains("help")),
            "hidden: {pages:?}"
        );
        let mount = std::fs::read_to_string(dir.path().join("man/s3vol-mount.8")).unwrap();
        assert!(
            mount.contains("metrics\\-listen"),
            "the options are the parser's"
        );
        let helper = std::fs::read_to_string(dir.path().join("man/mount.s3vol.8")).unwrap();
        assert!(helper.contains("fstab"), "{helper}");
        let bash = std::fs::read_to_string(dir.path().join("completions/s3vol.bash")).unwrap();
        assert!(
            bash.contains("--metrics-listen"),
            "bash completes the options"
        );
        let zsh = std::fs::read_to_string(dir.path().join("completions/_s3vol")).unwrap();
        assert!(zsh.starts_with("#compdef s3vol"), "{}", &zsh[..40]);
    }
}
