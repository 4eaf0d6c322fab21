//! The published rights image: round trips, and a decoder that never panics and accepts
//! only canonical images of valid tables.

use monitor::rights::{
    EdgeRights, Policy, Quota, RightsBuilder, RightsError, RightsTable, TagRange,
};
use monitor::wire::{DecodeError, HEADER_LEN, RECORD_LEN};
use proptest::prelude::*;

const QUOTA: Quota = Quota {
    msgs_per_s: 10_000,
    bytes_per_s: 1 << 20,
    burst_msgs: 100,
    burst_bytes: 1 << 16,
};

fn table() -> RightsTable {
    let open = EdgeRights {
        tags: None,
        nonblocking: true,
        quota: QUOTA,
    };
    let tagged = EdgeRights {
        tags: Some(TagRange { lo: 7, hi: 7 }),
        nonblocking: false,
        ..open
    };
    RightsBuilder::new()
        .partition("app1", Policy::Stop)
        .partition("app2", Policy::Restart { limit: 65_535 })
        .partition("fs", Policy::Restart { limit: 3 })
        .partition("net", Policy::Stop)
        .group("apps", &["app1", "app2"])
        .allow("apps", "fs", tagged)
        .allow("fs", "apps", open)
        .allow("net", "fs", open)
        .build()
        .unwrap()
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// Rewrites the header's checksum after a test changed the records.
fn reseal(image: &mut [u8]) {
    let sum = fnv1a(&image[HEADER_LEN..]);
    image[20..24].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn a_table_round_trips() {
    let t = table();
    let image = t.encode();
    assert_eq!(image.len(), t.encoded_len());
    assert_eq!(image.len(), HEADER_LEN + RECORD_LEN * (4 + 1 + 5));
    assert_eq!(RightsTable::decode(&image), Ok(t.clone()));
    let mut padded = image.clone();
    padded.extend_from_slice(&[0xAA; 100]);
    assert_eq!(RightsTable::decode(&padded), Ok(t));
}

#[test]
fn framing_errors() {
    let image = table().encode();
    let got = image.len() - 1;
    assert_eq!(
        RightsTable::decode(&image[..got]),
        Err(DecodeError::Short {
            need: image.len(),
            got
        })
    );
    assert!(matches!(
        RightsTable::decode(&image[..10]),
        Err(DecodeError::Short { .. })
    ));
    let mut bad = image.clone();
    bad[0] ^= 1;
    assert!(matches!(
        RightsTable::decode(&bad),
        Err(DecodeError::BadMagic(_))
    ));
    let mut bad = image.clone();
    bad[4] = 1;
    assert_eq!(RightsTable::decode(&bad), Err(DecodeError::BadVersion(1)));
    let mut bad = image.clone();
    bad[HEADER_LEN + 3] ^= 0x40;
    assert_eq!(RightsTable::decode(&bad), Err(DecodeError::BadChecksum));
    let mut bad = image.clone();
    bad[31] = 1;
    assert_eq!(
        RightsTable::decode(&bad),
        Err(DecodeError::NonZero { offset: 0 })
    );
    let mut bad = image.clone();
    bad[10] = 0xFF; // 0xFF.. partitions
    assert_eq!(RightsTable::decode(&bad), Err(DecodeError::BadCount));
}

#[test]
fn invalid_content_is_rejected_even_when_sealed() {
    let image = table().encode();
    let edge0 = HEADER_LEN + RECORD_LEN * 5;
    // Zero the first edge's msgs/s quota.
    let mut bad = image.clone();
    bad[edge0 + 16..edge0 + 24].fill(0);
    reseal(&mut bad);
    let want = RightsError::ZeroQuota {
        from: "app1".into(),
        to: "fs".into(),
        field: "msgs_per_s",
    };
    assert_eq!(RightsTable::decode(&bad), Err(DecodeError::Invalid(want)));
    // Point the first edge at an unknown partition.
    let mut bad = image.clone();
    bad[edge0 + 4] = 9;
    reseal(&mut bad);
    assert!(matches!(
        RightsTable::decode(&bad),
        Err(DecodeError::Invalid(RightsError::UnknownIndex {
            index: 9,
            ..
        }))
    ));
    // An unknown policy code.
    let mut bad = image.clone();
    bad[HEADER_LEN + 4] = 3;
    reseal(&mut bad);
    assert_eq!(
        RightsTable::decode(&bad),
        Err(DecodeError::BadPolicy { offset: HEADER_LEN })
    );
    // Garbage after a name's NUL.
    let mut bad = image.clone();
    bad[HEADER_LEN + 16 + 30] = b'x';
    reseal(&mut bad);
    assert_eq!(
        RightsTable::decode(&bad),
        Err(DecodeError::NonZero { offset: HEADER_LEN })
    );
    // Unknown partition flags; two monitors.
    let mut bad = image.clone();
    bad[HEADER_LEN + 12] = 2;
    reseal(&mut bad);
    assert_eq!(
        RightsTable::decode(&bad),
        Err(DecodeError::BadFlags { offset: HEADER_LEN })
    );
    let mut bad = image.clone();
    bad[HEADER_LEN + 12] = 1;
    bad[HEADER_LEN + 3 * RECORD_LEN + 12] = 1;
    reseal(&mut bad);
    assert!(matches!(
        RightsTable::decode(&bad),
        Err(DecodeError::Invalid(RightsError::BadPolicy { name, why: "a second monitor" }))
            if name == "net"
    ));
    bad[HEADER_LEN + 3 * RECORD_LEN + 12] = 0;
    reseal(&mut bad);
    assert!(RightsTable::decode(&bad).unwrap().partitions()[0].monitor);
    // Unknown edge flags.
    let mut bad = image.clone();
    bad[edge0 + 6] = 4;
    reseal(&mut bad);
    assert_eq!(
        RightsTable::decode(&bad),
        Err(DecodeError::BadFlags { offset: edge0 })
    );
    // The reserved word where version 1 had a partition's view's viewer.
    let mut bad = table().encode();
    bad[6] = 3;
    assert_eq!(
        RightsTable::decode(&bad),
        Err(DecodeError::NonZero { offset: 0 })
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(t) = RightsTable::decode(&bytes) {
            prop_assert_eq!(&t.encode()[..], &bytes[..t.encoded_len()]);
        }
    }

    /// Random records behind a well-formed, sealed header: exercises the record checks.
    #[test]
    fn sealed_garbage_is_rejected_or_canonical(
        counts in (0u16..4, 0u16..3, 0u16..4),
        seed in proptest::collection::vec(any::<u8>(), 11 * RECORD_LEN),
    ) {
        let (np, ng, ne) = counts;
        let mut image = table().encode()[..HEADER_LEN].to_vec();
        let n = (np + ng + ne) as usize;
        image.extend_from_slice(&seed[..n * RECORD_LEN]);
        image[8..10].copy_from_slice(&np.to_le_bytes());
        image[10..12].copy_from_slice(&ng.to_le_bytes());
        image[12..14].copy_from_slice(&ne.to_le_bytes());
        image[16..20].copy_from_slice(&((HEADER_LEN + n * RECORD_LEN) as u32).to_le_bytes());
        reseal(&mut image);
        if let Ok(t) = RightsTable::decode(&image) {
            prop_assert_eq!(t.encode(), image);
        }
    }

    /// Any single corrupted byte of a valid image is caught: by the checksum in the
    /// records, by the field checks in the header.
    #[test]
    fn one_corrupt_byte_is_caught(at in 0usize..(HEADER_LEN + RECORD_LEN * 10), x in 1u8..) {
        let mut image = table().encode();
        image[at] ^= x;
        prop_assert!(RightsTable::decode(&image).is_err());
    }
}
