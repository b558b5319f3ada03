//! `docker-build = <context dir>` against the real daemon: the first start builds and serves; a touch with the
//! context unchanged builds nothing and runs the same image; a one-file change rebuilds on cached layers and the new
//! container takes over under a request loop with no failed request, the old tag pruned once it serves; a broken
//! Dockerfile is one error and the old container keeps serving; a symlink in the context pointing out of it is
//! archived as a symlink, never followed (the file it points to is nowhere in the image). In tyrant mode a context
//! outside the policy's `build-root` is refused, and a file in the context its owner could not read fails the build
//! with one error naming it, until it is the owner's.
//!
//! The build context holds the static testapp and a `version.txt` on top of `emperor-test/busybox`; the vassal
//! runs `testapp --name <version>`, so each answer says which build serves it. Every image the emperor builds here
//! carries the test's `--docker-label`s, and an [`ImageSweep`] removes them even when the test fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::docker::{DockerSweep, docker, docker_ok, inspect, remove_with_labels, unique_name};
use crate::util::{Harness, LONG, http_get_unix, testapp, touch};

/// A build on this 2-core machine, busy with other tests: a few steps of a few seconds each.
const BUILD: Duration = Duration::from_secs(120);

/// Removes (force) every image carrying the test's case label on drop, also when the test fails: what the
/// emperor built for the test (its `--docker-label`s go on built images too). The test's containers go first (a
/// container's image cannot be removed), so it is declared after the [`DockerSweep`] and dropped before it.
struct ImageSweep(String);

impl ImageSweep {
    fn images(&self) -> Vec<String> {
        match docker(&["images", "-q", "--no-trunc", "--filter", &format!("label={}", self.0)]) {
            Ok(o) if o.success => o.stdout.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for ImageSweep {
    fn drop(&mut self) {
        remove_with_labels(&[&self.0]);
        let mut ids = self.images();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let mut rm = vec!["rmi", "-f"];
        rm.extend(ids.iter().map(String::as_str));
        if let Ok(o) = docker(&rm)
            && !o.success
        {
            eprintln!("image sweep: {}", o.stderr.trim());
        }
    }
}

const DOCKERFILE: &str =
    "FROM emperor-test/busybox\nCOPY testapp /testapp\nCOPY version.txt /version.txt\nCOPY data /data/\n";

/// The context: Dockerfile, testapp, version.txt, data/ with a symlink to a file outside the context, and an
/// ignored log file.
fn context(h: &Harness, secret: &Path) -> PathBuf {
    let ctx = h.root.join("app");
    fs::create_dir_all(ctx.join("data")).unwrap();
    fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::copy(testapp(), ctx.join("testapp")).unwrap();
    fs::write(ctx.join("version.txt"), "v1").unwrap();
    fs::write(ctx.join("data/readme"), "inside\n").unwrap();
    std::os::unix::fs::symlink(secret, ctx.join("data/secret")).unwrap();
    fs::write(ctx.join(".dockerignore"), "*.log\n").unwrap();
    fs::write(ctx.join("debug.log"), "ignored\n").unwrap();
    ctx
}

/// The body of one answer, or why there was none.
type Answer = Result<String, String>;

/// One client sending requests one after another until stopped (at most `limit` long).
struct Loop {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Loop {
    fn start(sock: &Path, limit: Duration) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (s, a, sock) = (stop.clone(), answers.clone(), sock.to_path_buf());
        let thread = thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::SeqCst) && t0.elapsed() < limit {
                let got = http_get_unix(&sock, Duration::from_secs(30)).map_err(|e| e.to_string());
                a.lock().unwrap().push(got);
            }
        });
        Loop {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    fn last(&self) -> Option<Answer> {
        self.answers.lock().unwrap().last().cloned()
    }

    fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The image id of the running container named `container`.
fn image_of(container: &str) -> String {
    inspect(container, "{{.Image}}").unwrap_or_default()
}

/// `emperor/<name>:<16 hex>` from the emperor's `building <tag>`, `built <tag>` or `image <tag> exists` lines
/// for `file` (not the daemon's own `Successfully tagged` line).
fn tags_in(out: &str, file: &str) -> Vec<String> {
    let prefix = format!("[{file}] build: ");
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| ["building ", "built ", "context "].iter().any(|p| l.starts_with(p)))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("emperor/"))
                .map(String::from)
        })
        .collect()
}

fn image_exists(tag: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", tag]).is_ok_and(|o| o.success)
}

#[test]
fn a_context_dir_is_built_reused_rebuilt_and_pruned_and_a_broken_build_changes_nothing() {
    let sweep = DockerSweep::new();
    let images = ImageSweep(sweep.case_label().to_string());
    let mut h = Harness::new("docker_build");
    let name = unique_name("build");
    let file = format!("{name}.ini");
    let secret_marker = format!("secret-{}-{}", std::process::id(), crate::util::now_ns());
    let outside = h.root.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret.txt");
    fs::write(&secret, &secret_marker).unwrap();
    let ctx = context(&h, &secret);
    fs::create_dir_all(h.root.join("rec")).unwrap();
    let sock = h.sock(&format!("{name}.sock"));
    h.write_vassal(
        &file,
        &format!(
            "[emperor]\ndocker-build = {ctx}\ndocker-network-mode = none\nsocket = {sock}\ndocker-mount = {rec}:/rec\n\
             exec = /bin/sh -c 'exec /testapp --name \"$(cat /version.txt)\" --record /rec/{name}.rec'\n",
            ctx = ctx.display(),
            sock = sock.display(),
            rec = h.root.join("rec").display(),
        ),
    );
    let mut args = sweep.emperor_args();
    args.extend(["--reload-mercy", "5"].map(String::from));
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // 1. The first start builds, then serves from the built image.
    h.wait_starts(&name, 1, BUILD);
    let r = h.wait_http_unix(&sock, LONG);
    h.check(r.contains("hello from v1"), format!("the first build serves: {r:?}"));
    let out = h.stdout();
    // Steps 1-4 are the Dockerfile's; the classic builder adds one step per image label after them.
    let step = |n: usize, what: &str| {
        out.lines()
            .any(|l| l.starts_with(&format!("[{file}] build step {n}/")) && l.ends_with(&format!(": {what}")))
    };
    h.check(
        step(1, "FROM emperor-test/busybox") && step(4, "COPY data /data/"),
        "progress lines `build step N/M: ...` in the vassal's output",
    );
    let first = tags_in(&out, &file);
    h.check(
        first.len() == 2,
        format!("one `building` and one `built` line: {first:?}"),
    );
    let v1 = first[0].clone();
    h.check(
        v1.starts_with(&format!("emperor/{file}:")) && v1.len() == format!("emperor/{file}:").len() + 16,
        format!("tag emperor/<vassal>:<hash>: {v1}"),
    );
    let v1_id = image_of(&file);
    let labels = docker_ok(&["image", "inspect", "--format", "{{json .Config.Labels}}", &v1]);
    for want in [
        format!("\"emperor.build\":\"vassal={file} instance="),
        " context=".into(),
    ] {
        h.check(labels.contains(&want), format!("image label {want}: {labels}"));
    }

    // 2. The symlink to a file outside the context is in the image as a symlink; what it points to is nowhere in it.
    let run = |cmd: &str| {
        let mut a: Vec<String> = vec!["run".into(), "--rm".into(), "--network".into(), "none".into()];
        a.extend(sweep.run_args());
        a.extend([v1.clone(), "/bin/sh".into(), "-c".into(), cmd.into()]);
        docker(&a.iter().map(String::as_str).collect::<Vec<_>>()).expect("docker run")
    };
    let link = run("readlink /data/secret; cat /data/secret; cat /data/readme");
    h.check(
        link.stdout.starts_with(&format!("{}\n", secret.display()))
            && link.stdout.contains("inside")
            && !link.stdout.contains(&secret_marker),
        format!("data/secret is a symlink in the image, not followed: {link:?}"),
    );
    let saved = h.root.join("image.tar");
    docker_ok(&["save", "-o", &saved.to_string_lossy(), &v1]);
    let bytes = fs::read(&saved).unwrap();
    h.check(
        !bytes
            .windows(secret_marker.len())
            .any(|w| w == secret_marker.as_bytes()),
        "the secret's content is nowhere in the saved image",
    );
    fs::remove_file(&saved).unwrap();

    // 3. A touch with an unchanged context (new mtimes, an ignored file changed): no build, same image, new container.
    touch(ctx.join("version.txt"));
    fs::write(ctx.join("debug.log"), "changed, still ignored\n").unwrap();
    let out_at = h.stdout().len();
    h.touch_vassal(&file);
    h.wait_starts(&name, 2, LONG);
    h.wait_for(
        || image_of(&file) == v1_id,
        LONG,
        "the new container to hold the vassal's name",
    );
    let since = h.stdout()[out_at..].to_string();
    h.check(
        since.contains(&format!("image {v1} exists")) && since.contains("no build") && !since.contains("build step"),
        format!("an unchanged context says so and builds nothing: {since}"),
    );

    // 4. One file changed: a rebuild on cached layers; the new container takes over under a request loop with no
    //    failed request; the old tag goes once the new container serves alone.
    let load = Loop::start(&sock, Duration::from_secs(180));
    h.wait_for(
        || load.last().is_some_and(|a| a.is_ok()),
        LONG,
        "the request loop to be answered",
    );
    fs::write(ctx.join("version.txt"), "v2").unwrap();
    let out_at = h.stdout().len();
    h.touch_vassal(&file);
    h.wait_for(
        || {
            load.last()
                .is_some_and(|a| a.is_ok_and(|b| b.contains("hello from v2")))
        },
        BUILD,
        "v2 to answer",
    );
    let answers = load.finish();
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    h.check(
        failed.is_empty() && answers.len() > 10,
        format!("{} requests, failed: {failed:?}", answers.len()),
    );
    let since = h.stdout()[out_at..].to_string();
    h.check(
        since.contains(": COPY testapp /testapp") && since.contains("Using cache"),
        format!("the unchanged layers come from the cache: {since}"),
    );
    let v2 = tags_in(&since, &file).pop().unwrap_or_default();
    h.check(v2 != v1 && !v2.is_empty(), format!("a new tag {v2} beside {v1}"));
    h.wait_for(|| !image_exists(&v1), LONG, "the old tag to be pruned");
    h.wait_log(&format!("removed the older image {v1}"), LONG);
    h.check(image_exists(&v2), "the new tag stays");
    let v2_container = inspect(&file, "{{.Id}}").unwrap_or_default();

    // 5. A broken Dockerfile: one clear error (file, step, the daemon's words); the running container keeps serving.
    fs::write(
        ctx.join("Dockerfile"),
        format!("{DOCKERFILE}COPY missing.txt /missing.txt\n"),
    )
    .unwrap();
    let err_at = h.stderr().len();
    h.touch_vassal(&file);
    let dockerfile = ctx.join("Dockerfile");
    let needle = format!("build failed: {} step 5/", dockerfile.display());
    h.wait_for(|| h.stderr()[err_at..].contains(&needle), BUILD, "the build's error");
    let errors: Vec<String> = h.stderr()[err_at..]
        .lines()
        .filter(|l| l.contains("build failed"))
        .map(String::from)
        .collect();
    h.check(
        errors.len() == 1
            && errors[0].contains(&format!("{file}:2: [emperor] docker-build"))
            && errors[0].contains(" (COPY missing.txt /missing.txt): ")
            && errors[0].contains("COPY failed"),
        format!("one error naming the vassal file, the Dockerfile, the step and the daemon's message: {errors:?}"),
    );
    h.wait_vlog_after(err_at, &file, "keeping the current instance", LONG);
    let r = http_get_unix(&sock, LONG).unwrap_or_default();
    h.check(
        r.contains("hello from v2") && inspect(&file, "{{.Id}}").as_deref() == Some(v2_container.as_str()),
        format!("the old container keeps serving: {r:?}"),
    );
    h.check(h.starts(&name).len() == 3, "nothing was started for the broken build");

    // 6. Fixed again: the context is v2's once more, so the next touch builds nothing and starts from v2's image.
    fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    let out_at = h.stdout().len();
    h.touch_vassal(&file);
    h.wait_starts(&name, 4, LONG);
    h.check(
        h.stdout()[out_at..].contains(&format!("image {v2} exists")),
        "the next touch retries, and finds v2's image",
    );

    // 7. Deleting the vassal file stops it and removes its images.
    h.remove_vassal(&file);
    h.wait_for(|| !image_exists(&v2), LONG, "the vassal's images to go with its file");
    drop(h);
    let left = images.images();
    assert!(left.is_empty(), "images the emperor left behind: {left:?}");
}

#[test]
fn a_tenants_build_needs_a_build_root_and_reads_only_what_its_owner_could_read() {
    let (uid, gid) = crate::util::ensure_user(super::tyrant::TENANT_A);
    let sweep = DockerSweep::new();
    let _images = ImageSweep(sweep.case_label().to_string());
    let mut h = super::tyrant::tenant_harness("docker_build_tenant");
    let name = unique_name("tbuild");
    let file = format!("{name}.ini");
    // The tenant's tree: /<root>/tenants/<user>/app, the tenant's own, with one root-only file in it.
    let home = h.root.join("tenants").join(super::tyrant::TENANT_A);
    let ctx = home.join("app");
    fs::create_dir_all(&ctx).unwrap();
    fs::set_permissions(h.root.join("tenants"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    fs::copy(testapp(), ctx.join("testapp")).unwrap();
    for p in [
        home.as_path(),
        ctx.as_path(),
        &ctx.join("Dockerfile"),
        &ctx.join("testapp"),
    ] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    let secret = ctx.join("root-only.txt");
    fs::write(&secret, "root only\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let policy = h.root.join("policy.ini");
    fs::write(
        &policy,
        format!("[policy]\nbuild-root = {}/tenants/%U\n", h.root.display()),
    )
    .unwrap();
    let sock = h.root.join("run").join(format!("{name}.sock"));
    let vassal = |dir: &Path| {
        format!(
            "[emperor]\ndocker-build = {}\nsocket = {}\nexec = /testapp --name {name}\n",
            dir.display(),
            sock.display()
        )
    };
    crate::util::write_owned(&h.vassal(&file), &vassal(&ctx), uid, gid);
    // A context outside the tenant's build root: refused by the policy before anything is read.
    crate::util::write_owned(&h.vassal("outside.ini"), &vassal(&h.root.join("elsewhere")), uid, gid);
    let mut args = sweep.emperor_args();
    args.extend(["--emperor-tyrant", "--emperor-policy"].map(String::from));
    args.push(policy.display().to_string());
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    h.wait_log("outside.ini:2: [emperor] docker-build", LONG);
    h.check(
        h.log_lines("outside.ini:2: [emperor] docker-build")[0].contains("refused by")
            && h.log_lines("outside.ini:2: [emperor] docker-build")[0].contains("build-root ="),
        "a context outside the build root is refused by the policy's rule",
    );
    let denied = format!("{}: the vassal's owner may not read it", secret.display());
    h.wait_log(&denied, BUILD);
    h.check(
        h.log_lines(&denied).len() == 1 && sweep.containers().is_empty(),
        "one error naming the file the owner may not read, and nothing started",
    );

    // Readable by its owner once it is the owner's: the next touch builds, and the container runs as the owner.
    std::os::unix::fs::chown(&secret, Some(uid), Some(gid)).unwrap();
    h.touch_vassal(&file);
    let r = h.wait_http_unix(&sock, BUILD);
    h.check(
        r.contains(&format!("hello from {name}")),
        format!("the tenant's build serves: {r:?}"),
    );
    h.check(
        inspect(&file, "{{.Config.User}}").as_deref() == Some(format!("{uid}:{gid}").as_str()),
        "the container runs as the file's owner",
    );
}
