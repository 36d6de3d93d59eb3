//! Applications from recipes on a real agent: deploy, configuration, supervision, broken
//! components, rollback, recovery after kill -9, and refusals that change nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::*;

#[test]
fn the_http_example_deploys_and_takes_new_configuration() -> Result<()> {
    let (relay, agent) = apps_setup("board1")?;
    let port = free_port()?;
    let recipe = recipes_dir().join("hello-http/recipe.yaml");
    let artifacts = recipes_dir().join("hello-http");
    let out = app_ok(
        &agent,
        &[
            "deploy",
            path_str(&recipe),
            "--artifacts",
            path_str(&artifacts),
            "--set",
            &format!("port={port}"),
        ],
    )?;
    ensure!(out.contains("com.example.hello-http 1.0.0"), "{out}");
    wait_http(port, "hello from tether")?;
    let s = app_show(&agent, "com.example.hello-http")?;
    ensure!(
        s["state"] == "running" && s["configuration"]["port"] == port && s["pid"].is_i64(),
        "{s}"
    );
    let first_pid = s["pid"].clone();

    // Configuration pushed by a redeploy restarts the service with the new values.
    let port2 = free_port()?;
    app_ok(
        &agent,
        &[
            "deploy",
            path_str(&recipe),
            "--artifacts",
            path_str(&artifacts),
            "--set",
            &format!("port={port2}"),
            "--set",
            "message=bonjour, it's me",
        ],
    )?;
    wait_http(port2, "bonjour, it's me")?;
    ensure!(http_body(port).is_err() || http_body(port)? != "hello from tether");
    let s = app_show(&agent, "com.example.hello-http")?;
    ensure!(s["pid"] != first_pid, "not restarted: {s}");

    let list: serde_json::Value = serde_json::from_str(&app_ok(&agent, &["list", "--json"])?)?;
    ensure!(
        list.as_array().map(Vec::len) == Some(1) && list[0]["state"] == "running",
        "{list}"
    );
    // Its output reaches the relay as log records.
    wait_until(
        Duration::from_secs(20),
        "app log records at the relay",
        || {
            relay
                .admin_ok(&[
                    "telemetry",
                    "tail",
                    "board1",
                    "--topic",
                    "app/com.example.hello-http",
                    "--json",
                ])
                .is_ok_and(|o| o.contains("listening on 127.0.0.1"))
        },
    )?;
    let logs = app_ok(&agent, &["logs", "com.example.hello-http"])?;
    ensure!(
        logs.contains("run/stdout: listening on 127.0.0.1"),
        "{logs}"
    );

    // One vocabulary: stop answers `stopped`, and show says stopped both as state and wish.
    let stopped = app_ok(&agent, &["stop", "com.example.hello-http"])?;
    ensure!(
        stopped.trim() == "com.example.hello-http 1.0.0: stopped",
        "{stopped}"
    );
    ensure!(http_body(port2).is_err(), "still serving after stop");
    let s = app_show(&agent, "com.example.hello-http")?;
    ensure!(s["state"] == "stopped" && s["desired"] == "stopped", "{s}");
    let text = app_ok(&agent, &["show", "com.example.hello-http"])?;
    ensure!(
        text.contains("state:          stopped\n") && text.contains("desired:        stopped\n"),
        "{text}"
    );
    app_ok(&agent, &["remove", "com.example.hello-http"])?;
    let r = app(&agent, &["show", "com.example.hello-http"])?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("no component named"),
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn a_crashing_component_becomes_broken_and_the_next_deployment_succeeds() -> Result<()> {
    let (_relay, agent) = apps_setup("board1")?;
    let dir = tempfile::tempdir()?;
    let good = write_file(
        dir.path(),
        "good.yaml",
        "name: com.example.flaky\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: sleep 600\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&good)])?;
    // Later it starts crashing: a second component that fails only after the settle time.
    let crashing = write_file(
        dir.path(),
        "crash.yaml",
        "name: com.example.crasher\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: sleep 1.5; echo dying >&2; exit 3\n      recover: echo recovering\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&crashing)])?;
    wait_until(Duration::from_secs(30), "crasher broken", || {
        app_show(&agent, "com.example.crasher").is_ok_and(|s| s["state"] == "broken")
    })?;
    let s = app_show(&agent, "com.example.crasher")?;
    ensure!(
        s["errors"] == 3
            && s["restarts"] == 2
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("exited with status 3")),
        "{s}"
    );
    let logs = app_ok(&agent, &["logs", "com.example.crasher"])?;
    ensure!(
        logs.contains("run/stderr: dying") && logs.contains("recover/stdout: recovering"),
        "{logs}"
    );
    // A broken component blocks nothing: the next deployment goes through.
    let v2 = write_file(
        dir.path(),
        "good2.yaml",
        "name: com.example.flaky\nversion: 1.1.0\nmanifests:\n  - lifecycle:\n      run: sleep 600\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&v2)])?;
    let s = app_show(&agent, "com.example.flaky")?;
    ensure!(s["version"] == "1.1.0" && s["state"] == "running", "{s}");
    Ok(())
}

#[test]
fn a_bad_new_version_rolls_back_to_the_previous_one() -> Result<()> {
    let (_relay, agent) = apps_setup("board1")?;
    let dir = tempfile::tempdir()?;
    let v1 = write_file(
        dir.path(),
        "v1.yaml",
        "name: com.example.svc\nversion: 1.0.0\nconfiguration: { n: 1 }\nmanifests:\n  - lifecycle:\n      install: echo installed-1 >> {work:path}/installs\n      run: echo up-{configuration:/n}; exec sleep 600\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&v1)])?;
    let before = app_show(&agent, "com.example.svc")?;
    for (file, text, expect) in [
        (
            "v2-run.yaml",
            "name: com.example.svc\nversion: 2.0.0\nmanifests:\n  - lifecycle:\n      run: echo broken >&2; exit 1\n",
            "exited with status 1",
        ),
        (
            "v2-install.yaml",
            "name: com.example.svc\nversion: 2.0.1\nmanifests:\n  - lifecycle:\n      install: exit 7\n      run: sleep 600\n",
            "install step exited with status 7",
        ),
    ] {
        let v2 = write_file(dir.path(), file, text)?;
        let r = app(&agent, &["deploy", path_str(&v2)])?;
        ensure!(
            r.status == Some(1)
                && r.stderr.contains(expect)
                && r.stderr.contains("rolled back to com.example.svc 1.0.0"),
            "{file}: {:?} {}",
            r.status,
            r.stderr
        );
        // The restored version may still be starting when the deploy answers.
        let mut s = serde_json::Value::Null;
        wait_until(Duration::from_secs(20), "the old version running", || {
            s = app_show(&agent, "com.example.svc").unwrap_or_default();
            s["state"] == "running"
        })
        .with_context(|| format!("{file}: after rollback {s}"))?;
        ensure!(
            s["version"] == "1.0.0" && s["configuration"]["n"] == 1,
            "{file}: after rollback {s}"
        );
        ensure!(s["pid"] != before["pid"], "restarted after rollback");
    }
    // The old version came back without installing again.
    let installs = std::fs::read_to_string(
        agent
            .dir
            .path()
            .join("state/apps/com.example.svc/work/installs"),
    )?;
    ensure!(installs.lines().count() == 1, "installs: {installs:?}");
    Ok(())
}

#[test]
fn components_come_back_after_kill_9_without_reinstalling() -> Result<()> {
    let (_relay, mut agent) = apps_setup("board1")?;
    let dir = tempfile::tempdir()?;
    let recipe = write_file(
        dir.path(),
        "svc.yaml",
        "name: com.example.keeper\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      install: echo once >> {work:path}/installs\n      run: sh -c 'sleep 600 & sleep 600'\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&recipe)])?;
    let pid = app_show(&agent, "com.example.keeper")?["pid"]
        .as_i64()
        .context("pid")?;
    let stopped = write_file(
        dir.path(),
        "stopped.yaml",
        "name: com.example.idle\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: sleep 600\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&stopped)])?;
    app_ok(&agent, &["stop", "com.example.idle"])?;

    agent.kill();
    agent.start()?;
    wait_until(Duration::from_secs(30), "component running again", || {
        app_show(&agent, "com.example.keeper")
            .is_ok_and(|s| s["state"] == "running" && s["pid"].as_i64().is_some_and(|p| p != pid))
    })?;
    // The processes the killed agent left behind were ended, not duplicated.
    // (Zombies do not count: after the agent's death their new parent reaps them when it
    // gets to it.)
    let ps = std::process::Command::new("ps")
        .args(["-eo", "pgid=,stat="])
        .output()?;
    let alive = String::from_utf8_lossy(&ps.stdout).lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some(&pid.to_string()) && f.next().is_some_and(|st| !st.starts_with('Z'))
    });
    ensure!(!alive, "the old process group {pid} is still alive");
    let installs = std::fs::read_to_string(
        agent
            .dir
            .path()
            .join("state/apps/com.example.keeper/work/installs"),
    )?;
    ensure!(
        installs.lines().count() == 1,
        "install ran again: {installs:?}"
    );
    ensure!(
        app_show(&agent, "com.example.idle")?["state"] == "stopped",
        "a stopped component stays stopped"
    );
    Ok(())
}

#[test]
fn dependencies_start_in_order_and_restart_with_their_dependency() -> Result<()> {
    let (_relay, agent) = apps_setup("board1")?;
    let dir = tempfile::tempdir()?;
    let value_file = dir.path().join("value");
    let store = recipes_dir().join("pair/store.yaml");
    let reporter = recipes_dir().join("pair/reporter.yaml");
    // Without its hard dependency the reporter is refused, naming both.
    let r = app(&agent, &["deploy", path_str(&reporter)])?;
    ensure!(
        r.status == Some(1)
            && r.stderr.contains("com.example.pair.reporter")
            && r.stderr.contains("com.example.pair.store"),
        "{}",
        r.stderr
    );
    app_ok(
        &agent,
        &[
            "deploy",
            path_str(&store),
            "--set",
            &format!("file={}", value_file.display()),
        ],
    )?;
    app_ok(&agent, &["deploy", path_str(&reporter)])?;
    wait_until(Duration::from_secs(20), "reporter reads the store", || {
        app_ok(&agent, &["logs", "com.example.pair.reporter"]).is_ok_and(|l| {
            l.lines()
                .any(|l| l.contains("value: ") && !l.contains("none"))
        })
    })?;
    let before = app_show(&agent, "com.example.pair.reporter")?["pid"].clone();
    app_ok(&agent, &["restart", "com.example.pair.store"])?;
    let after = app_show(&agent, "com.example.pair.reporter")?;
    ensure!(
        after["pid"] != before && after["state"] == "running",
        "dependent not restarted: {after}"
    );
    // Removing the store while the reporter needs it is refused.
    let r = app(&agent, &["remove", "com.example.pair.store"])?;
    ensure!(
        r.status == Some(1)
            && r.stderr
                .contains("hard dependency of com.example.pair.reporter"),
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn bad_recipes_and_artifacts_are_refused_and_change_nothing() -> Result<()> {
    let (_relay, agent) = apps_setup("board1")?;
    let dir = tempfile::tempdir()?;
    let good = write_file(
        dir.path(),
        "a.yaml",
        "name: com.example.a\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: sleep 600\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&good)])?;
    let before = app_show(&agent, "com.example.a")?;
    std::fs::write(dir.path().join("payload.bin"), b"the real bytes")?;
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "digest.yaml",
            "name: com.example.a\nversion: 2.0.0\nmanifests:\n  - artifacts:\n      - uri: payload.bin\n        sha256: 0000000000000000000000000000000000000000000000000000000000000000\n    lifecycle:\n      run: sleep 600\n".into(),
            vec!["sha256 mismatch", "payload.bin"],
        ),
        (
            "invalid.yaml",
            "name: com.example.a\nversion: 2.0.0\nmanifests:\n  - lifecycle:\n      run: sleep 600\n      restart_policy: always\n".into(),
            vec!["invalid.yaml", "line 6", "restart_policy"],
        ),
        (
            "self.yaml",
            "name: com.example.b\nversion: 1.0.0\ndependencies:\n  com.example.b:\n    version: '*'\nmanifests:\n  - lifecycle:\n      run: sleep 600\n".into(),
            vec!["self.yaml", "dependencies[com.example.b]", "cannot depend on itself"],
        ),
        (
            "cycle-x.yaml",
            "name: com.example.x\nversion: 1.0.0\ndependencies:\n  com.example.y:\n    version: '*'\nmanifests:\n  - lifecycle:\n      run: sleep 600\n".into(),
            vec!["cycle", "com.example.x", "com.example.y"],
        ),
        (
            "missing.yaml",
            "name: com.example.c\nversion: 1.0.0\ndependencies:\n  com.example.nowhere:\n    version: '>=1.0.0'\nmanifests:\n  - lifecycle:\n      run: sleep 600\n".into(),
            vec!["com.example.c", "com.example.nowhere"],
        ),
        (
            "version.yaml",
            "name: com.example.d\nversion: 1.0.0\ndependencies:\n  com.example.a:\n    version: '>=5.0.0'\nmanifests:\n  - lifecycle:\n      run: sleep 600\n".into(),
            vec!["com.example.a", "5.0.0", "1.0.0"],
        ),
    ];
    // Half of a cycle: y only softly needs x, so it deploys on its own; x then closes the loop.
    let y = write_file(
        dir.path(),
        "cycle-y.yaml",
        "name: com.example.y\nversion: 1.0.0\ndependencies:\n  com.example.x:\n    version: '*'\n    type: soft\nmanifests:\n  - lifecycle:\n      run: sleep 600\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&y)])?;
    for (file, text, expect) in &cases {
        let path = write_file(dir.path(), file, text)?;
        let r = app(
            &agent,
            &[
                "deploy",
                path_str(&path),
                "--artifacts",
                path_str(dir.path()),
            ],
        )?;
        ensure!(r.status == Some(1), "{file} accepted: {}", r.stdout);
        for e in expect {
            if !r.stderr.contains(e) {
                bail!("{file}: error lacks {e:?}: {}", r.stderr);
            }
        }
        let after = app_show(&agent, "com.example.a")?;
        ensure!(
            after["version"] == "1.0.0"
                && after["pid"] == before["pid"]
                && after["state"] == "running",
            "{file} changed the running component: {after}"
        );
    }
    let list: serde_json::Value = serde_json::from_str(&app_ok(&agent, &["list", "--json"])?)?;
    ensure!(list.as_array().map(Vec::len) == Some(2), "{list}");
    // validate reports the same without an agent.
    let r = app(
        &agent,
        &["validate", path_str(&dir.path().join("invalid.yaml"))],
    )?;
    ensure!(
        r.status == Some(1) && r.stderr.contains("restart_policy"),
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn the_periodic_example_ticks_and_shuts_down_cleanly() -> Result<()> {
    let (_relay, agent) = apps_setup("board1")?;
    let recipe = recipes_dir().join("periodic-job/recipe.yaml");
    app_ok(
        &agent,
        &["deploy", path_str(&recipe), "--set", "interval=0.2"],
    )?;
    let ticks = agent
        .dir
        .path()
        .join("state/apps/com.example.periodic-job/work/ticks");
    wait_until(Duration::from_secs(20), "three ticks", || {
        std::fs::read_to_string(&ticks).is_ok_and(|t| t.lines().count() >= 3)
    })?;
    let text = std::fs::read_to_string(&ticks)?;
    let device = agent.device_id()?;
    ensure!(
        text.lines()
            .all(|l| l.starts_with("tick ") && l.ends_with(&format!("on {device}"))),
        "{text}"
    );
    app_ok(&agent, &["stop", "com.example.periodic-job"])?;
    let logs = app_ok(&agent, &["logs", "com.example.periodic-job"])?;
    ensure!(logs.contains("shutdown/stdout: stopping after"), "{logs}");
    Ok(())
}

/// sha256 of a file, by the system's sha256sum.
fn sha256sum(path: &Path) -> Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum failed");
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

#[test]
fn archives_daemons_skip_if_timeouts_and_users() -> Result<()> {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let relay = Relay::start()?;
    relay.tenant("acme")?;
    let extra = if is_root {
        format!("{APPS}  user: nobody\n")
    } else {
        APPS.to_string()
    };
    let mut agent = Agent::with_extra_config("board1", &[], &extra)?;
    agent.enroll(&relay, Transport::Tcp, "acme")?;
    agent.start()?;
    agent.wait_online()?;
    wait_until(Duration::from_secs(10), "control socket", || {
        agent.dir.path().join("state/control.sock").exists()
    })?;
    let dir = tempfile::tempdir()?;
    // A tar.gz made by the system's tar, unpacked by the agent.
    let src = dir.path().join("bundle");
    std::fs::create_dir_all(src.join("bin"))?;
    std::fs::write(
        src.join("bin/hello.sh"),
        "#!/bin/sh\necho unpacked says hi\n",
    )?;
    let st = std::process::Command::new("chmod")
        .args(["0755"])
        .arg(src.join("bin/hello.sh"))
        .status()?;
    ensure!(st.success());
    let tarball = dir.path().join("bundle.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("bin")
        .status()?;
    ensure!(st.success(), "tar failed");
    let digest = sha256sum(&tarball)?;
    let pidfile = dir.path().join("daemon.pid");
    let recipe = write_file(
        dir.path(),
        "daemon.yaml",
        &format!(
            "name: com.example.daemon\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: bundle.tar.gz\n        sha256: {digest}\n        unarchive: tar.gz\n    lifecycle:\n      install:\n        script: id -u > {{work:path}}/install-uid; {{artifacts:unpacked_path}}/bundle/bin/hello.sh\n        requires_privilege: true\n      startup:\n        script: (exec setsid sleep 600 > /dev/null 2>&1 & echo $! > {pid}); id -u > {{work:path}}/startup-uid\n      shutdown: kill $(cat {pid})\n",
            pid = pidfile.display()
        ),
    )?;
    if is_root {
        // The pid file lives in the test's directory; let the steps' user write there.
        let st = std::process::Command::new("chmod")
            .args(["0777"])
            .arg(dir.path())
            .status()?;
        ensure!(st.success());
    }
    app_ok(
        &agent,
        &[
            "deploy",
            path_str(&recipe),
            "--artifacts",
            path_str(dir.path()),
        ],
    )?;
    let s = app_show(&agent, "com.example.daemon")?;
    ensure!(s["state"] == "running", "{s}");
    let logs = app_ok(&agent, &["logs", "com.example.daemon"])?;
    ensure!(logs.contains("install/stdout: unpacked says hi"), "{logs}");
    let work = agent.dir.path().join("state/apps/com.example.daemon/work");
    let daemon: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    ensure!(alive(daemon), "daemon not running");
    if is_root {
        let install_uid = std::fs::read_to_string(work.join("install-uid"))?;
        let startup_uid = std::fs::read_to_string(work.join("startup-uid"))?;
        ensure!(
            install_uid.trim() == "0" && startup_uid.trim() == "65534",
            "privileged install ran as {install_uid}, startup as {startup_uid}"
        );
    }
    app_ok(&agent, &["stop", "com.example.daemon"])?;
    wait_until(
        Duration::from_secs(10),
        "daemon stopped by shutdown",
        || !alive(daemon),
    )?;

    // skip_if skips; a run step over its timeout fails like a crash.
    let marker = work.join("skip-me");
    std::fs::write(&marker, "")?;
    let recipe = write_file(
        dir.path(),
        "skip.yaml",
        "name: com.example.skip\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      install:\n        script: exit 1\n        skip_if: exists {work:path}/../../com.example.daemon/work/skip-me\n      run:\n        script: sleep 600\n        timeout: 1500ms\n",
    )?;
    app_ok(&agent, &["deploy", path_str(&recipe)])?;
    wait_until(Duration::from_secs(20), "timed-out run is errored", || {
        app_show(&agent, "com.example.skip").is_ok_and(|s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out after 1s 500ms"))
        })
    })?;
    Ok(())
}

/// Configuration values an operator sets reach a step's script through `|sh` as one quoted
/// word each: printed exactly, never run. The same payload through the raw form does run,
/// which shows the payloads are live.
#[test]
fn operator_values_through_sh_placeholders_are_printed_not_run() -> Result<()> {
    let (_relay, agent) = apps_setup("board1")?;
    let dir = tempfile::tempdir()?;
    let pwned = dir.path().join("PWNED");
    let p = pwned.display();
    let values: Vec<(&str, String)> = vec![
        ("quote", format!("x'; touch {p}; '")),
        ("subst", format!("$(touch {p})")),
        ("backtick", format!("`touch {p}`")),
        ("lines", format!("one\ntouch {p}\ntwo")),
        ("spaces", "  two  words; echo ran ".to_string()),
        ("empty", String::new()),
    ];
    let mut script = String::new();
    for (key, _) in &values {
        script.push_str(&format!(
            "        printf '%s' {{configuration:/{key}|sh}} > {key}.out\n        printf 'value %s: [%s]\\n' {key} {{configuration:/{key}|sh}}\n"
        ));
    }
    let recipe = write_file(
        dir.path(),
        "quoting.yaml",
        &format!(
            "name: com.example.quoting\nversion: 1.0.0\nconfiguration: {{quote: a, subst: a, backtick: a, lines: a, spaces: a, empty: a}}\nmanifests:\n  - lifecycle:\n      run: |\n{script}"
        ),
    )?;
    let sets: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["deploy", path_str(&recipe)];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    app_ok(&agent, &args)?;
    wait_until(Duration::from_secs(20), "the step finishes", || {
        app_show(&agent, "com.example.quoting").is_ok_and(|s| s["state"] == "finished")
    })
    .with_context(|| agent.log())?;
    let work = agent.dir.path().join("state/apps/com.example.quoting/work");
    for (key, value) in &values {
        let got = std::fs::read_to_string(work.join(format!("{key}.out")))?;
        ensure!(got == *value, "{key}: printed {got:?}, set {value:?}");
    }
    ensure!(!pwned.exists(), "a configuration value ran as shell code");
    let logs = app_ok(&agent, &["logs", "com.example.quoting"])?;
    ensure!(
        logs.contains(&format!("value quote: [x'; touch {p}; ']"))
            && logs.contains(&format!("value subst: [$(touch {p})]"))
            && logs.contains("value spaces: [  two  words; echo ran ]")
            && logs.contains("value empty: []")
            && !logs.contains("run/stdout: ran"),
        "{logs}"
    );

    // The raw form inside single quotes, as a script written without |sh would have it:
    // the first payload breaks out and runs (the step then fails on the stray `''`).
    let raw = write_file(
        dir.path(),
        "raw.yaml",
        "name: com.example.raw\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: echo '{configuration:/quote}'\n",
    )?;
    app(&agent, &["deploy", path_str(&raw), "--set", &sets[0]])?;
    ensure!(pwned.exists(), "the raw form did not run the payload");
    Ok(())
}
