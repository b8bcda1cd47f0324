//! Damage to the log: a tail cut at any byte or followed by junk is a torn tail and is cut;
//! a flipped byte before the tail, a cut in a sealed segment or a damaged checkpoint is
//! refused, naming the file and the offset.

use super::*;

// ----------------------------------------------------------------------------- torn tails

#[test]
fn a_tail_cut_at_any_byte_recovers_the_longest_whole_prefix() {
    // One round: the log starts at the first checkpoint. Two: at a later one, with a covered
    // segment still in the directory.
    for rounds in [1, 2] {
        tail_cut_at_any_byte(&build(rounds));
    }
}

fn tail_cut_at_any_byte(built: &Built) {
    let segments = segment_names(&built.files);
    assert!(segments.len() >= 3, "the workload should span segments: {segments:?}");
    let (first_lsn, last) = segments.last().cloned().expect("a segment");
    let whole = built.files[&last].clone();
    let ends = frame_ends(&whole);
    assert!(ends.len() >= 3, "the last segment should hold records");

    let dir = TempDir::with("torn", &built.files);
    let storage = dir.storage();
    let file = storage.describe(&last);
    for cut in 0..=whole.len() {
        fs::write(dir.path().join(&last), &whole[..cut]).expect("cut");
        let context = format!("cut at {cut} of {}", whole.len());
        let r = recovered(&storage, &context);
        let records = ends[1..].iter().filter(|end| **end <= cut).count() as u64;
        let expected = first_lsn - 1 + records;
        assert_eq!(r.report.last_lsn, expected, "{context}");
        assert_eq!(r.report.replayed, expected - built.checkpoint_lsn, "{context}");
        assert_eq!(&r.allocator.snapshot(), built.state(expected), "{context}");
        let boundary = ends[records as usize];
        if records == 0 {
            assert_eq!(r.report.empty_tail_segments, vec![file.clone()], "{context}");
            assert_eq!(r.report.torn_tail, None, "{context}");
        } else if cut == boundary {
            assert_eq!(r.report.torn_tail, None, "{context}");
        } else {
            let torn = Some((file.clone(), boundary as u64, (cut - boundary) as u64));
            assert_eq!(r.report.torn_tail, torn, "{context}");
        }
    }
}

#[test]
fn junk_after_the_last_record_is_a_torn_tail() {
    let built = build(1);
    let (_, last) = segment_names(&built.files).last().cloned().expect("a segment");
    let whole = built.files[&last].clone();
    let ends = frame_ends(&whole);
    // A stale copy of an earlier frame (as a reused disk block would hold) is not a record.
    let stale = whole[ends[0]..ends[1]].to_vec();
    let tails: Vec<(&str, Vec<u8>)> = vec![
        ("one zero", vec![0]),
        ("zeros", vec![0; 19]),
        ("a zeroed header", vec![0; 20]),
        ("a zeroed block", vec![0; 4_096]),
        ("ones", vec![0xFF; 100]),
        ("a stale frame", stale),
        ("noise", (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()),
    ];
    for (what, tail) in tails {
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&tail);
        let mut files = built.files.clone();
        files.insert(last.clone(), bytes);
        let dir = TempDir::with("junk", &files);
        let storage = dir.storage();
        let r = recovered(&storage, what);
        assert_eq!(r.report.last_lsn, built.last_lsn, "{what}");
        assert_eq!(&r.allocator.snapshot(), built.state(built.last_lsn), "{what}");
        let torn = Some((storage.describe(&last), whole.len() as u64, tail.len() as u64));
        assert_eq!(r.report.torn_tail, torn, "{what}");

        // Repair cuts it, and the node goes on from there.
        let r = recover(&storage, alloc_config(), KEY, true).expect("repair");
        assert!(r.report.repaired);
        assert_eq!(fs::read(dir.path().join(&last)).expect("read"), whole, "{what}: cut");
        let again = recovered(&storage, what);
        assert_eq!(again.report.torn_tail, None, "{what}: clean after repair");
        assert_eq!(again.report.last_lsn, built.last_lsn);
    }
}

// ----------------------------------------------------------------------------- corruption

#[test]
fn a_flipped_byte_before_the_tail_is_refused_with_its_place() {
    let built = build(1);
    let segments = segment_names(&built.files);
    let dir = TempDir::with("flip", &built.files);
    let storage = dir.storage();
    for (index, (_, name)) in segments.iter().enumerate() {
        let whole = built.files[name].clone();
        let ends = frame_ends(&whole);
        // In the last segment, the last frame is the one place a bad frame reads as torn.
        let limit = if index + 1 == segments.len() { ends[ends.len() - 2] } else { whole.len() };
        for at in 0..limit {
            let mut bytes = whole.clone();
            bytes[at] ^= 0xFF;
            fs::write(dir.path().join(name), &bytes).expect("flip");
            let context = format!("flip of {name} at {at}");
            let RecoveryError::Corrupt(c) = refused(&storage, &context) else {
                panic!("{context}: not reported as corruption");
            };
            let frame = if at < SEGMENT_HEADER_BYTES {
                0
            } else {
                ends.iter().rev().find(|end| **end <= at).copied().unwrap_or(0)
            };
            assert_eq!(c.file, storage.describe(name), "{context}");
            assert_eq!(c.offset, frame as u64, "{context}: {}", c.reason);
        }
        fs::write(dir.path().join(name), &whole).expect("restore");
    }
    recovered(&storage, "restored");
}

#[test]
fn a_cut_in_a_sealed_segment_is_refused() {
    let built = build(1);
    let segments = segment_names(&built.files);
    let dir = TempDir::with("sealed", &built.files);
    let storage = dir.storage();
    for pair in segments.windows(2) {
        let ((_, name), (_, next)) = (&pair[0], &pair[1]);
        let whole = built.files[name].clone();
        let ends = frame_ends(&whole);
        for cut in 0..whole.len() {
            fs::write(dir.path().join(name), &whole[..cut]).expect("cut");
            let context = format!("cut of {name} at {cut}");
            let RecoveryError::Corrupt(c) = refused(&storage, &context) else {
                panic!("{context}: not reported as corruption");
            };
            if cut >= SEGMENT_HEADER_BYTES && ends.contains(&cut) {
                // Whole frames only: the gap shows at the next segment.
                assert_eq!((c.file, c.offset), (storage.describe(next), 0), "{context}");
            } else {
                let frame = ends.iter().rev().find(|end| **end <= cut).copied().unwrap_or(0);
                let frame = if cut < SEGMENT_HEADER_BYTES { 0 } else { frame };
                assert_eq!((c.file, c.offset), (storage.describe(name), frame as u64), "{context}");
            }
        }
        fs::write(dir.path().join(name), &whole).expect("restore");
    }
}

#[test]
fn a_damaged_checkpoint_is_refused_naming_it() {
    let built = build(1);
    let dir = TempDir::with("ckpt-flip", &built.files);
    let storage = dir.storage();
    let r = recovered(&storage, "before the checkpoint");
    let body = CheckpointBody { snapshot: r.allocator.snapshot(), replies: r.replies };
    checkpoint::write(&storage, built.last_lsn, &body).expect("checkpoint");
    let name = checkpoint_name(built.last_lsn);
    let whole = fs::read(dir.path().join(&name)).expect("read");
    let r = recovered(&storage, "after the checkpoint");
    assert_eq!(r.report.checkpoint_lsn, Some(built.last_lsn));
    assert_eq!(&r.allocator.snapshot(), built.state(built.last_lsn));
    const HEADER_BYTES: usize = 36;
    let cuts = [0, 1, HEADER_BYTES - 1, HEADER_BYTES, whole.len() / 2, whole.len() - 1];
    let damaged = (0..whole.len())
        .map(|at| {
            let mut bytes = whole.clone();
            bytes[at] ^= 0xFF;
            (format!("flip at {at}"), bytes, if at < HEADER_BYTES { 0 } else { HEADER_BYTES })
        })
        .chain(cuts.iter().map(|cut| {
            let offset = if *cut < HEADER_BYTES { 0 } else { 20 };
            (format!("cut at {cut}"), whole[..*cut].to_vec(), offset)
        }));
    for (what, bytes, offset) in damaged {
        fs::write(dir.path().join(&name), &bytes).expect("damage");
        let RecoveryError::Corrupt(c) = refused(&storage, &what) else {
            panic!("{what}: not reported as corruption");
        };
        assert_eq!(c.file, storage.describe(&name), "{what}");
        assert_eq!(c.offset, offset as u64, "{what}: {}", c.reason);
    }
}
