use super::*;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// A scratch dir and shared-memory file, both removed on drop.
struct Scratch {
    dir: PathBuf,
    shm: PathBuf,
}

impl Scratch {
    fn new(tag: &str, bytes: u64) -> (Self, File) {
        let id = format!("vmpi-test-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let shm = PathBuf::from("/dev/shm").join(&id);
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&shm)
            .unwrap();
        f.set_len(bytes).unwrap();
        (Self { dir, shm }, f)
    }
    fn sock(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{n}.sock"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.shm);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn recv(s: &UnixStream) -> (i64, Option<OwnedFd>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    recv_msg(s.as_raw_fd())
        .unwrap()
        .expect("message, not end of stream")
}

/// Reads the handshake: version, id, shm fd; returns (id, shm size).
fn handshake(s: &UnixStream) -> (i64, u64) {
    assert_eq!(recv(s).0, PROTOCOL_VERSION);
    let (id, fd) = recv(s);
    assert!(fd.is_none());
    let (minus_one, shm) = recv(s);
    assert_eq!(minus_one, -1);
    let shm = File::from(shm.expect("shm fd"));
    (id, shm.metadata().unwrap().size())
}

#[test]
fn protocol_with_two_clients() {
    let (scratch, shm) = Scratch::new("proto", 2 << 20);
    let (tx, rx) = mpsc::channel();
    let spec = ChannelSpec {
        shm,
        sockets: vec![scratch.sock(0), scratch.sock(1)],
    };
    let mut server = DoorbellServer::start(vec![spec], tx).unwrap();

    let a = UnixStream::connect(scratch.sock(0)).unwrap();
    assert_eq!(handshake(&a), (0, 2 << 20));
    let a_own: Vec<_> = (0..VECTORS).map(|_| recv(&a)).collect();
    assert!(
        a_own.iter().all(|(id, fd)| *id == 0 && fd.is_some()),
        "own vectors first"
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Event::Connected {
            channel: 0,
            peer: 0
        }
    );

    let b = UnixStream::connect(scratch.sock(1)).unwrap();
    assert_eq!(handshake(&b).0, 1);
    // B hears of A (id 0) once per vector, then its own vectors.
    let b_msgs: Vec<_> = (0..2 * VECTORS).map(|_| recv(&b)).collect();
    let ids: Vec<i64> = b_msgs.iter().map(|m| m.0).collect();
    assert_eq!(ids, [0, 0, 1, 1]);
    // A hears of B once per vector.
    let a_hears: Vec<_> = (0..VECTORS).map(|_| recv(&a)).collect();
    assert!(a_hears.iter().all(|(id, fd)| *id == 1 && fd.is_some()));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Event::Connected {
            channel: 0,
            peer: 1
        }
    );

    // A rings B's vector 1: B's own eventfd for vector 1 is the same object.
    let ring = File::from(a_hears[1].1.as_ref().unwrap().try_clone().unwrap());
    (&ring).write_all(&1u64.to_ne_bytes()).unwrap();
    let mut got = [0u8; 8];
    let mut b_v1 = File::from(b_msgs[3].1.as_ref().unwrap().try_clone().unwrap());
    b_v1.read_exact(&mut got).unwrap();
    assert_eq!(u64::from_ne_bytes(got), 1);
    // B's vector 0 was not rung.
    let mut b_v0 = File::from(b_msgs[2].1.as_ref().unwrap().try_clone().unwrap());
    assert_eq!(
        b_v0.read(&mut got).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );

    // A second client on an occupied end is refused.
    let intruder = UnixStream::connect(scratch.sock(1)).unwrap();
    intruder
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        recv_msg(intruder.as_raw_fd()).unwrap().is_none(),
        "refused: end of stream"
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Event::Refused {
            channel: 0,
            peer: 1
        }
    );

    // B hangs up: A is told nothing (QEMU 7.2 frees its peer array on a notice).
    drop(b);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Event::Disconnected {
            channel: 0,
            peer: 1
        }
    );
    // B comes back (a restarted VM): it gets A's eventfds and the same own eventfds
    // as before, so A's old copy of B's vector 0 rings the new B; A hears nothing.
    let b = UnixStream::connect(scratch.sock(1)).unwrap();
    assert_eq!(handshake(&b).0, 1);
    let b2: Vec<_> = (0..2 * VECTORS).map(|_| recv(&b)).collect();
    assert_eq!(b2.iter().map(|m| m.0).collect::<Vec<_>>(), [0, 0, 1, 1]);
    let ring0 = File::from(a_hears[0].1.as_ref().unwrap().try_clone().unwrap());
    (&ring0).write_all(&1u64.to_ne_bytes()).unwrap();
    let mut b2_v0 = File::from(b2[2].1.as_ref().unwrap().try_clone().unwrap());
    b2_v0.read_exact(&mut got).unwrap();
    assert_eq!(u64::from_ne_bytes(got), 1);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Event::Connected {
            channel: 0,
            peer: 1
        }
    );
    a.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        recv_msg(a.as_raw_fd()).is_err(),
        "A is told nothing of B's hang-up or return"
    );

    server.stop();
    assert!(
        !scratch.sock(0).exists() && !scratch.sock(1).exists(),
        "sockets removed"
    );
}

#[test]
fn a_restarted_client_is_served_even_before_the_hang_up_is_seen() {
    let (scratch, shm) = Scratch::new("restart", 2 << 20);
    let (tx, rx) = mpsc::channel();
    let spec = ChannelSpec {
        shm,
        sockets: vec![scratch.sock(0), scratch.sock(1)],
    };
    let _server = DoorbellServer::start(vec![spec], tx).unwrap();
    for round in 0..20 {
        let a = UnixStream::connect(scratch.sock(0)).unwrap();
        assert_eq!(handshake(&a).0, 0, "round {round}");
        for _ in 0..VECTORS {
            assert_eq!(recv(&a).0, 0);
        }
        loop {
            match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
                Event::Connected {
                    channel: 0,
                    peer: 0,
                } => break,
                Event::Disconnected { .. } => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        drop(a); // and reconnect at once, as a restarted VM does
    }
}

/// Kills and reaps a child on drop.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_with_doorbell(sock: &std::path::Path) -> Reap {
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,pcie=on", "-accel", "tcg", "-S", "-m", "16M"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "none",
        ])
        .arg("-chardev")
        .arg(format!("socket,path={},id=db", sock.display()))
        .args([
            "-device",
            &format!("ivshmem-doorbell,chardev=db,vectors={VECTORS},addr=1"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 is installed (scripts/test installs it)");
    Reap(child)
}

#[test]
fn real_qemu_completes_the_handshake_and_stays_up() {
    let (scratch, shm) = Scratch::new("qemu", 2 << 20);
    let (tx, rx) = mpsc::channel();
    let spec = ChannelSpec {
        shm,
        sockets: vec![scratch.sock(0), scratch.sock(1)],
    };
    let _server = DoorbellServer::start(vec![spec], tx).unwrap();
    let mut q0 = qemu_with_doorbell(&scratch.sock(0));
    let mut q1 = qemu_with_doorbell(&scratch.sock(1));
    let mut connected = Vec::new();
    while connected.len() < 2 {
        match rx
            .recv_timeout(Duration::from_secs(30))
            .expect("both QEMUs connect")
        {
            Event::Connected { channel: 0, peer } => connected.push(peer),
            other => panic!("unexpected {other:?}"),
        }
    }
    connected.sort();
    assert_eq!(connected, [0, 1]);
    // Both QEMUs stay up with the device realized: a failed handshake makes QEMU
    // exit at once. Wait until it would have.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) {
        for q in [&mut q0, &mut q1] {
            if let Some(status) = q.0.try_wait().unwrap() {
                let mut err = String::new();
                let _ = q.0.stderr.take().unwrap().read_to_string(&mut err);
                panic!("QEMU exited ({status}): {err}");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Killing one QEMU is seen as a disconnect of its end.
    drop(q1);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        Event::Disconnected {
            channel: 0,
            peer: 1
        }
    );
}
