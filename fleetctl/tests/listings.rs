//! The listings against a real etcd: every column set fleet printed, with
//! and without `--no-legend`, `--full` and `--fields`, byte for byte
//! (fleet's tabwriter pads with tabs).

mod common;

use common::{Fleet, HELLO};

const M1: &str = "113f16a7b2c94ad3a4d4cd0bf7b5e3a1";
const M2: &str = "85c0c5951a6c4ee1b7d0a4e0c1e9f2d0";

#[test]
fn list_machines_columns() {
    let f = Fleet::new();
    f.machine(M1, "172.17.8.103", "az=us-west-1b,role=web");
    f.machine(M2, "172.17.8.102", "");
    let r = f.fleetctl(&["list-machines"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "MACHINE\t\tIP\t\tMETADATA\n\
         113f16a7...\t172.17.8.103\taz=us-west-1b,role=web\n\
         85c0c595...\t172.17.8.102\t-\n"
    );
    let r = f.fleetctl(&["list-machines", "--no-legend", "--full"]);
    assert_eq!(
        r.stdout,
        format!("{M1}\t172.17.8.103\taz=us-west-1b,role=web\n{M2}\t172.17.8.102\t-\n")
    );
    let r = f.fleetctl(&["list-machines", "-l", "--fields=ip,machine"]);
    assert_eq!(
        r.stdout,
        format!("IP\t\tMACHINE\n172.17.8.103\t{M1}\n172.17.8.102\t{M2}\n")
    );
    let r = f.fleetctl(&["list-machines", "--fields", "ip,bogus"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stderr, "Invalid key in output format: \"bogus\"\n");
    assert_eq!(r.stdout, "");
    let r = f.fleetctl(&["list-machines", "--fields="]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Must define output format\n")
    );
}

#[test]
fn list_units_and_unit_files_columns() {
    let f = Fleet::new();
    f.machine(M1, "172.17.8.103", "");
    f.machine(M2, "172.17.8.102", "");
    f.write_unit("hello.service", HELLO);
    f.write_unit(
        "goodbye.service",
        "[Unit]\nDescription=Goodbye\n\n[Service]\nExecStart=/bin/sleep 1000\n",
    );
    f.write_unit(
        "everywhere.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n",
    );
    let r = f.fleetctl(&["submit", "hello.service", "goodbye.service", "everywhere"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );

    // nothing runs yet
    let r = f.fleetctl(&["list-units"]);
    assert_eq!(r.stdout, "UNIT\tMACHINE\tACTIVE\tSUB\n", "{r:?}");
    let r = f.fleetctl(&["list-unit-files"]);
    assert_eq!(
        r.stdout,
        "UNIT\t\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
         everywhere.service\t055adf8\tinactive\t-\t\tglobal\n\
         goodbye.service\t\t9a6bc51\tinactive\tinactive\t-\n\
         hello.service\t\t5b850b3\tinactive\tinactive\t-\n",
        "{r:?}"
    );

    // the engine and the agents do their part
    let r = f.fleetctl(&[
        "start",
        "--no-block",
        "hello.service",
        "goodbye",
        "everywhere.service",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "Triggered global unit everywhere.service start\n\
         Triggered unit hello.service start\n\
         Triggered unit goodbye.service start\n"
    );
    f.schedule("hello.service", M1);
    f.schedule("goodbye.service", M2);
    f.report("hello.service", M1, "loaded", "active", "running");
    f.report("goodbye.service", M2, "loaded", "activating", "start-pre");
    f.report("everywhere.service", M1, "loaded", "active", "exited");
    f.report("everywhere.service", M2, "loaded", "failed", "failed");

    let r = f.fleetctl(&["list-units"]);
    assert_eq!(
        r.stdout,
        "UNIT\t\t\tMACHINE\t\t\t\tACTIVE\t\tSUB\n\
         everywhere.service\t113f16a7.../172.17.8.103\tactive\t\texited\n\
         everywhere.service\t85c0c595.../172.17.8.102\tfailed\t\tfailed\n\
         goodbye.service\t\t85c0c595.../172.17.8.102\tactivating\tstart-pre\n\
         hello.service\t\t113f16a7.../172.17.8.103\tactive\t\trunning\n",
        "{r:?}"
    );
    let r = f.fleetctl(&[
        "list-units",
        "--no-legend",
        "--full",
        "--fields=unit,load,hash,machine",
    ]);
    let hash = |u: &str| f.rt.block_on(f.reg.unit(u)).unwrap().unwrap().record.hash;
    let (e, g, h) = (
        hash("everywhere.service"),
        hash("goodbye.service"),
        hash("hello.service"),
    );
    assert_eq!(
        r.stdout,
        format!(
            "everywhere.service\tloaded\t{e}\t{M1}/172.17.8.103\n\
             everywhere.service\tloaded\t{e}\t{M2}/172.17.8.102\n\
             goodbye.service\t\tloaded\t{g}\t{M2}/172.17.8.102\n\
             hello.service\t\tloaded\t{h}\t{M1}/172.17.8.103\n"
        ),
        "{r:?}"
    );
    let r = f.fleetctl(&["list-unit-files"]);
    assert_eq!(
        r.stdout,
        "UNIT\t\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
         everywhere.service\t055adf8\tlaunched\t-\t\tglobal\n\
         goodbye.service\t\t9a6bc51\tlaunched\tloaded\t\t85c0c595.../172.17.8.102\n\
         hello.service\t\t5b850b3\tlaunched\tlaunched\t113f16a7.../172.17.8.103\n",
        "{r:?}"
    );
    let r = f.fleetctl(&[
        "list-unit-files",
        "--no-legend",
        "--full",
        "--fields=unit,global,desc,target",
    ]);
    assert_eq!(
        r.stdout,
        format!(
            "everywhere.service\ttrue\t-\t\tglobal\n\
             goodbye.service\t\tfalse\tGoodbye\t\t{M2}/172.17.8.102\n\
             hello.service\t\tfalse\tHello World\t{M1}/172.17.8.103\n"
        ),
        "{r:?}"
    );
    let r = f.fleetctl(&["list-unit-files", "--fields=unit,tmachine"]);
    assert_eq!(
        r.stderr,
        "WARNING: The \"tmachine\" field is deprecated. Use \"target\" instead\n"
    );
    assert!(r.stdout.starts_with("UNIT\t\t\tTMACHINE\n"), "{r:?}");
}
