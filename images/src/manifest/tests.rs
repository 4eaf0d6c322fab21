use super::*;

const BASE: &str = r#"
[system]
name = "t"

[[partition]]
name = "a"
service = "hello"
memory = "32M"

[[partition]]
name = "b"
service = "hello"
memory = 33554432

[[partition]]
name = "c"
service = "hello"
memory = "16MiB"
"#;

fn ok(extra: &str) -> System {
    parse(Path::new("t.toml"), &format!("{BASE}{extra}")).unwrap()
}

/// The error text for BASE + `extra`.
fn err(extra: &str) -> String {
    let text = format!("{BASE}{extra}");
    parse(Path::new("t.toml"), &text).unwrap_err().to_string()
}

/// Line (1-based) of the first occurrence of `needle` in BASE + extra.
fn line_of(extra: &str, needle: &str) -> usize {
    let text = format!("{BASE}{extra}");
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

const RIGHT_AB: &str = r#"
[[right]]
from = "a"
to = "b"
direction = "both"
ring = "64K"
nonblocking = true
tags = [0, 99]
quota = { messages_per_sec = 1000, bytes_per_sec = 65536, burst = 16 }
"#;

#[test]
fn resolves_ranks_groups_channels() {
    let extra = format!(
        r#"{RIGHT_AB}
[[right]]
from = "c"
to = "a"
ring = "1M"
quota = {{ messages_per_sec = 10, bytes_per_sec = 1000, burst = 1, burst_bytes = 4096 }}

[[group]]
name = "g1"
members = ["a", "b"]

[[group]]
name = "g2"
members = ["c", "a"]
"#
    );
    let s = ok(&extra);
    assert_eq!(s.name, "t");
    assert_eq!(s.machine, Machine::Microvm);
    let names: Vec<_> = s
        .partitions
        .iter()
        .map(|p| (p.name.as_str(), p.rank))
        .collect();
    assert_eq!(names, [("a", 0), ("b", 1), ("c", 2)]);
    assert_eq!(s.partitions[1].memory, 32 << 20);
    assert_eq!(s.partitions[2].memory, 16 << 20);
    assert_eq!(s.groups[1].members, [2, 0]);
    assert_eq!(s.channels.len(), 2);
    let ab = &s.channels[0];
    assert_eq!(ab.ends, [0, 1]);
    assert_eq!(ab.slots, [1, 1]);
    assert_eq!(ab.file_bytes, MIN_CHANNEL_BYTES);
    let e = ab.dirs[1].as_ref().unwrap();
    assert_eq!(
        (e.from, e.to, e.ring_bytes, e.nonblocking, e.tags),
        (1, 0, 65536, true, Some((0, 99)))
    );
    assert_eq!(
        e.quota.burst_bytes, 65536,
        "burst_bytes defaults to one second"
    );
    let ca = &s.channels[1];
    assert_eq!(ca.ends, [0, 2]);
    assert_eq!(ca.slots, [2, 1], "A's second channel is in slot 2");
    assert!(ca.dirs[0].is_none(), "one-way is the default");
    assert_eq!(ca.dirs[1].as_ref().unwrap().quota.burst_bytes, 4096);
    assert_eq!(s.channels_of(1).count(), 1);
    // The monitor's rights table agrees: three directed edges, partition c may send to a.
    assert_eq!(s.rights.edges().len(), 3);
    assert!(s.rights.edge(2, 0).is_some() && s.rights.edge(0, 2).is_none());
    assert_eq!(
        s.rights
            .edge(1, 0)
            .unwrap()
            .rights
            .tags
            .map(|t| (t.lo, t.hi)),
        Some((0, 99))
    );
}

#[test]
fn a_pair_not_granted_gets_no_channel() {
    let s = ok(RIGHT_AB);
    assert!(s.channels_of(2).next().is_none());
}

#[test]
fn two_one_way_rights_make_one_channel() {
    let extra = r#"
[[right]]
from = "a"
to = "b"
ring = "4K"
quota = { messages_per_sec = 1, bytes_per_sec = 1, burst = 1 }
[[right]]
from = "b"
to = "a"
ring = "2M"
quota = { messages_per_sec = 2, bytes_per_sec = 2, burst = 2 }
"#;
    let s = ok(extra);
    assert_eq!(s.channels.len(), 1);
    let c = &s.channels[0];
    assert_eq!(c.dirs[0].as_ref().unwrap().ring_bytes, 4096);
    assert_eq!(c.dirs[1].as_ref().unwrap().ring_bytes, 2 << 20);
    assert_eq!(
        c.file_bytes,
        8 << 20,
        "both directions get the larger ring: 2 * 2M + slots -> 8M"
    );
    assert_eq!(c.geometry().data_len, 2 << 20);
    assert_eq!(c.geometry().slots, RING_SLOTS);
}

#[test]
fn unknown_key() {
    let extra = "\n[[group]]\nname = \"g\"\nmembers = [\"a\"]\ncolour = \"red\"\n";
    let e = err(extra);
    let line = line_of(extra, "colour");
    assert!(
        e.starts_with(&format!("t.toml:{line}: key `colour`: unknown key")),
        "{e}"
    );
}

#[test]
fn unknown_key_at_top_level_and_in_partition() {
    let e = err("\n[extras]\nx = 1\n");
    assert!(e.contains("key `extras`: unknown key"), "{e}");
    let e = parse(
        Path::new("t.toml"),
        &BASE.replace("memory = \"32M\"", "memory = \"32M\"\ncpus = 2"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("t.toml:9: key `cpus`: unknown key"), "{e}");
}

#[test]
fn missing_key() {
    let e = err("\n[[partition]]\nname = \"d\"\nservice = \"x\"\n");
    assert!(e.contains("key `memory`: missing field `memory`"), "{e}");
}

#[test]
fn bad_enum_value_names_its_key() {
    let extra =
        "\n[[partition]]\nname = \"d\"\nservice = \"x\"\nmemory = \"8M\"\nhypervisor = \"xen\"\n";
    let e = err(extra);
    let line = line_of(extra, "xen");
    assert!(
        e.starts_with(&format!("t.toml:{line}: key `hypervisor`:")),
        "{e}"
    );
    assert!(e.contains("qemu"), "{e}");
}

#[test]
fn duplicate_name() {
    let extra = "\n[[partition]]\nname = \"b\"\nservice = \"x\"\nmemory = \"8M\"\n";
    let e = err(extra);
    let line = line_of(extra, "name = \"b\"\nservice = \"x\"");
    assert_eq!(
        e,
        format!(
            "t.toml:{line}: key `partition.name`: duplicate partition name `b` (first defined on line 11)"
        )
    );
}

#[test]
fn duplicate_group_name() {
    let e = err(
        "\n[[group]]\nname = \"g\"\nmembers = [\"a\"]\n[[group]]\nname = \"g\"\nmembers = [\"b\"]\n",
    );
    assert!(
        e.contains("key `group.name`: duplicate group name `g`"),
        "{e}"
    );
}

#[test]
fn channel_to_missing_partition() {
    let extra = RIGHT_AB.replace("to = \"b\"", "to = \"z\"");
    let e = err(&extra);
    let line = line_of(&extra, "to = \"z\"");
    assert_eq!(
        e,
        format!("t.toml:{line}: key `right.to`: no partition named `z`")
    );
}

#[test]
fn group_with_unknown_member() {
    let e = err("\n[[group]]\nname = \"g\"\nmembers = [\"a\", \"q\"]\n");
    assert!(
        e.contains("key `group.members`: no partition named `q`"),
        "{e}"
    );
}

#[test]
fn ring_that_does_not_fit() {
    // Two channels with 64 MiB rings need 2 * 256 MiB of the 510 MiB window.
    let mut extra = String::new();
    for i in 0..3 {
        extra.push_str(&format!(
            "\n[[partition]]\nname = \"p{i}\"\nservice = \"x\"\nmemory = \"8M\"\n[[right]]\nfrom = \"a\"\nto = \"p{i}\"\ndirection = \"both\"\nring = \"64M\"\nquota = {{ messages_per_sec = 1, bytes_per_sec = 1, burst = 1 }}\n"
        ));
    }
    let e = err(&extra);
    assert!(
        e.contains("key `right.ring`: ring of 64 MiB does not fit in memory: partition `a`"),
        "{e}"
    );
    assert!(e.contains("512 MiB of its 510 MiB"), "{e}");
}

#[test]
fn ring_size_rules() {
    let e = err(&RIGHT_AB.replace("\"64K\"", "\"48K\""));
    assert!(
        e.contains("key `right.ring`: ring of 48 KiB must be a power of two"),
        "{e}"
    );
    let e = err(&RIGHT_AB.replace("\"64K\"", "\"128M\""));
    assert!(
        e.contains("key `right.ring`: ring of 128 MiB does not fit in memory: a ring is at most"),
        "{e}"
    );
    let e = err(&RIGHT_AB.replace("\"64K\"", "1024"));
    assert!(
        e.contains("key `right.ring`: ring of 1 KiB is too small: at least 4 KiB"),
        "{e}"
    );
    let e = err(&RIGHT_AB.replace("\"64K\"", "\"lots\""));
    assert!(e.contains("key `right.ring`: `lots` is not a size"), "{e}");
}

#[test]
fn quota_of_zero() {
    let e = err(&RIGHT_AB.replace("burst = 16", "burst = 0"));
    assert!(
        e.contains("key `right.quota.burst`: a quota of zero forbids the edge"),
        "{e}"
    );
    let e = err(&RIGHT_AB.replace("messages_per_sec = 1000", "messages_per_sec = 0"));
    assert!(
        e.contains("key `right.quota.messages_per_sec`: a quota of zero"),
        "{e}"
    );
}

#[test]
fn missing_quota() {
    let e = err(&RIGHT_AB.replace(
        "quota = { messages_per_sec = 1000, bytes_per_sec = 65536, burst = 16 }",
        "",
    ));
    assert!(e.contains("key `quota`: missing field `quota`"), "{e}");
}

#[test]
fn edge_granted_twice() {
    let e = err(&format!(
        "{RIGHT_AB}{}",
        RIGHT_AB.replace("from = \"a\"\nto = \"b\"", "from = \"b\"\nto = \"a\"")
    ));
    assert!(
        e.contains("key `right`: `b` -> `a` is already granted on line"),
        "{e}"
    );
}

#[test]
fn self_channel() {
    let e = err(&RIGHT_AB.replace("to = \"b\"", "to = \"a\""));
    assert!(
        e.contains("key `right.to`: a partition needs no channel to itself"),
        "{e}"
    );
}

#[test]
fn bad_tags() {
    let e = err(&RIGHT_AB.replace("[0, 99]", "[99, 0]"));
    assert!(
        e.contains("key `right.tags`: tags must be `[first, last]`"),
        "{e}"
    );
}

#[test]
fn uhyve_partition_with_channel() {
    let text = format!("{BASE}{RIGHT_AB}").replacen(
        "name = \"b\"\nservice = \"hello\"",
        "name = \"b\"\nhypervisor = \"uhyve\"\nservice = \"hello\"",
        1,
    );
    let e = parse(Path::new("t.toml"), &text).unwrap_err().to_string();
    assert!(
        e.contains("key `right.to`: partition `b` runs under uhyve, which has no shared memory"),
        "{e}"
    );
}

#[test]
fn missing_image_file() {
    let e = err("\n[[partition]]\nname = \"d\"\nimage = \"no/such.elf\"\nmemory = \"8M\"\n");
    assert!(
        e.contains("key `partition.image`: image no/such.elf does not exist"),
        "{e}"
    );
}

#[test]
fn service_or_image() {
    let e = err("\n[[partition]]\nname = \"d\"\nmemory = \"8M\"\n");
    assert!(
        e.contains("key `partition.service`: partition `d` needs"),
        "{e}"
    );
}

#[test]
fn memory_bounds() {
    let e = err("\n[[partition]]\nname = \"d\"\nservice = \"x\"\nmemory = \"1M\"\n");
    assert!(
        e.contains("key `partition.memory`: 1 MiB is outside 4 MiB..=64 GiB"),
        "{e}"
    );
}

#[test]
fn bad_names_and_args() {
    let e = err("\n[[partition]]\nname = \"a b\"\nservice = \"x\"\nmemory = \"8M\"\n");
    assert!(
        e.contains("key `partition.name`: `a b` is not a valid name"),
        "{e}"
    );
    let e = err(
        "\n[[partition]]\nname = \"d\"\nservice = \"x\"\nmemory = \"8M\"\nargs = [\"k=v w\"]\n",
    );
    assert!(
        e.contains("key `partition.args`: `k=v w` is not `key=value`"),
        "{e}"
    );
    let e = err("\n[[group]]\nname = \"world\"\nmembers = [\"a\"]\n");
    assert!(e.contains("`world` is the implicit group"), "{e}");
    let e = err("\n[[partition]]\nname = \"Web\"\nservice = \"x\"\nmemory = \"8M\"\n");
    assert!(
        e.contains("`Web` is not a valid name: use 1 to 32 of a-z 0-9 _ -, starting with a letter"),
        "{e}"
    );
}

#[test]
fn impossible_fault_policies() {
    let p =
        |s: &str| format!("\n[[partition]]\nname = \"d\"\nservice = \"x\"\nmemory = \"8M\"\n{s}\n");
    let e = err(&p("on_fault = \"restart\""));
    assert!(
        e.contains("key `partition.on_fault`: `restart` needs `max_restarts`"),
        "{e}"
    );
    let e = err(&p("on_fault = \"stop\"\nmax_restarts = 3"));
    assert!(
        e.contains("key `partition.max_restarts`: `max_restarts` only applies"),
        "{e}"
    );
    let e = err(&p("max_restarts = 3"));
    assert!(e.contains("`max_restarts` only applies"), "{e}");
    let e = err(&p("on_fault = \"restart\"\nmax_restarts = 0"));
    assert!(
        e.contains("restart with a limit of 0 never restarts"),
        "{e}"
    );
    let s = ok(&p("on_fault = \"restart\"\nmax_restarts = 2"));
    assert_eq!(s.partitions[3].on_fault, FaultPolicy::Restart { max: 2 });
}

#[test]
fn impossible_monitor_policies() {
    let e = err("\n[monitor]\non_flood = \"kill\"\n");
    assert!(
        e.contains("key `monitor.on_flood`: no partition meters the channels"),
        "{e}"
    );
    let e = err("\n[monitor]\npartition = \"m\"\n");
    assert!(
        e.contains("key `monitor.partition`: no partition named `m`"),
        "{e}"
    );
    let e = err(
        "\n[[partition]]\nname = \"m\"\nservice = \"x\"\nmemory = \"8M\"\non_fault = \"restart\"\nmax_restarts = 1\n[monitor]\npartition = \"m\"\n",
    );
    assert!(e.contains("the monitor `m` cannot be restarted"), "{e}");
    let e = err("\n[monitor]\nperiod_ms = 0\n");
    assert!(e.contains("key `monitor.period_ms`"), "{e}");
    let s = ok("\n[monitor]\npartition = \"c\"\non_flood = \"kill\"\nperiod_ms = 50\n");
    assert_eq!(
        (s.monitor.partition, s.monitor.on_flood, s.monitor.period_ms),
        (Some(2), FloodVerdict::Kill, 50)
    );
}

#[test]
fn no_partitions() {
    let e = parse(Path::new("t.toml"), "[system]\nname = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t.toml:1: key `partition`: the system has no `[[partition]]`: add at least one"
    );
}

#[test]
fn toml_syntax_error_names_line() {
    let e = err("\n[[group]]\nname = \n");
    assert!(
        e.starts_with(&format!(
            "t.toml:{}: key `name`:",
            line_of("\n[[group]]\nname = \n", "name = \n")
        )),
        "{e}"
    );
}

#[test]
fn unreadable_file() {
    let e = load(Path::new("/nonexistent/x.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/x.toml: cannot read manifest"),
        "{e}"
    );
}

#[test]
fn channel_sizes_follow_the_interconnect_geometry() {
    let g = channel_geometry(4096, 0);
    assert_eq!((g.slots, g.data_len), (64, 4096));
    assert!(g.validate().is_ok());
    assert_eq!(channel_file_bytes(4096, 0), MIN_CHANNEL_BYTES);
    let g = channel_geometry(64 << 20, 4096);
    assert!(g.validate().is_ok());
    assert!(g.region_len() as u64 <= channel_file_bytes(64 << 20, 4096));
    assert_eq!(channel_file_bytes(64 << 20, 0), 256 << 20);
}

#[test]
fn sizes() {
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("64K"), Some(65536));
    assert_eq!(parse_size("2MiB"), Some(2 << 20));
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("1T"), None);
    assert_eq!(parse_size("m"), None);
    assert_eq!(human_bytes(65536), "64 KiB");
    assert_eq!(human_bytes(100), "100 B");
}

#[test]
fn checked_in_manifests_are_valid() {
    for m in ["hello.toml", "demo.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(m);
        load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn too_many_channels_on_one_partition() {
    let mut extra = String::new();
    for i in 0..=MAX_CHANNELS_PER_PARTITION {
        extra.push_str(&format!(
            "\n[[partition]]\nname = \"p{i}\"\nservice = \"x\"\nmemory = \"8M\"\n[[right]]\nfrom = \"a\"\nto = \"p{i}\"\nring = \"4K\"\nquota = {{ messages_per_sec = 1, bytes_per_sec = 1, burst = 1 }}\n"
        ));
    }
    let e = err(&extra);
    assert!(
        e.contains("key `right`: partition `a` would have 9 channels; its runtime maps at most 8"),
        "{e}"
    );
}

#[test]
fn the_monitors_limits_apply() {
    let parts = |n: usize| {
        (0..n)
            .map(|i| {
                format!("\n[[partition]]\nname = \"p{i}\"\nservice = \"x\"\nmemory = \"8M\"\n")
            })
            .collect::<String>()
    };
    // BASE has 3 partitions; the monitor's table holds 64.
    assert_eq!(ok(&parts(61)).rights.partitions().len(), 64);
    let e = err(&parts(62));
    assert_eq!(
        e,
        "t.toml:2: key `partition`: the monitor's rights table rejects it: too many partitions (at most 64)"
    );
}
