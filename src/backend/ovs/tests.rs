//! Against a real ovsdb-server (no ovs-vswitchd: plugs wait for the commit only, except
//! where the test is about waiting). The OVS/OVN end-to-end tests with ovs-vswitchd and
//! ovn-controller are in tests/blackbox/test_ovs_peers.py.

use super::testing::Server;
use super::*;

fn settings(node: &str, reps: &[&str]) -> OvsSettings {
    OvsSettings {
        node: node.into(),
        bridge: "br-int".into(),
        functions: reps
            .iter()
            .map(|r| Function {
                function: format!("fn-{r}"),
                representor: r.to_string(),
            })
            .collect(),
        interface_type: "internal".into(),
        wait: WaitFor::Commit,
        plug_timeout: Duration::from_secs(5),
        mac_command: None,
        mac_sysfs: None,
        step_timeout: Duration::from_secs(5),
    }
}

fn spec(n: u8) -> NicSpec {
    NicSpec {
        handle: format!("mv-0123456789abcdef0123456789abcdef-5254000000{n:02x}"),
        mac: format!("52:54:00:00:00:{n:02x}"),
        bridge: None,
        interface_id: Some(format!("port-{n}")),
        domain_uuid: "01234567-89ab-cdef-0123-456789abcdef".into(),
        representor: None,
    }
}

fn nics(srv: &Server, node: &str, reps: &[&str]) -> OvsNics {
    OvsNics::new(
        settings(node, reps),
        Session::start(&srv.addr(), Duration::from_secs(2), None),
    )
}

/// `external_ids` of an interface as ovs-vsctl shows them (an independent reader).
fn ids(srv: &Server, name: &str) -> String {
    srv.vsctl(&["get", "Interface", name, "external_ids"])
}

#[tokio::test]
async fn plug_unplug_pool_and_idempotence() {
    let srv = Server::start().with_bridge("br-int");
    let n = nics(&srv, "bm-1", &["pf0vf0", "pf0vf1"]);
    let rep = n.plug(&spec(1)).await.unwrap();
    assert_eq!(rep, "pf0vf0");
    let got = ids(&srv, "pf0vf0");
    for want in [
        "iface-id=port-1",
        "attached-mac=\"52:54:00:00:00:01\"",
        "iface-status=active",
        "vm-uuid=\"01234567-89ab-cdef-0123-456789abcdef\"",
        "metalvirt-node=bm-1",
        "metalvirt-domain=\"01234567-89ab-cdef-0123-456789abcdef\"",
    ] {
        assert!(got.contains(want), "{want} in {got}");
    }
    assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "pf0vf0");
    // The same handle again is the same port.
    assert_eq!(n.plug(&spec(1)).await.unwrap(), "pf0vf0");
    assert_eq!(n.plug(&spec(2)).await.unwrap(), "pf0vf1");
    let e = n.plug(&spec(3)).await.unwrap_err();
    assert_eq!(e.msg, "no free NIC function on node bm-1 (all 2 in use)");
    assert_eq!(n.list().await.unwrap(), [spec(1).handle, spec(2).handle]);
    n.unplug(&spec(1).handle).await.unwrap();
    n.unplug(&spec(1).handle).await.unwrap();
    assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "pf0vf1");
    // Port and Interface rows are gone, not only the bridge's reference.
    assert!(!srv
        .vsctl(&["--columns=name", "list", "Interface"])
        .contains("pf0vf0"));
    // The freed function is handed out again.
    assert_eq!(n.plug(&spec(3)).await.unwrap(), "pf0vf0");
    // Statistics: the representor's counters, seen from the server's side.
    srv.vsctl(&[
        "set",
        "Interface",
        "pf0vf0",
        "statistics:rx_bytes=100",
        "statistics:tx_bytes=7",
    ]);
    let st = n.stats(&spec(3).handle).await.unwrap();
    assert_eq!((st.rx_bytes, st.tx_bytes), (7, 100));
}

#[tokio::test]
async fn a_taken_representor_is_skipped_and_a_preferred_one_kept() {
    let srv = Server::start().with_bridge("br-int");
    srv.vsctl(&["add-port", "br-int", "pf0vf0"]);
    let n = nics(&srv, "bm-1", &["pf0vf0", "pf0vf1", "pf0vf2"]);
    let mut s = spec(1);
    s.representor = Some("pf0vf2".into());
    assert_eq!(n.plug(&s).await.unwrap(), "pf0vf2");
    assert_eq!(n.plug(&spec(2)).await.unwrap(), "pf0vf1");
    // Someone else's port is never ours to list or remove.
    assert_eq!(n.list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_function_freed_by_someone_else_is_usable_at_once() {
    let srv = Server::start().with_bridge("br-int");
    let n = nics(&srv, "bm-1", &["pf0vf0", "pf0vf1"]);
    n.plug(&spec(1)).await.unwrap();
    n.plug(&spec(2)).await.unwrap();
    // Another client deletes pf0vf0; our replica hears of it a moment later, but the
    // next plug must not call the pool exhausted meanwhile.
    let other = ovsdb::Ovsdb::connect(&srv.addr(), Duration::from_secs(2))
        .await
        .unwrap();
    let port = srv.vsctl(&["get", "Port", "pf0vf0", "_uuid"]);
    other
        .transact(
            "Open_vSwitch",
            vec![
                json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
                        "mutations": [["ports", "delete", ["set", [["uuid", port]]]]]}),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n.plug(&spec(3)).await.unwrap(), "pf0vf0");
}

#[tokio::test]
async fn a_missing_bridge_fails_cleanly() {
    let srv = Server::start().with_bridge("br-int");
    let n = nics(&srv, "bm-1", &["pf0vf0"]);
    let mut s = spec(1);
    s.bridge = Some("br-nope".into());
    let e = n.plug(&s).await.unwrap_err();
    assert!(
        e.msg
            .contains("bridge 'br-nope' does not exist in Open vSwitch (bridges: br-int)"),
        "{e}"
    );
    assert_eq!(
        srv.vsctl(&["--columns=name", "list", "Interface"]),
        "name                : br-int"
    );
    // And the function is free again.
    assert_eq!(n.plug(&spec(2)).await.unwrap(), "pf0vf0");
}

#[tokio::test]
async fn waiting_for_an_ofport_times_out_without_vswitchd_and_rolls_back() {
    let srv = Server::start().with_bridge("br-int");
    let mut s = settings("bm-1", &["pf0vf0"]);
    s.wait = WaitFor::Ofport;
    s.plug_timeout = Duration::from_millis(300);
    let n = OvsNics::new(s, Session::start(&srv.addr(), Duration::from_secs(2), None));
    let e = n.plug(&spec(1)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert!(e.msg.contains("is ovs-vswitchd running?"), "{e}");
    assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "");
    // ovs-vswitchd's verdict on a representor it cannot open fails the plug at once.
    let mut s = settings("bm-1", &["pf0vf0"]);
    s.wait = WaitFor::Ofport;
    let n = OvsNics::new(s, Session::start(&srv.addr(), Duration::from_secs(2), None));
    let plug = tokio::spawn(async move { n.plug(&spec(2)).await });
    for _ in 0..200 {
        if srv.vsctl(&["list-ports", "br-int"]) == "pf0vf0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.vsctl(&[
        "set",
        "Interface",
        "pf0vf0",
        "ofport=-1",
        "error=\"could not open network device pf0vf0 (No such device)\"",
    ]);
    let e = plug.await.unwrap().unwrap_err();
    assert!(e.msg.contains("No such device"), "{e}");
    assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "");
}

#[tokio::test]
async fn mac_programming_runs_before_the_port_and_its_failure_adds_nothing() {
    let srv = Server::start().with_bridge("br-int");
    let log = srv.dir.path().join("mac.log");
    let script = srv.dir.path().join("setmac");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\n[ \"$2\" != 52:54:00:00:00:09 ] || {{ echo 'device busy' >&2; exit 3; }}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut s = settings("bm-1", &["pf0vf0"]);
    s.mac_command = Some(vec![
        script.display().to_string(),
        "{function}".into(),
        "{mac}".into(),
        "{representor}@{node}".into(),
    ]);
    s.mac_sysfs = Some(
        srv.dir
            .path()
            .join("sysfs-{function}")
            .display()
            .to_string(),
    );
    let n = OvsNics::new(s, Session::start(&srv.addr(), Duration::from_secs(2), None));
    n.plug(&spec(1)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "fn-pf0vf0 52:54:00:00:00:01 pf0vf0@bm-1\n"
    );
    assert_eq!(
        std::fs::read_to_string(srv.dir.path().join("sysfs-fn-pf0vf0")).unwrap(),
        "52:54:00:00:00:01\n"
    );
    n.unplug(&spec(1).handle).await.unwrap();
    let e = n.plug(&spec(9)).await.unwrap_err();
    assert!(e.msg.contains("MAC programming of fn-pf0vf0 failed"), "{e}");
    assert!(e.msg.contains("device busy"), "{e}");
    assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "");
}

#[tokio::test]
async fn the_session_reconnects_after_the_server_restarts() {
    let mut srv = Server::start().with_bridge("br-int");
    let n = nics(&srv, "bm-1", &["pf0vf0", "pf0vf1"]);
    n.plug(&spec(1)).await.unwrap();
    srv.stop();
    // Meanwhile, someone removes our port and adds one of theirs.
    let e = n.plug(&spec(2)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.msg.contains("unreachable"), "{e}");
    srv.serve();
    srv.vsctl(&["del-port", "br-int", "pf0vf0"]);
    srv.vsctl(&["add-port", "br-int", "pf0vf1"]);
    // The replica follows the restarted server: pf0vf0 is free, pf0vf1 taken.
    assert_eq!(n.plug(&spec(3)).await.unwrap(), "pf0vf0");
    assert_eq!(n.list().await.unwrap(), [spec(3).handle]);
}
