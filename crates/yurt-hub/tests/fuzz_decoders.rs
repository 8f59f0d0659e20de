//! Property tests of the JSON and protobuf object, list and watch decoders (bounded: a
//! fixed number of cases, a few seconds per target): arbitrary bytes and mutations of
//! real encodings (the seeds: captured kube-apiserver 1.20.2 protobuf bodies in
//! `tests/data/`, JSON bodies in the API server's shape in `tests/fuzz-seeds/`). A
//! decoder never panics, returns, and splitting a stream differently never changes
//! the events it yields.

use proptest::prelude::*;
use yurt_hub::codec::{Format, WatchDecoder, decode_list, decode_object, encode_list};

const OBJECTS: &[(Format, &[u8])] = &[
    (Format::Protobuf, include_bytes!("data/pod.pb")),
    (Format::Json, include_bytes!("fuzz-seeds/pod.json")),
];
const LISTS: &[(Format, &[u8])] = &[
    (Format::Protobuf, include_bytes!("data/podlist.pb")),
    (Format::Json, include_bytes!("fuzz-seeds/podlist.json")),
];
const WATCHES: &[(Format, &[u8])] = &[
    (Format::Protobuf, include_bytes!("data/podwatch.pb")),
    (Format::Json, include_bytes!("fuzz-seeds/podwatch.json")),
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flips bits of the byte at (position modulo length).
    Flip(usize, u8),
    /// Inserts bytes.
    Insert(usize, Vec<u8>),
    /// Removes up to `n` bytes.
    Remove(usize, usize),
    /// Cuts the rest off.
    Truncate(usize),
    /// Sets a byte to an interesting value (0, 0xff, a length prefix's high byte).
    Set(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(p, m)| Mutation::Flip(p, m)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 1..64usize).prop_map(|(p, n)| Mutation::Remove(p, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop::sample::select(vec![0u8, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'\n'])
        )
            .prop_map(|(p, b)| Mutation::Set(p, b)),
    ]
}

fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in mutations {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % len };
        match m {
            Mutation::Flip(p, x) if !b.is_empty() => {
                let i = at(*p, b.len());
                b[i] ^= x;
            }
            Mutation::Set(p, x) if !b.is_empty() => {
                let i = at(*p, b.len());
                b[i] = *x;
            }
            Mutation::Insert(p, bytes) => {
                let i = at(*p, b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove(p, n) if !b.is_empty() => {
                let i = at(*p, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Truncate(p) => {
                let i = at(*p, b.len() + 1);
                b.truncate(i);
            }
            _ => {}
        }
    }
    b
}

/// A seed of `seeds`, mutated.
fn mutated(seeds: &'static [(Format, &'static [u8])]) -> impl Strategy<Value = (Format, Vec<u8>)> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 1..6),
    )
        .prop_map(|((format, seed), ms)| (format, mutate(seed, &ms)))
}

fn format() -> impl Strategy<Value = Format> {
    prop::sample::select(vec![Format::Json, Format::Protobuf])
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // The protobuf magic and a random envelope: past the first check.
        prop::collection::vec(any::<u8>(), 0..256)
            .prop_map(|rest| [b"k8s\0".as_slice(), &rest].concat()),
    ]
}

/// Cut points for a stream of `len` bytes.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..12)
}

/// Feeds `bytes` to a fresh decoder in pieces cut at `cuts`; the events (type and
/// wire bytes) until the first error, and whether one came.
fn watch_events(format: Format, bytes: &[u8], cuts: &[usize]) -> (Vec<(String, Vec<u8>)>, bool) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut decoder = WatchDecoder::new(format);
    let mut events = Vec::new();
    let mut from = 0;
    for to in points {
        match decoder.push(&bytes[from..to]) {
            Ok(evs) => events.extend(evs.into_iter().map(|(e, w)| (e.event_type, w.to_vec()))),
            Err(_) => return (events, true),
        }
        from = to;
    }
    (events, false)
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn objects_and_lists_of_arbitrary_bytes_are_errors_not_panics(format in format(), bytes in arbitrary_bytes()) {
        let _ = decode_object(format, &bytes);
        let _ = decode_list(format, &bytes);
    }

    #[test]
    fn mutated_objects_decode_or_fail_cleanly((format, bytes) in mutated(OBJECTS)) {
        let _ = decode_object(format, &bytes);
        let _ = decode_list(format, &bytes);
    }

    #[test]
    fn mutated_lists_decode_or_fail_cleanly_and_what_decodes_re_encodes((format, bytes) in mutated(LISTS)) {
        if let Ok(list) = decode_list(format, &bytes) {
            let again = encode_list(format, &list.api_version, &list.kind, &list.resource_version, &list.items);
            let decoded = decode_list(format, &again);
            prop_assert!(decoded.is_ok(), "a re-encoded list does not decode: {decoded:?}");
            prop_assert_eq!(decoded.map(|l| l.items.len()).ok(), Some(list.items.len()));
        }
    }

    #[test]
    fn arbitrary_watch_streams_end_in_events_or_an_error(format in format(), bytes in arbitrary_bytes(), cuts in cuts()) {
        let (events, _) = watch_events(format, &bytes, &cuts);
        let wire: usize = events.iter().map(|(_, w)| w.len()).sum();
        prop_assert!(wire <= bytes.len(), "events are made of the input");
    }

    #[test]
    fn mutated_watch_streams_decode_the_same_however_they_are_cut((format, bytes) in mutated(WATCHES), cuts in cuts()) {
        let (whole, whole_failed) = watch_events(format, &bytes, &[]);
        let (pieces, pieces_failed) = watch_events(format, &bytes, &cuts);
        if !whole_failed && !pieces_failed {
            prop_assert_eq!(whole, pieces);
        } else {
            // An error stops the stream where it is met: the events before it agree.
            let n = whole.len().min(pieces.len());
            prop_assert_eq!(&whole[..n], &pieces[..n]);
        }
    }
}

#[test]
fn the_seeds_decode() {
    for (format, bytes) in OBJECTS {
        decode_object(*format, bytes).unwrap_or_else(|e| panic!("{format:?} object: {e}"));
    }
    for (format, bytes) in LISTS {
        let list = decode_list(*format, bytes).unwrap_or_else(|e| panic!("{format:?} list: {e}"));
        assert_eq!(list.items.len(), 2, "{format:?}");
    }
    for (format, bytes) in WATCHES {
        let (events, failed) = watch_events(*format, bytes, &[7, 100, 1000]);
        assert!(
            !failed && events.len() >= 2,
            "{format:?}: {} events",
            events.len()
        );
    }
}
