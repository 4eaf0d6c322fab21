//! Control records: round trips, and a strict decoder that never panics.

use monitor::EdgeId;
use monitor::PartitionId;
use monitor::control::{
    CONTROL_LEN, CONTROL_MAGIC, Command, FaultKind, FromPartition, Hostile, LauncherEvent,
};
use proptest::prelude::*;

const ME: PartitionId = PartitionId::new(2, 5);
const PEER: PartitionId = PartitionId::new(4, 1);

fn raw(kind: u32, subject: u32, code: u32, aux: u32, reserved: u32, arg: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for w in [CONTROL_MAGIC, kind, subject, code, aux, reserved] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&arg.to_le_bytes());
    out
}

#[test]
fn records_round_trip() {
    let from_partition = [
        FromPartition::Heartbeat { id: ME },
        FromPartition::Fault {
            id: ME,
            fault: FaultKind::PageFault,
            detail: 0xdead_b000,
        },
        FromPartition::Malformed {
            id: ME,
            peer: PEER,
            edge: EdgeId(12),
            offset: 640,
        },
    ];
    for m in from_partition {
        assert_eq!(FromPartition::decode(&m.encode()), Ok(m));
    }
    let e = LauncherEvent::Exited {
        id: ME,
        status: 139,
    };
    assert_eq!(LauncherEvent::decode(&e.encode()), Ok(e));
    for c in [Command::Kill(ME), Command::Restart(PEER)] {
        assert_eq!(Command::decode(&c.encode()), Ok(c));
    }
    assert_eq!(
        FromPartition::Heartbeat { id: ME }.encode().to_vec(),
        raw(1, 2 | 5 << 16, 0, 0, 0, 0)
    );
}

#[test]
fn garbage_is_hostile() {
    let hb = raw(1, 2, 0, 0, 0, 0);
    assert_eq!(FromPartition::decode(&hb[..31]), Err(Hostile::WrongLength));
    assert_eq!(
        FromPartition::decode(&[hb.clone(), vec![0]].concat()),
        Err(Hostile::WrongLength)
    );
    let mut bad = hb.clone();
    bad[0] = b'X';
    assert_eq!(FromPartition::decode(&bad), Err(Hostile::BadMagic));
    assert_eq!(
        FromPartition::decode(&raw(4, 2, 0, 0, 0, 0)),
        Err(Hostile::UnknownKind)
    );
    assert_eq!(
        FromPartition::decode(&raw(1, 2, 0, 0, 1, 0)),
        Err(Hostile::NonZero)
    );
    assert_eq!(
        FromPartition::decode(&raw(1, 2, 0, 0, 0, 1)),
        Err(Hostile::NonZero)
    );
    assert_eq!(
        FromPartition::decode(&raw(1, 64, 0, 0, 0, 0)),
        Err(Hostile::BadPartition)
    );
    assert_eq!(
        FromPartition::decode(&raw(2, 2, 99, 0, 0, 0)),
        Err(Hostile::UnknownFault)
    );
    assert_eq!(
        FromPartition::decode(&raw(2, 2, 1, 1, 0, 0)),
        Err(Hostile::NonZero)
    );
    assert_eq!(
        FromPartition::decode(&raw(3, 2, 2, 0, 0, 0)),
        Err(Hostile::BadPartition)
    );
    assert_eq!(
        FromPartition::decode(&raw(3, 2, 3, 4032, 0, 0)),
        Err(Hostile::BadEdge)
    );
    // A partition may not send what only the launcher or the monitor sends.
    for kind in [16, 32, 33] {
        assert_eq!(
            FromPartition::decode(&raw(kind, 2, 0, 0, 0, 0)),
            Err(Hostile::WrongDirection)
        );
    }
    assert_eq!(LauncherEvent::decode(&hb), Err(Hostile::WrongDirection));
    assert_eq!(Command::decode(&hb), Err(Hostile::WrongDirection));
    assert_eq!(
        Command::decode(&raw(32, 2, 1, 0, 0, 0)),
        Err(Hostile::NonZero)
    );
}

proptest! {
    /// No input panics a decoder; whatever decodes is canonical (re-encodes to the same
    /// bytes), so no field is silently ignored.
    #[test]
    fn decoders_never_panic_and_accept_only_canonical_records(
        bytes in proptest::collection::vec(any::<u8>(), 0..48),
        words in proptest::array::uniform6(0u32..70),
        arg in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let framed = raw(words[0], words[1] | (words[2] << 16), words[3], words[4], words[5] & 1, arg);
        for b in [&bytes[..], &framed[..]] {
            if let Ok(m) = FromPartition::decode(b) {
                prop_assert_eq!(&m.encode()[..], b);
            }
            if let Ok(m) = LauncherEvent::decode(b) {
                prop_assert_eq!(&m.encode()[..], b);
            }
            if let Ok(m) = Command::decode(b) {
                prop_assert_eq!(&m.encode()[..], b);
            }
            prop_assert!(b.len() == CONTROL_LEN || FromPartition::decode(b) == Err(Hostile::WrongLength));
        }
    }
}
