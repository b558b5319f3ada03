//! `emperor pack --tag T [--add PATH]... [--mkdir DIR]... BINARY [ARGS]`: a `FROM scratch` image holding one
//! program, what the dynamic loader maps for it, and the files named, each at its host path.
//!
//! The point is the smallest image that runs a program already installed and configured on the host
//! (Debian's nginx: about 6 MB instead of a 100 MB distribution), built offline from the host's own
//! files, so that a Docker vassal costs what its program needs and nothing else. The steps:
//! 1. the tree ([`rootfs`]): BINARY and every `--add`, resolved as the kernel does, symlinks kept;
//! 2. the libraries ([`elf`]): every ELF file of the tree that needs the loader (BINARY, and modules or
//!    plugins brought by `--add`) is listed by its own loader in trace mode, and what it maps is added
//!    with the loader; a library the loader cannot find is an error at pack time rather than at start;
//! 3. what every image gets unless `--add` brought its own: `/etc/passwd` and `/etc/group` with root
//!    and nobody (Debian's nginx runs its workers as `nobody:nogroup` by default), an empty `/tmp`
//!    (1777), and the host's `/etc/ld.so.cache` when a loader is packed, so that libraries found through
//!    `ld.so.conf` are found again in the container; `--mkdir` directories, empty and root's;
//! 4. the image ([`import`]): the tree streamed to the daemon as `docker import`, with BINARY and ARGS
//!    as its `CMD`.
//!
//! What a program opens by name at run time (nginx's `load_module`, `dlopen`ed plugins, its config,
//! `mime.types`, document roots, temp directories) is not visible in its headers: it is the user's to
//! name with `--add` and `--mkdir` (README, "emperor pack", lists nginx's).

mod archive;
mod elf;
mod import;
mod rootfs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rootfs::{Kind, Rootfs};

/// `/etc/passwd` of a packed image.
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
/// `/etc/group`: Debian names group 65534 `nogroup`, Red Hat `nobody`; programs built on either find theirs.
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n";
/// Where glibc's loader reads its cache of `ld.so.conf` directories.
const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// `emperor pack`'s command line.
#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// The image's name, as `docker build -t` takes it (`name[:tag]`, lower case).
    #[arg(long, value_name = "NAME[:TAG]", value_parser = parse_tag)]
    pub tag: String,
    /// A file or directory (with everything under it) to put in the image at the same path. Symlinks are
    /// kept and their targets added; ELF files among them bring their libraries. Repeatable.
    #[arg(long, value_name = "PATH")]
    pub add: Vec<PathBuf>,
    /// An empty directory in the image (root's, mode 755; missing parents too). Repeatable.
    #[arg(long, value_name = "DIR")]
    pub mkdir: Vec<PathBuf>,
    /// A `KEY=VALUE` label on the image (besides `emperor.pack.binary`, which names BINARY). Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::cli::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Print what the image would hold, one path per line, and make no image.
    #[arg(long)]
    pub dry_run: bool,
    /// The Docker daemon's socket (default: `DOCKER_HOST`, else /var/run/docker.sock).
    #[arg(long, value_name = "PATH")]
    pub docker_daemon_socket: Option<PathBuf>,
    /// The program (a path, or a name looked up in PATH): the image's command, with ARGS.
    #[arg(value_name = "BINARY")]
    pub binary: String,
    /// The program's arguments in the image's command.
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `emperor pack`: 0 when the image was made (or listed), 1 on any error.
pub fn main(args: PackArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("pack: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: PackArgs) -> Result<(), String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    let path_var = std::env::var_os("PATH");
    let binary = crate::sys::fork::resolve_program(&args.binary, &cwd, path_var.as_deref())
        .map_err(|e| format!("{}: {e}", args.binary))?;
    let binary = absolute(&binary)?;
    let main_elf = elf::inspect(&binary)?.ok_or_else(|| {
        format!(
            "{} is not an ELF program; to pack a script, give its interpreter as BINARY and the script with --add",
            binary.display()
        )
    })?;
    let mut tree = Rootfs::default();
    tree.add(&binary)?;
    for path in &args.add {
        tree.add(&absolute(path)?).map_err(|e| format!("--add {e}"))?;
    }
    let loaders = add_libraries(&mut tree, main_elf.interp.as_deref())?;
    for dir in &args.mkdir {
        tree.mkdir(&absolute(dir)?, 0o755).map_err(|e| format!("--mkdir {e}"))?;
    }
    add_base(&mut tree, !loaders.is_empty())?;
    for w in &tree.warnings {
        log::warn!("pack: {w}");
    }
    if args.dry_run {
        print!("{}", listing(&tree));
        return Ok(());
    }
    let mut command = vec![binary.to_string_lossy().into_owned()];
    command.extend(args.args.iter().cloned());
    let mut changes = vec![format!("CMD {}", serde_json::Value::from(command))];
    let binary_label = ("emperor.pack.binary".to_string(), binary.to_string_lossy().into_owned());
    for (k, v) in std::iter::once(&binary_label).chain(&args.labels) {
        // Quoted as JSON strings, which the Dockerfile parser reads back as they were.
        changes.push(format!(
            "LABEL {}={}",
            serde_json::Value::from(k.as_str()),
            serde_json::Value::from(v.as_str())
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (id, totals) = runtime.block_on(import::import(
        args.docker_daemon_socket.as_deref(),
        &args.tag,
        changes,
        tree,
    ))?;
    let loaders = loaders.iter().map(|l| l.display().to_string()).collect::<Vec<_>>();
    println!(
        "packed {} ({id}): {} entries, {:.1} MiB of files{}",
        args.tag,
        totals.entries,
        totals.bytes as f64 / (1024.0 * 1024.0),
        if loaders.is_empty() {
            " (static: no loader)".to_string()
        } else {
            format!(", loader {}", loaders.join(", "))
        },
    );
    Ok(())
}

/// `path` made absolute against the working directory, without resolving symlinks (the image mirrors
/// the path as given).
fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Adds what the loader maps for every ELF file of the tree that needs it, until nothing new comes.
/// Returns the loaders used. A shared object has no `PT_INTERP`: it is listed by BINARY's loader (or
/// the first other one met).
fn add_libraries(tree: &mut Rootfs, interp: Option<&Path>) -> Result<Vec<PathBuf>, String> {
    let mut loaders: Vec<PathBuf> = interp.map(Path::to_path_buf).into_iter().collect();
    let mut checked = std::collections::HashSet::new();
    loop {
        let fresh: Vec<PathBuf> = tree
            .host_files()
            .filter(|p| !checked.contains(*p))
            .map(Path::to_path_buf)
            .collect();
        if fresh.is_empty() {
            return Ok(loaders);
        }
        let mut todo = Vec::new();
        for file in fresh {
            checked.insert(file.clone());
            if let Some(elf) = elf::inspect(&file)?.filter(elf::Elf::is_dynamic) {
                if let Some(l) = &elf.interp
                    && !loaders.contains(l)
                {
                    loaders.push(l.clone());
                }
                todo.push((file, elf));
            }
        }
        for (file, elf) in todo {
            let loader = elf.interp.as_ref().or(loaders.first()).ok_or_else(|| {
                format!(
                    "{}: a shared library, and no packed program names a loader to list its libraries",
                    file.display()
                )
            })?;
            for lib in elf::trace(loader, &file)? {
                let at = tree
                    .add(&lib)
                    .map_err(|e| format!("{}'s library {e}", file.display()))?;
                // The loader listed the whole closure: no need to list each library again.
                checked.insert(at);
            }
            tree.add(loader)
                .map_err(|e| format!("{}'s loader {e}", file.display()))?;
        }
    }
}

/// `/etc/passwd`, `/etc/group`, `/tmp` and, with a loader, `/etc/ld.so.cache`, unless already there.
fn add_base(tree: &mut Rootfs, with_loader: bool) -> Result<(), String> {
    if with_loader && !tree.entries.contains_key(Path::new(LD_SO_CACHE)) && Path::new(LD_SO_CACHE).is_file() {
        tree.add(Path::new(LD_SO_CACHE))?;
    }
    tree.put(Path::new("/etc/passwd"), PASSWD.into(), 0o644)?;
    tree.put(Path::new("/etc/group"), GROUP.into(), 0o644)?;
    if !tree.entries.contains_key(Path::new("/tmp")) {
        tree.mkdir(Path::new("/tmp"), 0o1777)?;
    }
    Ok(())
}

/// `--dry-run`'s output: `<type> <mode> <uid>:<gid> <size> <path>[ -> <target>]` per entry.
fn listing(tree: &Rootfs) -> String {
    let mut out = String::new();
    for (path, e) in &tree.entries {
        let (t, size, target) = match &e.kind {
            Kind::Dir => ('d', 0, None),
            Kind::File { size } => ('f', *size, None),
            Kind::Data(d) => ('f', d.len() as u64, None),
            Kind::Symlink(t) => ('l', 0, Some(t)),
        };
        out.push_str(&format!(
            "{t} {:04o} {}:{} {size} {}",
            e.mode,
            e.uid,
            e.gid,
            path.display()
        ));
        if let Some(t) = target {
            out.push_str(&format!(" -> {}", t.display()));
        }
        out.push('\n');
    }
    out
}

/// Checks an image name as Docker's reference grammar has it (`[host[:port]/]path[:tag]`), so that a bad
/// one is refused before the files are read rather than by the daemon mid-stream.
fn parse_tag(s: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{s:?} is not an image name: {why}"));
    let (name, tag) = match s.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (s, None),
    };
    if let Some(t) = tag {
        let mut chars = t.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first_ok || t.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return bad("the tag after ':' is 1 to 128 of A-Z a-z 0-9 _ . -, not starting with . or -");
        }
    }
    if name.is_empty() || name.len() > 255 {
        return bad("the name is 1 to 255 characters");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (domain, port) = host.split_once(':').map_or((host, None), |(d, p)| (d, Some(p)));
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if !domain.split('.').all(label_ok)
            || port.is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
        {
            return bad("the registry host before the first '/' is malformed");
        }
    }
    if !parts.iter().all(|p| path_component(p)) {
        return bad("each part between '/' is lower-case letters and digits, joined by '.', '_', '__' or dashes");
    }
    Ok(s.to_string())
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn path_component(p: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    p.starts_with(alnum)
        && p.ends_with(alnum)
        && p.split(alnum)
            .filter(|sep| !sep.is_empty())
            .all(|sep| matches!(sep, "." | "_" | "__") || sep.chars().all(|c| c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        for ok in [
            "nano-nginx",
            "emperor-test/nginx:1.22",
            "localhost:5000/a/b_c:x",
            "a__b",
            "a--b.c",
            "x:_t",
            "a/b-1",
        ] {
            assert_eq!(parse_tag(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "",
            "Nginx",
            "a:",
            "a:.x",
            "-a",
            "a-",
            "a_.b",
            "a//b",
            "a b",
            "host:x/a",
            "a:b/c",
            &"x".repeat(256),
        ] {
            assert!(parse_tag(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_command_line() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "emperor",
            "pack",
            "--tag",
            "t",
            "--add",
            "/etc/nginx",
            "--mkdir",
            "/run",
            "/usr/sbin/nginx",
            "-g",
            "daemon off;",
            "--add",
            "x",
        ])
        .unwrap();
        let Some(crate::cli::Role::Pack(a)) = cli.role else {
            panic!("not pack: {cli:?}")
        };
        assert_eq!(a.binary, "/usr/sbin/nginx");
        // After BINARY everything is its arguments, also what looks like pack's own options.
        assert_eq!(a.args, ["-g", "daemon off;", "--add", "x"]);
        assert_eq!(
            (a.add, a.mkdir),
            (vec![PathBuf::from("/etc/nginx")], vec![PathBuf::from("/run")])
        );
        assert!(
            crate::cli::Cli::try_parse_from(["emperor", "pack", "/bin/true"]).is_err(),
            "--tag is required"
        );
        assert!(
            crate::cli::Cli::try_parse_from(["emperor", "./pack"])
                .unwrap()
                .role
                .is_none()
        );
    }
}
