//! The verbs against a real etcd, the test standing in for the engine and
//! the agents: submit (twice, differing, --replace, refusals), start,
//! stop, load and unload with and without blocking, --block-attempts
//! running out, templates, instances and brace expansion, destroy, cat.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{finish, Fleet, HELLO};

const M1: &str = "113f16a7b2c94ad3a4d4cd0bf7b5e3a1";
const LEGEND: &str = "113f16a7.../172.17.8.103";

#[test]
fn submit_from_a_file_twice_and_replace() {
    let f = Fleet::new();
    let r = f.fleetctl(&["submit"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (0, "No units given\n"),
        "{r:?}"
    );
    f.write_unit("hello.service", HELLO);
    let r = f.fleetctl(&["submit", "hello.service"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );
    assert_eq!(f.desired("hello.service").as_deref(), Some("inactive"));
    assert_eq!(f.contents("hello.service").as_deref(), Some(HELLO));
    // the same text again: nothing to do
    let r = f.fleetctl(&["submit", "hello.service"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );
    // same options, other layout: the same unit to fleet (its hash)
    f.write_unit("hello.service", &format!("# a comment\n{HELLO}"));
    let r = f.fleetctl(&["submit", "hello"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    // different text: fleet warned and kept the registry's unit
    let other = HELLO.replace("1000", "2000");
    f.write_unit("hello.service", &other);
    let r = f.fleetctl(&["submit", "hello.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stderr,
        "WARNING: Unit hello.service in registry differs from local unit file hello.service. Add --replace to override.\n"
    );
    assert_eq!(f.contents("hello.service").as_deref(), Some(HELLO));
    // --replace puts the new text in
    let r = f.fleetctl(&["submit", "--replace", "hello.service"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    assert_eq!(f.contents("hello.service").as_deref(), Some(other.as_str()));
    let r = f.fleetctl(&["submit", "--replace", "hello.service"]);
    assert_eq!(
        r.stdout,
        "Found same Unit(hello.service) in Registry, nothing to do\n"
    );
    // ...but submit does not replace a unit past inactive
    let r = f.fleetctl(&["load", "--no-block", "hello.service"]);
    assert_eq!(r.stdout, "Triggered unit hello.service load\n", "{r:?}");
    f.write_unit("hello.service", HELLO);
    let r = f.fleetctl(&["submit", "--replace", "hello.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stderr,
        "Warning: can not replace Unit(hello.service) in state 'loaded', use the appropriate command\n"
    );
    assert_eq!(f.contents("hello.service").as_deref(), Some(other.as_str()));
    // a path elsewhere
    std::fs::create_dir_all(f.units().join("sub/dir")).unwrap();
    std::fs::write(f.units().join("sub/dir/deep.service"), HELLO).unwrap();
    let r = f.fleetctl(&["submit", "sub/dir/deep.service"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    assert_eq!(f.desired("deep.service").as_deref(), Some("inactive"));
    // a name with neither file nor registry entry
    let r = f.fleetctl(&["submit", "nothere.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Error creating units: unable to find Unit(nothere.service) in Registry or on filesystem\n"
    );
}

#[test]
fn bad_x_fleet_is_refused_at_submit_with_line_and_option() {
    let f = Fleet::new();
    f.write_unit(
        "bad.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nConflict=web@*.service\n",
    );
    let r = f.fleetctl(&["submit", "bad.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stdout, "");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(
        r.stderr.starts_with(
            "Error creating units: Unit(bad.service) from file bad.service: bad.service: line 5: [X-Fleet] Conflict"
        ),
        "{r:?}"
    );
    f.write_unit(
        "glob.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\nMachineOf=db.service\n",
    );
    let r = f.fleetctl(&["start", "glob.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("glob.service: line 6: [X-Fleet] MachineOf"),
        "{r:?}"
    );
    assert_eq!(f.desired("bad.service"), None);
    assert_eq!(f.desired("glob.service"), None);
}

#[test]
fn start_stop_load_unload_block_until_the_reports_say_so() {
    let f = Fleet::new();
    f.machine(M1, "172.17.8.103", "");
    f.write_unit("hello.service", HELLO);

    // start: submits, sets launched, waits for active
    let child = f.spawn(&["start", "hello.service"]);
    sleep(Duration::from_millis(700));
    assert_eq!(f.desired("hello.service").as_deref(), Some("launched"));
    f.schedule("hello.service", M1);
    f.report("hello.service", M1, "loaded", "activating", "start-pre");
    sleep(Duration::from_millis(600));
    f.report("hello.service", M1, "loaded", "active", "running");
    let r = finish(child);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        format!("Unit hello.service launched on {LEGEND}\n")
    );

    // start again: already launched, nothing to wait for
    let r = f.fleetctl(&["start", "hello.service"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );

    // stop: waits until it is no longer active
    let child = f.spawn(&["stop", "hello.service"]);
    sleep(Duration::from_millis(700));
    assert_eq!(f.desired("hello.service").as_deref(), Some("loaded"));
    f.report(
        "hello.service",
        M1,
        "loaded",
        "deactivating",
        "stop-sigterm",
    );
    sleep(Duration::from_millis(600));
    f.report("hello.service", M1, "loaded", "inactive", "dead");
    let r = finish(child);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, format!("Unit hello.service loaded on {LEGEND}\n"));
    assert_eq!(r.stderr, "Successfully stopped units [hello.service].\n");

    // unload: waits until no machine reports it
    let child = f.spawn(&["unload", "hello.service"]);
    sleep(Duration::from_millis(700));
    assert_eq!(f.desired("hello.service").as_deref(), Some("inactive"));
    f.unschedule("hello.service", M1);
    f.clear_report("hello.service", M1);
    let r = finish(child);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "Unit hello.service inactive\n");
    assert_eq!(r.stderr, "Successfully unloaded units [hello.service].\n");

    // stop of an inactive unit is refused, as fleet did
    let r = f.fleetctl(&["stop", "hello.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Unable to stop unit hello.service in state inactive\n"
    );

    // load: waits until loaded (and not running)
    let child = f.spawn(&["load", "hello"]);
    sleep(Duration::from_millis(700));
    assert_eq!(f.desired("hello.service").as_deref(), Some("loaded"));
    f.schedule("hello.service", M1);
    f.report("hello.service", M1, "loaded", "inactive", "dead");
    let r = finish(child);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, format!("Unit hello.service loaded on {LEGEND}\n"));
}

#[test]
fn no_block_only_triggers() {
    let f = Fleet::new();
    f.write_unit("hello.service", HELLO);
    let cases: &[(&[&str], &str, &str, &str)] = &[
        (
            &["load", "--no-block"],
            "Triggered unit hello.service load\n",
            "",
            "loaded",
        ),
        (
            &["start", "--no-block"],
            "Triggered unit hello.service start\n",
            "",
            "launched",
        ),
        (
            &["stop", "--no-block"],
            "Triggered unit hello.service stop\n",
            "Successfully stopped units [hello.service].\n",
            "loaded",
        ),
        (
            &["unload", "--no-block"],
            "Triggered unit hello.service unload\n",
            "Successfully unloaded units [hello.service].\n",
            "inactive",
        ),
    ];
    for (verb, out, err, desired) in cases {
        let mut args = verb.to_vec();
        args.push("hello.service");
        let r = f.fleetctl(&args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert_eq!(
            (r.stdout.as_str(), r.stderr.as_str()),
            (*out, *err),
            "{args:?}"
        );
        assert_eq!(
            f.desired("hello.service").as_deref(),
            Some(*desired),
            "{args:?}"
        );
    }
    for verb in ["stop", "unload", "destroy"] {
        let r = f.fleetctl(&[verb, "nothere.service"]);
        assert_eq!(r.code, 0, "{verb}: {r:?}");
        assert_eq!(r.stderr, "Units not found in registry\n", "{verb}");
    }
}

#[test]
fn block_attempts_run_out_as_fleets_did() {
    let f = Fleet::new();
    f.machine(M1, "172.17.8.103", "");
    f.write_unit("hello.service", HELLO);
    let t = Instant::now();
    let r = f.fleetctl(&["start", "--block-attempts=1", "hello.service"]);
    let took = t.elapsed();
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "Error waiting for unit states, exit status: timed out waiting for unit hello.service to report state launched\n"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // stop, with the unit still reported active
    f.schedule("hello.service", M1);
    f.report("hello.service", M1, "loaded", "active", "running");
    let r = f.fleetctl(&["stop", "--block-attempts", "1", "hello.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Failed to stop units [hello.service]. err: timed out waiting for unit hello.service to report state loaded\n"
    );
}

#[test]
fn templates_instances_and_brace_expansion() {
    let f = Fleet::new();
    let web = "[Service]\nExecStart=/bin/web %i\n\n[X-Fleet]\nConflicts=web@*.service\n";
    f.write_unit("web@.service", web);
    let r = f.fleetctl(&["submit", "web@.service"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    // the template's file is gone: instances take the registry's template
    std::fs::remove_file(f.units().join("web@.service")).unwrap();
    let r = f.fleetctl(&["start", "--no-block", "web@{1..3}.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "Triggered unit web@1.service start\nTriggered unit web@2.service start\nTriggered unit web@3.service start\n"
    );
    for i in 1..=3 {
        let u = format!("web@{i}.service");
        assert_eq!(f.desired(&u).as_deref(), Some("launched"));
        assert_eq!(f.contents(&u).as_deref(), Some(web));
    }
    assert_eq!(f.desired("web@.service").as_deref(), Some("inactive"));
    let r = f.fleetctl(&["load", "web@.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Error creating units: cannot activate template \"web@.service\"\n"
    );
    // an instance of a template that is only a local file; no type given
    f.write_unit("api@.service", HELLO);
    let r = f.fleetctl(&["load", "--no-block", "api@{a,b}"]);
    assert_eq!(
        r.stdout, "Triggered unit api@a.service load\nTriggered unit api@b.service load\n",
        "{r:?}"
    );
    assert_eq!(f.contents("api@b.service").as_deref(), Some(HELLO));
    assert_eq!(f.desired("api@.service"), None);
    // no template anywhere
    let r = f.fleetctl(&["start", "db@1.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Error creating units: unable to find template Unit(db@.service) in Registry or on filesystem\n"
    );
    // lists of files
    f.write_unit("a.service", HELLO);
    f.write_unit("b.service", HELLO);
    let r = f.fleetctl(&["submit", "{a,b}.service"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    assert!(f.desired("a.service").is_some() && f.desired("b.service").is_some());
    let r = f.fleetctl(&["list-unit-files", "--no-legend", "--fields=unit,dstate"]);
    assert_eq!(
        r.stdout,
        "a.service\tinactive\napi@a.service\tloaded\napi@b.service\tloaded\nb.service\tinactive\n\
         web@.service\tinactive\nweb@1.service\tlaunched\nweb@2.service\tlaunched\nweb@3.service\tlaunched\n"
    );
}

#[test]
fn cat_prints_the_text_byte_for_byte_and_destroy_removes() {
    let f = Fleet::new();
    let text = "# made by hand\r\n[Unit]\r\nDescription=Odd  layout\r\n\r\n[Service]\r\nExecStart=/bin/sh -c \\\n  true   \r\n; the end";
    f.write_unit("odd.service", text);
    let r = f.fleetctl(&["submit", "odd.service"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    let out = f.command(&["cat", "odd.service"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, text.as_bytes());
    let r = f.fleetctl(&["cat", "odd"]);
    assert_eq!(r.stdout, text);
    let r = f.fleetctl(&["cat", "nope.service"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Unit nope.service not found\n")
    );
    let r = f.fleetctl(&["cat"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "One unit file must be provided\n")
    );

    let r = f.fleetctl(&["destroy", "odd.service"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Destroyed odd.service\n"),
        "{r:?}"
    );
    assert_eq!(f.desired("odd.service"), None);
    let r = f.fleetctl(&["destroy", "odd.service"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (0, "Units not found in registry\n")
    );
}
