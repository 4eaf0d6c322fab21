//! Adversarial compositions booted with `vmpi up`, the `scenario` partition (its
//! behaviour scripted in the manifest) and the `monitor-vm` partition; each checks
//! exact outcomes:
//! - `flood.toml`: a flooder (as fast as it can, 10,000 msg/s quota, burst 100) is
//!   convicted, its channel revoked, its VM killed; the receiver gets every message
//!   of the two well-behaved senders (count, order and checksum recomputed here);
//! - `rights.toml`: sends outside the rights the monitor published (no channel, tag
//!   out of range, non-blocking not granted) get `PermissionDenied`; a PCI scan finds only the
//!   channels a partition was given (none for a partition with no right);
//! - `timeout.toml`: a blocking send to a peer that never receives ends in `Timeout`;
//! - `corrupt.toml`: a peer writing a malformed message into its ring is refused
//!   by the receiver, which keeps serving its other peer; the monitor logs the
//!   receiver's report;
//! - `hostile.toml`: garbage, or a record naming another partition, sent on a
//!   control channel to the monitor convicts the sender as hostile (revoked, killed);
//!   valid heartbeats convict nobody;
//! - `restart.toml`: a crashing service (`on_fault = "restart"`, one restart) is
//!   convicted by the monitor, its channel revoked and reopened, restarted as
//!   generation 1 on the monitor's command, and left dead when that one crashes too;
//! - `restart-reattach.toml`: generational ids in the fabric: after a restart, the
//!   surviving peer's receive on the channel it attached to generation 0 fails with
//!   `PeerDead` (generation 1's message, already in the ring, is not delivered to it);
//!   after `reattach` both exchange messages with generation 1; the monitor's own end
//!   of the reopened control channel follows, so generation 1's heartbeat reaches it;
//! - `restart-launcher.toml`: the same without a monitor partition: the launcher
//!   restarts on its own and reopens the channel for generation 1.
//! - `unpublished.toml`: the monitor partition, which publishes every channel's
//!   rights, fails before it does: the channel stays pending and both its ends exit
//!   with the fabric's status 93 after 5 s instead of hanging;
//! - `unauthorized.toml`: a partition writing by hand into its ring on a direction it
//!   has no right to send on (its fabric refused the same send) is convicted by the
//!   monitor, which meters every direction of every channel (revoked, killed).
//!
//! Latencies the monitor logs are printed, not asserted (BENCHMARKS.md has them).

use std::path::Path;

use vmpi_tests::say;
use vmpi_tests::system::{FNV0, TempDir, assert_clean, fnv, log, text, up};

/// Checksum of `count` scenario messages of `size` bytes from rank `s`: message `i`
/// is `i` (u32 LE), `s` (u32 LE), then byte `k` = `i * 31 + k` (mod 256).
fn scenario_checksum(s: u32, size: usize, count: u32) -> u64 {
    (0..count).fold(FNV0, |h, i| {
        let m: Vec<u8> = (0..size)
            .map(|k| match k {
                0..4 => i.to_le_bytes()[k],
                4..8 => s.to_le_bytes()[k - 4],
                _ => (i.wrapping_mul(31) as u8).wrapping_add(k as u8),
            })
            .collect();
        fnv(h, &m)
    })
}

fn assert_has(log: &str, needle: &str) {
    assert!(log.contains(needle), "expected `{needle}` in:\n{log}");
}

/// The scenario's JSON report in a partition's log.
fn report(log: &str) -> &str {
    log.lines()
        .find_map(|l| l.split_once("scenario: {").map(|(_, j)| j))
        .unwrap_or_else(|| panic!("no scenario report in:\n{log}"))
}

/// `sink`'s report in flood.toml, flood-revoke.toml and unrevoke.toml: all 2,000 messages of `good1`
/// (64 B) and `good2` (8 B), intact and in order.
fn assert_sink_got_both_senders(r: &str) {
    assert_has(r, r#""op":"recv","done":2000,"outcome":"ok""#);
    for (from, size) in [(1u32, 64usize), (2, 8)] {
        let sum = scenario_checksum(from, size, 1000);
        assert_has(
            r,
            &format!(
                r#"{{"from":{from},"count":1000,"other":0,"bad":0,"in_order":true,"checksum":"{sum:#018x}"}}"#
            ),
        );
    }
}

#[test]
fn flooder_is_killed_and_its_victim_loses_nothing() {
    let d = TempDir::new("flood");
    let (o, pid) = up("flood.toml", &d.0);
    let all = text(&o);
    // The worst outcome is the flooder's: killed on the monitor's verdict.
    assert_eq!(o.status.code(), Some(137), "{all}");
    assert_has(&all, "flooder      killed on the monitor's verdict");
    for ok in ["sink ", "good1", "good2", "monitor "] {
        assert!(
            all.lines()
                .any(|l| l.contains(&format!("[vmpi]   {ok}")) && l.contains("status 0 (success)")),
            "{ok} did not succeed:\n{all}"
        );
    }
    assert_has(
        &all,
        "[vmpi] kill: flooder (generation 0) on the monitor's command",
    );
    let monitor = log(&d.0, "monitor");
    // The verdict with its evidence, the revoke of the flooder's edge, the kill.
    assert_has(&monitor, "verdict: flood: p3.g0 on ");
    assert_has(&monitor, "against quota 10000/s burst 100 (edge 3 -> 0;");
    assert_has(&monitor, "revoke: edge ");
    assert_has(&monitor, "kill: asked the launcher to kill p3.g0");
    assert_has(&monitor, "killed: p3.g0 gone at");
    assert_has(&monitor, "monitor: every partition has ended; stopping");
    // The victim: every message of both well-behaved senders, intact, in order.
    let sink = log(&d.0, "sink");
    let r = report(&sink);
    assert_sink_got_both_senders(r);
    assert_has(r, r#""expects_failed":0"#);
    for good in ["good1", "good2"] {
        assert_has(
            report(&log(&d.0, good)),
            r#"{"op":"send","done":1000,"outcome":"ok""#,
        );
    }
    for l in monitor
        .lines()
        .filter(|l| l.contains("verdict:") || l.contains("killed:"))
    {
        say(format_args!("flood: {l}"));
    }
    assert_clean(pid);
}

#[test]
fn with_on_flood_revoke_a_flooder_loses_its_channel_and_nothing_else() {
    let d = TempDir::new("flood-revoke");
    let (o, pid) = up("flood-revoke.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let monitor = log(&d.0, "monitor");
    assert_has(&monitor, "on_flood=Revoke");
    assert_has(&monitor, "verdict: flood: p3.g0 on ");
    assert_has(&monitor, "revoke: edge 2 (3 -> 0)");
    assert!(!monitor.contains("kill:"), "{monitor}");
    // The flooder's next send after the revoke failed; it ran on and ended well.
    let flooder = log(&d.0, "flooder");
    assert_has(report(&flooder), r#""outcome":"Revoked""#);
    assert_has(report(&flooder), r#""expects_failed":0"#);
    // The victim: every message of both well-behaved senders, intact, in order.
    let sink = log(&d.0, "sink");
    let r = report(&sink);
    assert_sink_got_both_senders(r);
    assert_clean(pid);
}

#[test]
fn a_flooder_that_undoes_its_revocation_is_killed() {
    let d = TempDir::new("unrevoke");
    let (o, pid) = up("unrevoke.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(137), "{all}");
    assert_has(&all, "flooder      killed on the monitor's verdict");
    let monitor = log(&d.0, "monitor");
    assert_in_order(
        &monitor,
        &[
            "verdict: flood: p3.g0 on ",
            "revoke: edge 2 (3 -> 0)",
            "verdict: Unrevoked { edge: EdgeId(2), from: PartitionId { index: 3, generation: 0 }",
            "revoke: edge 2 (3 -> 0)",
            "kill: asked the launcher to kill p3.g0",
        ],
    );
    // Killed in its `unrevoke` step, before its report.
    assert_has(&log(&d.0, "flooder"), "scenario: expect Revoked: held");
    let sink = log(&d.0, "sink");
    assert_sink_got_both_senders(report(&sink));
    assert_clean(pid);
}

#[test]
fn sends_outside_the_rights_are_refused_and_a_scan_finds_only_granted_channels() {
    let d = TempDir::new("rights");
    let (o, pid) = up("rights.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "every partition succeeded -> exit status 0");
    // The rights below are the ones the monitor published (the command line carries
    // none).
    assert_has(
        &log(&d.0, "monitor"),
        "monitor: published the rights of 1 channel(s)",
    );
    let a = log(&d.0, "a");
    let r = report(&a);
    // One channel (to b) in PCI slot 1: nothing else on its bus.
    assert_has(r, r#"{"op":"scan","done":1,"outcome":"ok","devices":[1]}"#);
    // No channel to c; tag 99 outside 0..=15; non-blocking not granted; then allowed.
    let steps: Vec<&str> = r
        .match_indices(r#""outcome":""#)
        .map(|(i, _)| {
            let rest = &r[i + 11..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(
        steps,
        [
            "ok",
            "PermissionDenied",
            "PermissionDenied",
            "PermissionDenied",
            "ok"
        ],
        "{r}"
    );
    assert_has(r, r#""expects_failed":0"#);
    let b = log(&d.0, "b");
    let r = report(&b);
    assert_has(r, r#"{"op":"scan","done":1,"outcome":"ok","devices":[1]}"#);
    assert_has(r, r#"{"op":"send","done":0,"outcome":"PermissionDenied""#);
    let sum = scenario_checksum(0, 8, 1);
    assert_has(
        r,
        &format!(
            r#"{{"from":0,"count":1,"other":0,"bad":0,"in_order":true,"checksum":"{sum:#018x}"}}"#
        ),
    );
    // c was granted nothing: no channel, no device, every send refused.
    let c = log(&d.0, "c");
    let r = report(&c);
    assert_has(r, r#"{"op":"scan","done":0,"outcome":"ok","devices":[]}"#);
    assert_has(r, r#"{"op":"send","done":0,"outcome":"PermissionDenied""#);
    assert_clean(pid);
}

#[test]
fn a_blocking_send_to_a_silent_peer_times_out() {
    let d = TempDir::new("timeout");
    let (o, pid) = up("timeout.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let sender = log(&d.0, "sender");
    let r = report(&sender);
    // The 4 KiB ring holds 64 messages of 64 bytes; the 65th send waits out its
    // 300 ms deadline.
    assert_has(r, r#"{"op":"send","done":64,"outcome":"Timeout""#);
    assert_has(r, r#""expects_failed":0"#);
    assert_clean(pid);
}

#[test]
fn a_crashing_service_is_restarted_by_the_monitor_then_stays_dead() {
    let d = TempDir::new("restart");
    let (o, pid) = up("restart.toml", &d.0);
    let all = text(&o);
    // The worst outcome is the crasher's panic status (100); its peer and the
    // monitor end well (their QEMUs survive the crasher's two exits).
    assert_eq!(o.status.code(), Some(100), "{all}");
    assert_has(
        &all,
        "crasher      status 100 (service panicked), 1 restart(s)",
    );
    assert_has(&all, "peer         status 0 (success)");
    assert_has(&all, "monitor      status 0 (success)");
    // The launcher restarted it only on the monitor's command.
    assert_has(
        &all,
        "[vmpi] restart: crasher as generation 1 on the monitor's command",
    );
    let monitor = log(&d.0, "monitor");
    let steps = [
        "exit: p0.g0 ended with 0x64",
        "verdict: Crashed { id: PartitionId { index: 0, generation: 0 }, status: 100",
        "revoke: edge 0 (0 -> 1)",
        "reopen: channel 0-1",
        "restart: asked the launcher to start p0.g1",
        "exit: p0.g1 ended with 0x64",
        "verdict: Crashed { id: PartitionId { index: 0, generation: 1 }, status: 100",
        "stopped: p0.g1 stays dead after 1 restart(s)",
        "monitor: every partition has ended; stopping",
    ];
    let mut at = 0;
    for s in steps {
        let i = monitor[at..]
            .find(s)
            .unwrap_or_else(|| panic!("`{s}` missing or out of order in:\n{monitor}"));
        at += i + s.len();
    }
    // Generation 1 ran the same script: both incarnations' logs are kept.
    assert_eq!(
        log(&d.0, "crasher").matches("scenario: fault step").count(),
        2
    );
    assert_clean(pid);
}

/// Each of `steps` occurs in `log`, in this order.
fn assert_in_order(log: &str, steps: &[&str]) {
    let mut at = 0;
    for s in steps {
        let i = log[at..]
            .find(s)
            .unwrap_or_else(|| panic!("`{s}` missing or out of order in:\n{log}"));
        at += i + s.len();
    }
}

/// The logs of a `restart-*.toml` run: the peer got `PeerDead` on the link it attached
/// to generation 0 of `crasher` (while generation 1's message already waited in the
/// ring), re-attached, received that one message and replied; generation 1 skipped
/// the fault and got the reply.
fn assert_reattached(logs: &Path) {
    // The peer: PeerDead on the stale link, then generation 1's one message.
    let peer = log(logs, "peer");
    let r = report(&peer);
    assert_in_order(
        r,
        &[
            r#"{"op":"recv","done":0,"outcome":"PeerDead""#,
            r#"{"op":"reattach","done":1,"outcome":"ok","generation":1}"#,
            r#"{"op":"recv","done":1,"outcome":"ok""#,
            r#"{"op":"send","done":1,"outcome":"ok""#,
        ],
    );
    let from0 = format!(
        r#"{{"from":0,"count":1,"other":0,"bad":0,"in_order":true,"checksum":"{:#018x}"}}"#,
        scenario_checksum(0, 8, 1)
    );
    assert_has(r, &from0);
    assert_has(r, r#""expects_failed":0"#);
    // Generation 1 skipped the fault, sent, and got the peer's reply.
    let crasher = log(logs, "crasher");
    assert_eq!(crasher.matches("scenario: fault step").count(), 1);
    let r = report(&crasher);
    assert_has(r, r#"{"op":"fault","done":0,"outcome":"ok"}"#);
    let from1 = format!(
        r#"{{"from":1,"count":1,"other":0,"bad":0,"in_order":true,"checksum":"{:#018x}"}}"#,
        scenario_checksum(1, 8, 1)
    );
    assert_has(r, &from1);
    assert_has(r, r#""expects_failed":0"#);
}

#[test]
fn a_stale_id_gets_peer_dead_and_a_reattached_peer_talks_to_the_new_generation() {
    let d = TempDir::new("restart-reattach");
    let (o, pid) = up("restart-reattach.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "crasher      status 0 (success), 1 restart(s)");
    assert_has(&all, "peer         status 0 (success)");
    let monitor = log(&d.0, "monitor");
    assert_in_order(
        &monitor,
        &[
            "heartbeat: p0.g0 on the control channel of 0",
            "verdict: Crashed { id: PartitionId { index: 0, generation: 0 }, status: 100",
            "reopen: channel 0-1 as generations [1, 0]",
            "reopen: channel 0-2 as generations [1, 0]",
            "reattach: control channel of 0 generation 1",
            "restart: asked the launcher to start p0.g1",
            // Generation 1's heartbeat reaches the monitor's re-attached end.
            "heartbeat: p0.g1 on the control channel of 0",
        ],
    );
    assert!(!monitor.contains("Hostile"), "{monitor}");
    assert_reattached(&d.0);
    assert_clean(pid);
}

#[test]
fn without_a_monitor_the_launcher_reopens_for_the_new_generation() {
    let d = TempDir::new("restart-launcher");
    let (o, pid) = up("restart-launcher.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "crasher: on_fault = restart (1/1)");
    assert_has(&all, "crasher      status 0 (success), 1 restart(s)");
    assert_has(&all, "peer         status 0 (success)");
    assert_reattached(&d.0);
    assert_clean(pid);
}

#[test]
fn a_peer_corrupting_its_ring_is_reported_and_the_receiver_serves_the_others() {
    let d = TempDir::new("corrupt");
    let (o, pid) = up("corrupt.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "every partition succeeded -> exit status 0");
    let corrupter = log(&d.0, "corrupter");
    assert_has(
        report(&corrupter),
        r#"{"op":"corrupt","done":1,"outcome":"ok","slot":10}"#,
    );
    // The sink took the 10 valid messages before the bad one, refused that one, and
    // received every message of `good`, intact and in order.
    let sink = log(&d.0, "sink");
    let r = report(&sink);
    let sum = scenario_checksum(1, 16, 1000);
    assert_has(
        r,
        &format!(
            r#"{{"from":1,"count":1000,"other":0,"bad":0,"in_order":true,"checksum":"{sum:#018x}"}}"#
        ),
    );
    assert_has(
        r,
        r#"{"from":2,"count":0,"other":10,"bad":0,"in_order":true"#,
    );
    assert_has(r, r#""expects_failed":0"#);
    // The receiver's malformed counter reached the monitor: a report, not a verdict
    // against anyone (the corrupter is not killed on the receiver's word).
    let monitor = log(&d.0, "monitor");
    assert_has(
        &monitor,
        "malformed: p0.g0 counts 1 malformed message(s) from p2.g0",
    );
    assert_has(
        &monitor,
        "verdict: Reported { by: PartitionId { index: 0, generation: 0 }, peer: PartitionId { index: 2, generation: 0 }",
    );
    assert!(!monitor.contains("kill:"), "{monitor}");
    assert_clean(pid);
}

#[test]
fn garbage_on_a_control_channel_to_the_monitor_is_hostile() {
    let d = TempDir::new("hostile");
    let (o, pid) = up("hostile.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(137), "{all}");
    assert_has(&all, "liar         killed on the monitor's verdict");
    assert_has(&all, "impostor     killed on the monitor's verdict");
    assert_has(&all, "honest       status 0 (success)");
    assert_has(&all, "monitor      status 0 (success)");
    let monitor = log(&d.0, "monitor");
    // Valid heartbeats convict nobody; garbage and a record naming another
    // partition convict their sender (known by the channel, not the record).
    assert_has(
        &monitor,
        "verdict: Hostile { from: PartitionId { index: 0, generation: 0 }, reason: BadMagic",
    );
    assert_has(
        &monitor,
        "verdict: Hostile { from: PartitionId { index: 1, generation: 0 }, reason: Impersonation",
    );
    assert_has(&monitor, "revoke: edge 0 (0 -> 3)");
    assert_has(&monitor, "revoke: edge 1 (1 -> 3)");
    assert!(
        !monitor.contains("index: 2, generation: 0 }, reason"),
        "{monitor}"
    );
    assert_has(report(&log(&d.0, "honest")), r#""expects_failed":0"#);
    assert_clean(pid);
}

#[test]
fn rights_come_from_the_monitor_and_a_partition_does_not_wait_forever_for_them() {
    let d = TempDir::new("unpublished");
    let (o, pid) = up("unpublished.toml", &d.0);
    let all = text(&o);
    // The monitor fails before publishing; the channel stays pending, and the
    // launcher (a monitor being configured) does not publish it either.
    assert_has(&all, "monitor      status 90 (service status)");
    assert_has(&all, "a            status 93 (service status)");
    assert_has(&all, "b            status 93 (service status)");
    assert_has(&log(&d.0, "monitor"), "monitor: bad watch=`bogus`");
    for name in ["a", "b"] {
        assert_has(
            &log(&d.0, name),
            "still pending after 5000 ms: nobody published its rights (exit 93)",
        );
    }
    assert_clean(pid);
}

#[test]
fn a_send_on_a_direction_without_a_right_convicts_the_sender() {
    let d = TempDir::new("unauthorized");
    let (o, pid) = up("unauthorized.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(137), "{all}");
    assert_has(&all, "a            killed on the monitor's verdict");
    assert_has(&all, "b            status 0 (success)");
    assert_has(&all, "monitor      status 0 (success)");
    let monitor = log(&d.0, "monitor");
    assert_has(&monitor, "monitor: published the rights of 1 channel(s)");
    // The published rights refused the send through the fabric; the hand-written
    // message on the same direction convicts its sender (killed before its report,
    // at times while it logs the `corrupt` step: the verdict below is the evidence).
    let a = log(&d.0, "a");
    assert_has(&a, "scenario: send -> 0 PermissionDenied");
    assert_has(
        &monitor,
        "verdict: Unauthorized { from: PartitionId { index: 0, generation: 0 }, to: 1, messages: 1,",
    );
    assert_has(&monitor, "revoke: edge 0 (1 -> 0)");
    assert_has(&monitor, "kill: asked the launcher to kill p0.g0");
    assert_clean(pid);
}

#[test]
fn a_peer_forging_rights_in_the_control_block_cannot_get_an_honest_partition_convicted() {
    let d = TempDir::new("forged");
    let (o, pid) = up("forged.toml", &d.0);
    let all = text(&o);
    // Without the command line's word on each direction, generation 1 took the forged
    // send right, sent, and was convicted `Unauthorized` and killed (exit 137).
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "victim       status 0 (success), 1 restart(s)");
    assert_has(&all, "forger       status 0 (success)");
    let monitor = log(&d.0, "monitor");
    assert_has(&monitor, "reopen: channel 0-1");
    assert!(!monitor.contains("Unauthorized"), "{monitor}");
    let victim = log(&d.0, "victim");
    assert_has(&victim, "scenario: send -> 0 PermissionDenied");
    assert_has(&victim, "\"expects_failed\":0");
    // The forger kept rewriting the rights all along.
    assert_has(&log(&d.0, "forger"), "scenario: forge -> 1 ok");
    assert_clean(pid);
}
