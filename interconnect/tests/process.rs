//! Ranks as separate host processes over /dev/shm files: the test binary re-executes
//! itself as each child rank.

use interconnect::host::{HostPlatform, ShmWorld};
use interconnect::{ANY_SOURCE, Config, Deadline, Endpoint, Error, Op};
use std::process::{Child, Command};
use std::sync::Arc;

const CHILD: &str = "VMPI_TEST_CHILD";

fn prefix(name: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "vmpi-test-{name}-{}-{}",
        std::process::id(),
        t.subsec_nanos()
    )
}

fn spawn(test: &str, prefix: &str, rank: u32) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{prefix}:{rank}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `Some((prefix, rank))` when running as a child.
fn child() -> Option<(String, u32)> {
    let v = std::env::var(CHILD).ok()?;
    let (p, r) = v.rsplit_once(':')?;
    Some((p.into(), r.parse().ok()?))
}

fn dl(ep: &Endpoint<HostPlatform>) -> Deadline {
    ep.after_ms(20_000)
}

fn cfg4() -> Config {
    let mut c = Config::new(4);
    c.geometry.data_len = 64 << 10;
    c.groups = vec![("odd".into(), vec![1, 3])];
    c
}

fn ring_and_collectives(ep: &mut Endpoint<HostPlatform>) {
    let w = ep.world();
    let (me, n) = (w.rank(), w.size());
    // A token of 200 KiB goes round the ring twice.
    let mut buf = vec![0u8; 200 << 10];
    for round in 0..2u8 {
        if me == 0 {
            buf.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i as u8) ^ round);
            ep.send(&w, 1, 9, &buf, dl(ep)).unwrap();
            let st = ep.recv(&w, n - 1, 9, &mut buf, dl(ep)).unwrap();
            assert_eq!(st.len, buf.len());
            assert!(
                buf.iter()
                    .enumerate()
                    .all(|(i, &b)| b == (i as u8) ^ round ^ 1)
            );
        } else {
            let st = ep.recv(&w, ANY_SOURCE, 9, &mut buf, dl(ep)).unwrap();
            assert_eq!(st.source, me - 1);
            if me == n - 1 {
                buf.iter_mut().for_each(|b| *b ^= 1);
            }
            ep.send(&w, (me + 1) % n, 9, &buf, dl(ep)).unwrap();
        }
    }
    ep.barrier(&w, dl(ep)).unwrap();
    let mut v = [u64::from(me), 1];
    ep.allreduce(&w, &mut v, Op::Sum, dl(ep)).unwrap();
    assert_eq!(v, [6, 4]);
    // The configured group, and a split of the world by parity.
    let odd = ep.group("odd").unwrap();
    assert_eq!(odd.is_some(), me % 2 == 1);
    let half = ep.split(&w, me % 2, n - me, dl(ep)).unwrap().unwrap();
    assert_eq!(half.size(), 2);
    let mut m = [u64::from(me)];
    ep.allreduce(&half, &mut m, Op::Max, dl(ep)).unwrap();
    assert_eq!(m[0], if me % 2 == 1 { 3 } else { 2 });
    ep.barrier(&w, dl(ep)).unwrap();
}

#[test]
fn ranks_as_processes() {
    let cfg = cfg4();
    if let Some((p, rank)) = child() {
        let mut ep = ShmWorld::attach(&p, &cfg, rank).unwrap();
        ring_and_collectives(&mut ep);
        return;
    }
    let p = prefix("ring");
    let world = ShmWorld::create(&p, &cfg).unwrap();
    let mut kids: Vec<Child> = (1..4).map(|r| spawn("ranks_as_processes", &p, r)).collect();
    let mut ep = ShmWorld::attach(&p, &cfg, 0).unwrap();
    ring_and_collectives(&mut ep);
    for k in &mut kids {
        assert!(k.wait().unwrap().success());
    }
    drop(world);
    assert!(!std::path::Path::new(&format!("/dev/shm/{p}-bells")).exists());
}

#[test]
fn peer_dying_mid_message_gives_peer_dead() {
    let mut cfg = Config::new(2);
    cfg.geometry.data_len = 16 << 10;
    if let Some((p, rank)) = child() {
        let mut ep = ShmWorld::attach(&p, &cfg, rank).unwrap();
        let w = ep.world();
        // Half of a 1 MiB message goes out (no credit for the rest), then we die.
        let r = ep.isend(&w, 0, 1, &vec![7u8; 1 << 20]).unwrap();
        assert_eq!(ep.test(&r).unwrap(), None);
        std::process::exit(0);
    }
    let p = prefix("die");
    let world = Arc::new(ShmWorld::create(&p, &cfg).unwrap());
    let mut ep = ShmWorld::attach(&p, &cfg, 0).unwrap();
    let mut kid = spawn("peer_dying_mid_message_gives_peer_dead", &p, 1);
    let wd = world.clone();
    // The launcher's role: when the process exits, mark it dead.
    let watcher = std::thread::spawn(move || {
        kid.wait().unwrap();
        wd.mark_dead(1);
    });
    let w = ep.world();
    let mut buf = vec![0u8; 1 << 20];
    let r = ep.recv(&w, 1, 1, &mut buf, ep.after_ms(60_000));
    assert!(matches!(r, Err(Error::PeerDead { rank: 1 })), "{r:?}");
    watcher.join().unwrap();
}
