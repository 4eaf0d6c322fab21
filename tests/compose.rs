//! Compositions booted with `vmpi up` and the `demo` partition image:
//! - three partitions in two groups: messages flow inside a group, intact and in
//!   order; a send across groups is refused with `PermissionDenied`; nothing is left
//!   behind (no /dev/shm file, run folder, socket or QEMU);
//! - four partitions on a two-core host, two pairs exchanging 1,000 messages each
//!   way with spin-then-block: every message arrives (count and checksum, recomputed
//!   here); the latency seen is printed, not asserted.

use vmpi_tests::say;
use vmpi_tests::system::{FNV0, TempDir, assert_clean, fnv, log, text, up};

/// Checksum of the demo's sequence check: message `i` is `i` (u32 LE) followed by
/// `i % 200` pattern bytes.
fn sequence_checksum(count: u32) -> u64 {
    (0..count).fold(FNV0, |h, i| {
        let mut m = i.to_le_bytes().to_vec();
        m.extend((0..i % 200).map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8)));
        fnv(h, &m)
    })
}

/// Checksum of what rank `me` receives from `from` in the exchange: message `i` is
/// `i` (u32 LE) and `i * 2654435761 ^ from` (u32 LE).
fn exchange_checksum(from: u32, rounds: u32) -> u64 {
    (0..rounds).fold(FNV0, |h, i| {
        let mut m = i.to_le_bytes().to_vec();
        m.extend((i.wrapping_mul(2_654_435_761) ^ from).to_le_bytes());
        fnv(h, &m)
    })
}

fn assert_has(log: &str, needle: &str) {
    assert!(log.contains(needle), "expected `{needle}` in:\n{log}");
}

#[test]
fn three_partitions_two_groups() {
    let d = TempDir::new("three");
    let (o, pid) = up("compose.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "every partition succeeded -> exit status 0");

    let (client, names, store) = (log(&d.0, "client"), log(&d.0, "names"), log(&d.0, "store"));
    // Inside group `naming`: 200 messages of 4..=203 bytes, intact and in order,
    // checked by names message by message and by checksum at both ends.
    let sum = format!("{:#018x}", sequence_checksum(200));
    assert_has(
        &names,
        &format!("names: 200 messages arrived intact and in order (checksum {sum})"),
    );
    assert_has(
        &client,
        &format!("client: naming: 200 messages arrived intact and in order (checksum {sum})"),
    );
    assert_has(&client, "client: naming: 6 lookups answered");
    // Inside group `storage`: non-blocking puts, gets of what was stored.
    assert_has(
        &client,
        "client: storage: 17 puts, 17 gets, values as stored",
    );
    // Across groups: names and store share no channel; each is refused.
    assert_has(
        &names,
        "names: send to rank 2 (no right) -> PermissionDenied",
    );
    assert_has(
        &store,
        "store: send to rank 1 (no right) -> PermissionDenied",
    );
    assert_has(
        &client,
        "client: send to rank 2 of `storage` (not a member) -> PermissionDenied",
    );
    assert_has(
        &client,
        "client: non-blocking send to names (not granted) -> PermissionDenied",
    );
    assert_has(&client, "client: all checks passed");
    for l in client.lines().filter(|l| l.contains("client:   ")) {
        say(format_args!("compose: {l}"));
    }
    assert_clean(pid);
}

#[test]
fn four_partitions_on_two_cores_exchange_every_message() {
    let d = TempDir::new("four");
    let (o, pid) = up("exchange.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "every partition succeeded -> exit status 0");
    for me in 0..4u32 {
        let peer = me ^ 1;
        let l = log(&d.0, &format!("e{me}"));
        let sum = format!("{:#018x}", exchange_checksum(peer, 1000));
        assert_has(
            &l,
            &format!(
                "exchange: rank {me}: received 1000/1000 messages from rank {peer} in order, checksum {sum}"
            ),
        );
        for line in l
            .lines()
            .filter(|l| l.contains("round trip") || l.contains("received"))
        {
            say(format_args!("exchange: {line}"));
        }
    }
    assert_clean(pid);
}

#[test]
fn bad_fabric_command_lines_end_with_a_status_and_a_reason() {
    let d = TempDir::new("bad");
    let (o, pid) = up("compose-bad.toml", &d.0);
    let all = text(&o);
    assert_ne!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "garbled      status 90");
    assert_has(&all, "nodevice     status 91");
    assert_has(
        &log(&d.0, "garbled"),
        "fabric: bad ch=`x`: expected SLOT:PEER:SIDE:TX:RX (exit 90)",
    );
    assert_has(
        &log(&d.0, "nodevice"),
        "fabric: ch= slot 5 (peer 0): no ivshmem device in that slot (exit 91)",
    );
    assert_clean(pid);
}
