//! Rights table: building, validation errors, the send check, per-partition views.

use monitor::rights::{
    Denied, EdgeRights, MAX_PARTITIONS, Policy, Quota, RightsBuilder, RightsError, TagRange,
};

const QUOTA: Quota = Quota {
    msgs_per_s: 10_000,
    bytes_per_s: 1 << 20,
    burst_msgs: 100,
    burst_bytes: 1 << 16,
};
const OPEN: EdgeRights = EdgeRights {
    tags: None,
    nonblocking: true,
    quota: QUOTA,
};

fn system() -> RightsBuilder {
    let mut b = RightsBuilder::new();
    b.partition("app1", Policy::Stop)
        .partition("app2", Policy::Stop)
        .partition("fs", Policy::Restart { limit: 3 })
        .partition("net", Policy::Stop)
        .group("apps", &["app1", "app2"])
        .allow(
            "apps",
            "fs",
            EdgeRights {
                tags: Some(TagRange { lo: 1, hi: 9 }),
                ..OPEN
            },
        )
        .allow("fs", "apps", OPEN)
        .allow("fs", "net", OPEN);
    b
}

#[test]
fn builds_indices_in_order_and_expands_groups() {
    let t = system().build().unwrap();
    let names: Vec<_> = t
        .partitions()
        .iter()
        .map(|p| (p.index, p.name.as_str()))
        .collect();
    assert_eq!(names, [(0, "app1"), (1, "app2"), (2, "fs"), (3, "net")]);
    let pairs: Vec<_> = t.edges().iter().map(|e| (e.id.0, e.from, e.to)).collect();
    assert_eq!(
        pairs,
        [(0, 0, 2), (1, 1, 2), (2, 2, 0), (3, 2, 1), (4, 2, 3)]
    );
    assert_eq!(t.groups()[0].members, 0b11);
    assert!(t.partitions().iter().all(|p| p.generation == 0));
}

#[test]
fn send_check_refuses_with_the_reason() {
    let t = system().forbid_nonblocking("app2").build().unwrap();
    assert_eq!(t.check_send(0, 2, 5, true).map(|e| e.0), Ok(0));
    assert_eq!(t.check_send(0, 2, 10, false), Err(Denied::TagOutOfRange));
    assert_eq!(t.check_send(0, 2, 0, false), Err(Denied::TagOutOfRange));
    assert_eq!(t.check_send(0, 1, 5, false), Err(Denied::NoEdge));
    assert_eq!(t.check_send(0, 3, 5, false), Err(Denied::NoEdge));
    assert_eq!(t.check_send(2, 0, u32::MAX, true).map(|e| e.0), Ok(2));
    assert_eq!(
        t.check_send(1, 2, 5, true),
        Err(Denied::NonBlockingForbidden)
    );
    assert_eq!(t.check_send(1, 2, 5, false).map(|e| e.0), Ok(1));
    assert_eq!(t.check_send(40, 2, 5, false), Err(Denied::NoEdge));
}

fn err(b: &RightsBuilder) -> RightsError {
    b.build().unwrap_err()
}

#[test]
fn unknown_names_are_rejected_by_name() {
    let mut b = system();
    b.allow("app1", "disk", OPEN);
    let e = err(&b);
    assert_eq!(
        e,
        RightsError::UnknownName {
            name: "disk".into(),
            role: "edge destination"
        }
    );
    assert!(e.to_string().contains("\"disk\""), "{e}");
    let mut b = system();
    b.allow("ghosts", "fs", OPEN);
    assert!(
        matches!(err(&b), RightsError::UnknownName { name, role: "edge source" } if name == "ghosts")
    );
    let mut b = system();
    b.group("odd", &["app1", "nobody"]);
    assert!(matches!(err(&b), RightsError::UnknownName { name, .. } if name == "nobody"));
    let mut b = system();
    b.forbid_nonblocking("nobody");
    assert!(matches!(err(&b), RightsError::UnknownName { name, .. } if name == "nobody"));
}

#[test]
fn zero_quotas_are_rejected_naming_the_field() {
    type Zero = fn(&mut Quota);
    let fields: [(&str, Zero); 4] = [
        ("msgs_per_s", |q| q.msgs_per_s = 0),
        ("bytes_per_s", |q| q.bytes_per_s = 0),
        ("burst_msgs", |q| q.burst_msgs = 0),
        ("burst_bytes", |q| q.burst_bytes = 0),
    ];
    for (name, zero) in fields {
        let mut quota = QUOTA;
        zero(&mut quota);
        let mut b = system();
        b.allow("net", "fs", EdgeRights { quota, ..OPEN });
        let e = err(&b);
        let want = RightsError::ZeroQuota {
            from: "net".into(),
            to: "fs".into(),
            field: name,
        };
        assert_eq!(e, want);
        assert!(e.to_string().contains(name));
    }
}

#[test]
fn bad_grants_are_rejected() {
    let mut b = system();
    b.allow("net", "net", OPEN);
    assert_eq!(err(&b), RightsError::SelfEdge { name: "net".into() });
    let mut b = system();
    b.allow("app2", "fs", OPEN);
    assert_eq!(
        err(&b),
        RightsError::DuplicateEdge {
            from: "app2".into(),
            to: "fs".into()
        }
    );
    let mut b = system();
    b.group("solo", &["net"]).allow("solo", "solo", OPEN);
    assert!(matches!(
        err(&b),
        RightsError::SelfEdge { .. } | RightsError::EmptyGrant { .. }
    ));
    let mut b = system();
    b.group("pair", &["net", "app1"])
        .group("one", &["net"])
        .allow("one", "net", OPEN);
    assert!(matches!(
        err(&b),
        RightsError::SelfEdge { .. } | RightsError::EmptyGrant { .. }
    ));
    let mut b = system();
    b.allow(
        "net",
        "fs",
        EdgeRights {
            tags: Some(TagRange { lo: 5, hi: 4 }),
            ..OPEN
        },
    );
    assert!(matches!(
        err(&b),
        RightsError::EmptyTagRange { lo: 5, hi: 4, .. }
    ));
    let mut b = system();
    b.group("none", &[]);
    assert_eq!(
        err(&b),
        RightsError::BadGroup {
            name: "none".into(),
            why: "no members"
        }
    );
}

#[test]
fn bad_names_and_policies_are_rejected() {
    for name in ["", "Fs", "9p", "a b", "fs\0", &"x".repeat(33)] {
        let mut b = system();
        b.partition(name, Policy::Stop);
        assert_eq!(err(&b), RightsError::BadName { name: name.into() });
    }
    let mut b = system();
    b.partition("fs", Policy::Stop);
    assert_eq!(err(&b), RightsError::DuplicateName { name: "fs".into() });
    let mut b = system();
    b.group("net", &["fs"]);
    assert_eq!(err(&b), RightsError::DuplicateName { name: "net".into() });
    for limit in [0, 65_536, u32::MAX] {
        let mut b = system();
        b.partition("disk", Policy::Restart { limit });
        assert!(matches!(err(&b), RightsError::BadPolicy { name, .. } if name == "disk"));
    }
    let mut b = system();
    b.partition("disk", Policy::Restart { limit: 65_535 });
    assert!(b.build().is_ok());
}

#[test]
fn size_limits_are_enforced() {
    let mut b = RightsBuilder::new();
    for i in 0..=MAX_PARTITIONS {
        b.partition(&format!("p{i}"), Policy::Stop);
    }
    assert_eq!(
        err(&b),
        RightsError::TooMany {
            what: "partitions",
            max: MAX_PARTITIONS
        }
    );
    let mut b = RightsBuilder::new();
    let names: Vec<String> = (0..MAX_PARTITIONS).map(|i| format!("p{i}")).collect();
    for n in &names {
        b.partition(n, Policy::Stop);
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = b
        .group("all", &all)
        .allow("all", "all", OPEN)
        .build()
        .unwrap();
    assert_eq!(t.edges().len(), 64 * 63);
}

#[test]
fn display_prints_the_table() {
    let t = system().build().unwrap();
    let s = t.to_string();
    for needle in [
        "app1",
        "restart (limit 3)",
        "apps",
        "app1, app2",
        "tags 1..=9",
        "10000 msg/s",
    ] {
        assert!(s.contains(needle), "{needle} missing in\n{s}");
    }
}

#[test]
fn the_monitor_partition_cannot_restart_itself() {
    let mut b = system();
    b.partition("mon", Policy::Stop).monitor("mon");
    let t = b.build().unwrap();
    let flags: Vec<bool> = t.partitions().iter().map(|p| p.monitor).collect();
    assert_eq!(flags, [false, false, false, false, true]);
    assert!(t.to_string().contains("stop (monitor)"));
    let mut b = system();
    b.monitor("fs");
    let e = err(&b);
    assert!(
        matches!(&e, RightsError::BadPolicy { name, .. } if name == "fs"),
        "{e}"
    );
    assert!(e.to_string().contains("cannot restart itself"));
    let mut b = system();
    b.monitor("mon");
    assert!(matches!(err(&b), RightsError::UnknownName { name, .. } if name == "mon"));
}
