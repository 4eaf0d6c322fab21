//! Demo partition: one image, several roles, all talking through the interconnect.
//!
//! The role is `role=` on the command line, else the partition's `name=`:
//! - `client`: looks names up (group `naming`), stores and reads back keys (group
//!   `storage`), sends a numbered sequence and checks it arrived intact and in order,
//!   checks that what it was not granted is refused (`PermissionDenied`), measures
//!   8-byte round trips to each service (spin-then-block) and prints a latency table.
//! - `names`: answers lookups from a fixed table; checks sequences.
//! - `store`: keeps key/values.
//! - `log`: prints the lines the services send it until each has said goodbye.
//! - `exchange`: pairs of ranks (2k, 2k+1) exchange `rounds=` messages (default 1000);
//!   both sides count and checksum what they receive; the even side logs latencies.
//!
//! Services end when the client says stop; before that they check that sends to
//! ranks they share no channel with (the other group) are refused. Every partition
//! exits 0 when everything it expected happened, 1 on a fabric error, 2 on wrong data
//! or a missing refusal.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use fabric::interconnect::{ANY_SOURCE, ANY_TAG, Comm, Endpoint, Error, Rank};
use fabric::{Args, Guest};

rt::entry!(main);

type Ep = Endpoint<Guest>;

/// Message tags (the services' sends to the log must stay in 0..=15).
mod tag {
    pub const LOOKUP: u32 = 1;
    pub const PUT: u32 = 2;
    pub const GET: u32 = 3;
    pub const REPLY: u32 = 4;
    pub const SEQ: u32 = 5;
    pub const SEQ_END: u32 = 6;
    pub const PING: u32 = 7;
    pub const STOP: u32 = 8;
    pub const LOG: u32 = 9;
    pub const BYE: u32 = 10;
    /// Outside every granted range of the demo: must be refused.
    pub const FORBIDDEN: u32 = 20;
}

/// How long a service waits for its next request.
const SERVICE_MS: u64 = 120_000;
/// How long one request/reply may take.
const CALL_MS: u64 = 20_000;
/// Messages of the sequence check.
const SEQ_COUNT: u32 = 200;

/// The name table.
const NAMES: &[(&str, &str)] = &[
    ("client", "rank 0"),
    ("names", "rank 1"),
    ("store", "rank 2"),
    ("log", "rank 3"),
    ("monitor", "rank 4"),
];

enum Fail {
    Fabric(String, Error),
    Wrong(String),
}

type Res<T> = Result<T, Fail>;

fn ctx<T>(what: &str, r: Result<T, Error>) -> Res<T> {
    r.map_err(|e| Fail::Fabric(String::from(what), e))
}

fn wrong<T>(msg: String) -> Res<T> {
    Err(Fail::Wrong(msg))
}

fn main() -> u8 {
    let role = rt::arg("role").or(rt::arg("name")).unwrap_or("");
    let mut ep = fabric::endpoint_or_exit();
    let args = match Args::parse(rt::args()) {
        Ok(a) => a,
        Err(e) => {
            rt::log!("{role}: {e}");
            return fabric::exit::BAD_ARGS;
        }
    };
    let r = match role {
        "client" => client(&mut ep),
        "names" => service(&mut ep, &args, "names", "naming"),
        "store" => service(&mut ep, &args, "store", "storage"),
        "log" => log(&mut ep, &args),
        "exchange" => exchange(&mut ep),
        _ => {
            rt::log!("demo: unknown role `{role}` (role= or name=)");
            return fabric::exit::BAD_ARGS;
        }
    };
    match r {
        Ok(()) => 0,
        Err(Fail::Fabric(what, e)) => {
            rt::log!("{role}: FAILED: {what}: {e}");
            1
        }
        Err(Fail::Wrong(msg)) => {
            rt::log!("{role}: FAILED: {msg}");
            2
        }
    }
}

/// The group `name` and the comm rank of the other member (two-member groups).
fn pair(ep: &Ep, name: &str) -> Res<(Comm, Rank)> {
    let Some(c) = ctx("group", ep.group(name))? else {
        return wrong(format!("not a member of group `{name}`"));
    };
    let Some(other) = (0..c.size()).find(|&r| r != c.rank()) else {
        return wrong(format!("group `{name}` has no other member"));
    };
    Ok((c, other))
}

/// Request/reply: sends `data` with `t`, waits for the REPLY, returns its bytes.
fn call(ep: &mut Ep, c: &Comm, to: Rank, t: u32, data: &[u8]) -> Res<Vec<u8>> {
    let dl = ep.after_ms(CALL_MS);
    ctx("request", ep.send(c, to, t, data, dl))?;
    let mut buf = [0u8; 256];
    let st = ctx("reply", ep.recv(c, to, tag::REPLY, &mut buf, dl))?;
    Ok(buf[..st.len].to_vec())
}

/// Sends to every rank this partition shares no channel with: each must be refused.
fn refused_sends(ep: &mut Ep, me: &str) -> Res<u32> {
    let w = ep.world();
    let mut n = 0;
    for r in 0..ep.size() {
        if r == ep.rank() || ep.channel(r).is_some() {
            continue;
        }
        let dl = ep.after_ms(CALL_MS);
        match ep.send(&w, r, tag::PING, b"not granted", dl) {
            Err(Error::PermissionDenied { .. }) => {
                rt::log!("{me}: send to rank {r} (no right) -> PermissionDenied");
                n += 1;
            }
            other => return wrong(format!("send to rank {r} (no right) gave {other:?}")),
        }
    }
    Ok(n)
}

/// Bytes of sequence message `i`: its number, then a pattern; lengths 4..=203, so
/// both inline (<= 16 B) and data-area messages occur.
fn seq_msg(i: u32) -> Vec<u8> {
    let mut m = i.to_le_bytes().to_vec();
    m.extend((0..i % 200).map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8)));
    m
}

/// FNV-1a, 64 bits.
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

/// `(p50, p99, max)` of the samples (sorted in place).
fn percentiles(v: &mut [u64]) -> (u64, u64, u64) {
    v.sort_unstable();
    let at = |p: usize| v[(v.len() - 1) * p / 100];
    (at(50), at(99), v[v.len() - 1])
}

/// `rounds` 8-byte round trips to `to`, in nanoseconds each.
fn pingpong(ep: &mut Ep, c: &Comm, to: Rank, rounds: u32) -> Res<Vec<u64>> {
    let mut v = Vec::with_capacity(rounds as usize);
    let mut buf = [0u8; 8];
    let dl = ep.after_ms(CALL_MS * 3);
    for i in 0..rounds {
        let msg = u64::from(i).to_le_bytes();
        let t = rt::time::tsc();
        ctx("ping", ep.send(c, to, tag::PING, &msg, dl))?;
        let st = ctx("pong", ep.recv(c, to, tag::PING, &mut buf, dl))?;
        v.push(rt::time::tsc_to_nanos(rt::time::tsc() - t));
        if st.len != 8 || buf != msg {
            return wrong(format!("pong {i} came back as {:?}", &buf[..st.len]));
        }
    }
    Ok(v)
}

fn client(ep: &mut Ep) -> Res<()> {
    let (naming, names) = pair(ep, "naming")?;
    let (storage, store) = pair(ep, "storage")?;

    // First exchange: the marker the launch time is measured to.
    let v = call(ep, &naming, names, tag::LOOKUP, b"store")?;
    let since_boot = rt::time::tsc_to_nanos(rt::time::tsc() - rt::time::boot_tsc().0);
    rt::log!(
        "client: first exchange: lookup store -> {} ({} ms after boot)",
        String::from_utf8_lossy(&v),
        since_boot / 1_000_000
    );

    // Point to point in group `naming`.
    for &(k, want) in NAMES.iter().chain(&[("nobody", "")]) {
        let v = call(ep, &naming, names, tag::LOOKUP, k.as_bytes())?;
        if v != want.as_bytes() {
            return wrong(format!("lookup {k}: got {v:?}, want {want}"));
        }
    }
    rt::log!("client: naming: {} lookups answered", NAMES.len() + 1);

    // A numbered sequence: intact and in order at the other end, and here.
    let dl = ep.after_ms(CALL_MS);
    let mut sum = FNV0;
    for i in 0..SEQ_COUNT {
        let m = seq_msg(i);
        sum = fnv(sum, &m);
        ctx("sequence", ep.send(&naming, names, tag::SEQ, &m, dl))?;
    }
    let v = call(ep, &naming, names, tag::SEQ_END, &[])?;
    let mut want = SEQ_COUNT.to_le_bytes().to_vec();
    want.extend(sum.to_le_bytes());
    if v != want {
        return wrong(format!("sequence summary {v:?}, want {want:?}"));
    }
    rt::log!(
        "client: naming: {SEQ_COUNT} messages arrived intact and in order (checksum {sum:#018x})"
    );

    // Point to point in group `storage`: puts (non-blocking sends are granted
    // there), gets, an overwrite.
    for i in 0..16u32 {
        let kv = format!("k{i}=value {}", i * i);
        let req = ctx(
            "isend put",
            ep.isend(&storage, store, tag::PUT, kv.as_bytes()),
        )?;
        let dl = ep.after_ms(CALL_MS);
        let mut buf = [0u8; 16];
        let st = ctx(
            "put reply",
            ep.recv(&storage, store, tag::REPLY, &mut buf, dl),
        )?;
        ctx("isend wait", ep.wait(&req, dl))?;
        if &buf[..st.len] != b"ok" {
            return wrong(format!("put k{i}: {:?}", &buf[..st.len]));
        }
    }
    if call(ep, &storage, store, tag::PUT, b"k3=three")? != b"ok" {
        return wrong(String::from("overwrite of k3 refused"));
    }
    for i in 0..17u32 {
        let v = call(ep, &storage, store, tag::GET, format!("k{i}").as_bytes())?;
        let want = match i {
            3 => String::from("three"),
            16 => String::new(),
            _ => format!("value {}", i * i),
        };
        if v != want.as_bytes() {
            return wrong(format!("get k{i}: {v:?}, want {want}"));
        }
    }
    rt::log!("client: storage: 17 puts, 17 gets, values as stored");

    // Refusals: what the rights table did not grant.
    match ep.isend(&naming, names, tag::PING, b"nb") {
        Err(Error::PermissionDenied { .. }) => {
            rt::log!("client: non-blocking send to names (not granted) -> PermissionDenied")
        }
        other => return wrong(format!("isend to names gave {other:?}")),
    }
    match ep.send(&storage, 2, tag::PING, b"x", ep.after_ms(CALL_MS)) {
        Err(Error::PermissionDenied { .. }) => {
            rt::log!("client: send to rank 2 of `storage` (not a member) -> PermissionDenied")
        }
        other => return wrong(format!("send outside `storage` gave {other:?}")),
    }
    refused_sends(ep, "client")?;

    // Latency: 8-byte round trips, spin-then-block.
    let rounds: u32 = rt::arg("rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    pingpong(ep, &naming, names, 100)?;
    let mut a = pingpong(ep, &naming, names, rounds)?;
    pingpong(ep, &storage, store, 100)?;
    let mut b = pingpong(ep, &storage, store, rounds)?;
    let (a50, a99, amax) = percentiles(&mut a);
    let (b50, b99, bmax) = percentiles(&mut b);
    rt::log!("client: latency of {rounds} 8-byte round trips (spin then block), ns:");
    rt::log!("client:   peer        p50       p99       max");
    rt::log!("client:   names  {a50:>9} {a99:>9} {amax:>9}");
    rt::log!("client:   store  {b50:>9} {b99:>9} {bmax:>9}");

    let dl = ep.after_ms(CALL_MS);
    ctx("stop names", ep.send(&naming, names, tag::STOP, &[], dl))?;
    ctx("stop store", ep.send(&storage, store, tag::STOP, &[], dl))?;
    rt::log!("client: all checks passed");
    Ok(())
}

/// `names` or `store`: serves the client in `group`, reports to the log (if it has
/// a channel it may only send on), checks refusals, ends on STOP.
fn service(ep: &mut Ep, args: &Args, me: &str, group: &str) -> Res<()> {
    let (c, client) = pair(ep, group)?;
    let log_rank = args
        .channels
        .iter()
        .find(|ch| ch.tx > 0 && ch.rx == 0)
        .map(|ch| ch.peer);
    let w = ep.world();
    let to_log = |ep: &mut Ep, t: u32, line: &str| -> Res<()> {
        if let Some(l) = log_rank {
            let dl = ep.after_ms(CALL_MS);
            ctx("log", ep.send(&w, l, t, line.as_bytes(), dl))?;
        }
        Ok(())
    };
    to_log(ep, tag::LOG, &format!("{me} up"))?;
    let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let (mut requests, mut next_seq, mut sum) = (0u32, 0u32, FNV0);
    let mut buf = vec![0u8; 512];
    loop {
        let dl = ep.after_ms(SERVICE_MS);
        let st = ctx("request", ep.recv(&c, client, ANY_TAG, &mut buf, dl))?;
        let msg = &buf[..st.len];
        let reply: Vec<u8> = match st.tag {
            tag::LOOKUP => NAMES
                .iter()
                .find(|(k, _)| k.as_bytes() == msg)
                .map_or(Vec::new(), |(_, v)| v.as_bytes().to_vec()),
            tag::PUT => match msg.iter().position(|&b| b == b'=') {
                Some(i) => {
                    store.insert(msg[..i].to_vec(), msg[i + 1..].to_vec());
                    b"ok".to_vec()
                }
                None => b"no =".to_vec(),
            },
            tag::GET => store.get(msg).cloned().unwrap_or_default(),
            tag::SEQ => {
                if msg != seq_msg(next_seq).as_slice() {
                    return wrong(format!("sequence message {next_seq} wrong or out of order"));
                }
                next_seq += 1;
                sum = fnv(sum, msg);
                continue;
            }
            tag::SEQ_END => {
                rt::log!(
                    "{me}: {next_seq} messages arrived intact and in order (checksum {sum:#018x})"
                );
                let mut r = next_seq.to_le_bytes().to_vec();
                r.extend(sum.to_le_bytes());
                r
            }
            tag::PING => {
                let dl = ep.after_ms(CALL_MS);
                ctx("pong", ep.send(&c, client, tag::PING, msg, dl))?;
                continue;
            }
            tag::STOP => break,
            t => return wrong(format!("unexpected tag {t}")),
        };
        requests += 1;
        let dl = ep.after_ms(CALL_MS);
        ctx("reply", ep.send(&c, client, tag::REPLY, &reply, dl))?;
    }
    rt::log!("{me}: served {requests} requests");
    let refused = refused_sends(ep, me)?;
    if refused == 0 && ep.size() > 2 {
        return wrong(String::from("no ungranted rank to check"));
    }
    if let Some(l) = log_rank {
        match ep.send(&w, l, tag::FORBIDDEN, b"x", ep.after_ms(CALL_MS)) {
            Err(Error::PermissionDenied { .. }) => {
                rt::log!(
                    "{me}: tag {} to log (outside 0-15) -> PermissionDenied",
                    tag::FORBIDDEN
                )
            }
            other => return wrong(format!("forbidden tag to log gave {other:?}")),
        }
    }
    to_log(
        ep,
        tag::LOG,
        &format!("{me}: served {requests} requests, {refused} refusals seen"),
    )?;
    to_log(ep, tag::BYE, "")?;
    Ok(())
}

/// Prints what the services send until each has said goodbye.
fn log(ep: &mut Ep, args: &Args) -> Res<()> {
    let mut senders: Vec<Rank> = args
        .channels
        .iter()
        .filter(|c| c.rx > 0)
        .map(|c| c.peer)
        .collect();
    let n = senders.len();
    let w = ep.world();
    let mut lines = 0;
    let mut buf = [0u8; 256];
    while !senders.is_empty() {
        let dl = ep.after_ms(SERVICE_MS);
        let st = ctx("log line", ep.recv(&w, ANY_SOURCE, ANY_TAG, &mut buf, dl))?;
        match st.tag {
            tag::LOG => {
                lines += 1;
                rt::log!(
                    "log: [rank {}] {}",
                    st.source,
                    String::from_utf8_lossy(&buf[..st.len])
                );
            }
            tag::BYE => senders.retain(|&s| s != st.source),
            t => return wrong(format!("unexpected tag {t} from rank {}", st.source)),
        }
    }
    rt::log!("log: {lines} lines from {n} partitions");
    Ok(())
}

/// Pairs (2k, 2k+1) exchange `rounds=` 8-byte messages each way; both check order
/// and content and checksum what they received; the even side reports latency.
fn exchange(ep: &mut Ep) -> Res<()> {
    let rounds: u32 = rt::arg("rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let me = ep.rank();
    let peer = me ^ 1;
    let w = ep.world();
    let msg = |i: u32, from: Rank| {
        let mut m = [0u8; 8];
        m[..4].copy_from_slice(&i.to_le_bytes());
        m[4..].copy_from_slice(&(i.wrapping_mul(2_654_435_761) ^ from).to_le_bytes());
        m
    };
    let (mut got, mut sum) = (0u32, FNV0);
    let mut rtt = Vec::with_capacity(rounds as usize);
    let mut buf = [0u8; 8];
    let start = rt::time::now();
    for i in 0..rounds {
        let dl = ep.after_ms(CALL_MS);
        let t = rt::time::tsc();
        if me.is_multiple_of(2) {
            ctx("send", ep.send(&w, peer, tag::PING, &msg(i, me), dl))?;
        }
        let st = ctx("recv", ep.recv(&w, peer, tag::PING, &mut buf, dl))?;
        if st.len != 8 || buf != msg(i, peer) {
            return wrong(format!(
                "message {i} from rank {peer} wrong or out of order"
            ));
        }
        got += 1;
        sum = fnv(sum, &buf);
        if me % 2 == 1 {
            ctx("send", ep.send(&w, peer, tag::PING, &msg(i, me), dl))?;
        } else {
            rtt.push(rt::time::tsc_to_nanos(rt::time::tsc() - t));
        }
    }
    let ms = start.elapsed().as_millis();
    rt::log!(
        "exchange: rank {me}: received {got}/{rounds} messages from rank {peer} in order, checksum {sum:#018x}, {ms} ms, blocked {} times ({} ended by a doorbell), spin now {} us",
        ep.platform().blocks(),
        ep.platform().wakeups(),
        ep.platform().spin() / 1000
    );
    if !rtt.is_empty() {
        let (p50, p99, max) = percentiles(&mut rtt);
        rt::log!("exchange: rank {me}: round trip ns p50 {p50} p99 {p99} max {max}");
    }
    Ok(())
}
