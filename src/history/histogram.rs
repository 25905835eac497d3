//! Latency distributions in fixed buckets, one per phase, so that rollups can be merged and
//! percentiles computed later. Bucket `i` holds values up to `0.0001 s * 1.25^i` (61 bounds,
//! 100 µs to 65 s, then one overflow bucket): a percentile read from a rollup is within 25 % of
//! the true value. Stored sparse (only non-empty buckets) as varints, so a phase whose probes
//! all took about the same time costs a few bytes. Decoding never panics on bad bytes: what
//! cannot be read is skipped.

use super::PHASES;

/// Upper bounds, seconds: `0.0001 * 1.25^i`.
const BOUNDS: usize = 61;
const FIRST: f64 = 0.0001;
const FACTOR: f64 = 1.25;

fn upper(index: usize) -> f64 {
    FIRST * FACTOR.powi(i32::try_from(index).unwrap_or(i32::MAX))
}

fn bucket_of(seconds: f64) -> u8 {
    if seconds.is_nan() || seconds <= FIRST {
        return 0; // zero, negative or NaN go to the first bucket
    }
    let index = ((seconds / FIRST).ln() / FACTOR.ln()).ceil();
    // ceil can land one below because of rounding; the bound check fixes it.
    let mut index = if index.is_finite() {
        index as usize
    } else {
        BOUNDS
    };
    if index < BOUNDS && seconds > upper(index) {
        index += 1;
    }
    u8::try_from(index.min(BOUNDS)).unwrap_or(u8::MAX)
}

/// One distribution per phase (`PHASES` order), all in one list of (phase, bucket, count)
/// sorted by phase and bucket: the writer decodes, merges and encodes several of these per
/// run, and one list is one allocation where a list per phase was six or more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histograms {
    buckets: Vec<(u8, u8, u64)>,
}

/// Buckets a run's six phases fill: one each.
const PHASE_COUNT: usize = PHASES.len();

impl Histograms {
    pub fn observe(&mut self, phases: &[f64; PHASES.len()]) {
        self.buckets.reserve(PHASE_COUNT);
        for (phase, value) in phases.iter().enumerate() {
            self.add(phase_index(phase), bucket_of(*value), 1);
        }
    }

    /// Adds `other`'s counts: one linear merge of the two sorted lists, from the back, in
    /// place (an insert per bucket would shift every later one).
    pub fn merge(&mut self, other: &Histograms) {
        let ours = self.buckets.len();
        let theirs = other.buckets.len();
        self.buckets.resize(ours + theirs, (0, 0, 0));
        // Invariant: `write - mine >= left`, so writing never reaches an unread bucket of ours.
        let (mut mine, mut left, mut write) = (ours, theirs, ours + theirs);
        while left > 0 {
            write -= 1;
            let next = other.buckets[left - 1];
            let key = (next.0, next.1);
            if mine > 0 {
                let have = self.buckets[mine - 1];
                match (have.0, have.1).cmp(&key) {
                    std::cmp::Ordering::Greater => {
                        self.buckets[write] = have;
                        mine -= 1;
                        continue;
                    }
                    std::cmp::Ordering::Equal => {
                        self.buckets[write] = (next.0, next.1, have.2.saturating_add(next.2));
                        mine -= 1;
                        left -= 1;
                        continue;
                    }
                    std::cmp::Ordering::Less => {}
                }
            }
            self.buckets[write] = next;
            left -= 1;
        }
        // Ours not yet passed stay at the front; the merged rest starts at `write`.
        let merged = self.buckets.len() - write;
        self.buckets.copy_within(write.., mine);
        self.buckets.truncate(mine + merged);
    }

    /// The (bucket, count) pairs of one phase, in bucket order.
    fn phase(&self, phase: usize) -> &[(u8, u8, u64)] {
        let phase = phase_index(phase);
        let start = self.buckets.partition_point(|(p, _, _)| *p < phase);
        let end = self.buckets.partition_point(|(p, _, _)| *p <= phase);
        &self.buckets[start..end]
    }

    pub fn count(&self, phase: usize) -> u64 {
        // Saturating: counts decoded from a damaged row can be anything.
        self.phase(phase)
            .iter()
            .fold(0u64, |total, (_, _, count)| total.saturating_add(*count))
    }

    /// The `q` quantile (0..=1) of a phase, interpolated inside its bucket; None when empty.
    pub fn quantile(&self, phase: usize, q: f64) -> Option<f64> {
        let buckets = self.phase(phase);
        let total = self.count(phase);
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut below = 0u64;
        for (_, bucket, count) in buckets {
            if below.saturating_add(*count) as f64 >= rank {
                let index = usize::from(*bucket);
                let low = if index == 0 { 0.0 } else { upper(index - 1) };
                if index >= BOUNDS {
                    return Some(upper(BOUNDS - 1));
                }
                let high = upper(index);
                let within = (rank - below as f64) / *count as f64;
                return Some(low + (high - low) * within);
            }
            below = below.saturating_add(*count);
        }
        None
    }

    /// Per phase: the number of its buckets, then each bucket and its count.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PHASE_COUNT + self.buckets.len() * 3);
        self.encode_into(&mut out);
        out
    }

    /// `encode` into `out`, replacing what it held: the writer encodes every row of a flush
    /// into one buffer.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        for phase in 0..PHASE_COUNT {
            let buckets = self.phase(phase);
            varint(out, buckets.len() as u64);
            for (_, bucket, count) in buckets {
                out.push(*bucket);
                varint(out, *count);
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Histograms {
        let mut histograms = Histograms::default();
        histograms.decode_into(bytes);
        histograms
    }

    /// `decode` into this one, replacing what it held and keeping its list's room.
    pub fn decode_into(&mut self, bytes: &[u8]) {
        self.buckets.clear();
        // At least two bytes a bucket after the six lengths, and at most 256 buckets a phase
        // are read: room for all of them at once, however long a damaged row is.
        let most = (bytes.len().saturating_sub(PHASE_COUNT) / 2).min(PHASE_COUNT * 256);
        self.buckets.reserve(most);
        let mut reader = Reader { bytes, at: 0 };
        for phase in 0..PHASE_COUNT {
            let Some(len) = reader.varint() else { break };
            for _ in 0..len.min(256) {
                let (Some(bucket), Some(count)) = (reader.byte(), reader.varint()) else {
                    return;
                };
                self.add(phase_index(phase), bucket.min(BOUNDS as u8), count);
            }
        }
    }

    fn add(&mut self, phase: u8, bucket: u8, count: u64) {
        match self
            .buckets
            .binary_search_by_key(&(phase, bucket), |(p, b, _)| (*p, *b))
        {
            Ok(at) => self.buckets[at].2 = self.buckets[at].2.saturating_add(count),
            Err(at) => self.buckets.insert(at, (phase, bucket, count)),
        }
    }
}

/// A phase's index as stored: there are six.
fn phase_index(phase: usize) -> u8 {
    u8::try_from(phase).unwrap_or(u8::MAX)
}

/// Appends `value` as a LEB128 varint.
pub fn varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) at: usize,
}

impl Reader<'_> {
    pub(super) fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    pub(super) fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
}

/// The `q` quantile of exact values (nearest rank); None when empty. Sorts `values`.
pub fn exact_quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * values.len() as f64).ceil().max(1.0) as usize;
    values.get(rank.min(values.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values_and_quantiles_stay_within_a_bucket() {
        for value in [
            0.0, 0.00005, 0.0001, 0.00011, 0.003, 0.05, 0.2, 1.0, 64.0, 1000.0,
        ] {
            let bucket = usize::from(bucket_of(value));
            if bucket < BOUNDS {
                assert!(value <= upper(bucket) + 1e-12, "{value} in {bucket}");
                if bucket > 0 {
                    assert!(value > upper(bucket - 1), "{value} above {bucket}");
                }
            }
        }
        let mut histograms = Histograms::default();
        for ms in 1..=100 {
            histograms.observe(&[0.0, ms as f64 / 1000.0, 0.0, 0.0, 0.0, 0.0]);
        }
        let p50 = histograms.quantile(1, 0.5).unwrap();
        assert!((0.04..=0.0625).contains(&p50), "{p50}");
        let p99 = histograms.quantile(1, 0.99).unwrap();
        assert!((0.079..=0.125).contains(&p99), "{p99}");
        assert!(histograms.quantile(2, 0.5).unwrap() <= 0.0001);
        assert_eq!(histograms.quantile(3, 0.5), Some(0.0001 * 0.5));
    }

    #[test]
    fn encoding_round_trips_and_merges_add() {
        let mut a = Histograms::default();
        a.observe(&[0.001, 0.002, 0.0, 0.05, 0.001, 0.06]);
        a.observe(&[0.001, 0.004, 0.0, 0.05, 0.001, 0.07]);
        let back = Histograms::decode(&a.encode());
        assert_eq!(back, a);
        let mut b = back.clone();
        b.merge(&a);
        assert_eq!(b.count(1), 4);
        assert!(a.encode().len() < 40, "{}", a.encode().len());
        // Garbage decodes to something, without panicking.
        let _ = Histograms::decode(&[0xff, 0xff, 0x01, 0x02]);
        let _ = Histograms::decode(&[]);
        // Counts that would overflow when added saturate instead of panicking.
        let mut huge = Vec::new();
        varint(&mut huge, 2);
        for bucket in [1u8, 2] {
            huge.push(bucket);
            varint(&mut huge, u64::MAX - 1);
        }
        let huge = Histograms::decode(&huge);
        assert_eq!(huge.count(0), u64::MAX);
        assert!(huge.quantile(0, 0.99).is_some());
        // Phases stay apart in the one list: each phase's count is its own.
        let mut c = Histograms::default();
        c.observe(&[0.001, 0.001, 0.001, 0.001, 0.001, 0.001]);
        c.observe(&[0.5, 0.001, 0.001, 0.001, 0.001, 0.001]);
        for phase in 0..PHASES.len() {
            assert_eq!(c.count(phase), 2, "phase {phase}");
        }
        assert!(c.quantile(0, 1.0).unwrap() > 0.4);
        assert!(c.quantile(1, 1.0).unwrap() < 0.002);
        assert_eq!(Histograms::decode(&c.encode()), c);
    }

    /// The linear merge against the obvious one (each bucket added where it belongs), for
    /// lists of every shape: empty, disjoint, interleaved, equal keys, saturating counts.
    #[test]
    fn the_linear_merge_adds_as_bucket_by_bucket_does() {
        use proptest::prelude::*;
        let list = || {
            proptest::collection::btree_map(
                (0u8..6, 0u8..=BOUNDS as u8),
                prop_oneof![1u64..5, Just(u64::MAX - 1)],
                0..40,
            )
            .prop_map(|buckets| Histograms {
                buckets: buckets.into_iter().map(|((p, b), c)| (p, b, c)).collect(),
            })
        };
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&(list(), list()), |(ours, theirs)| {
                let mut expected = ours.clone();
                for &(phase, bucket, count) in &theirs.buckets {
                    expected.add(phase, bucket, count);
                }
                let mut merged = ours.clone();
                merged.merge(&theirs);
                prop_assert_eq!(&merged, &expected);
                // And into a list that is reused: decoded over, then merged.
                let mut reused = theirs.clone();
                reused.decode_into(&ours.encode());
                reused.merge(&theirs);
                prop_assert_eq!(&reused, &expected);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn exact_quantiles_use_the_nearest_rank() {
        let mut values = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(exact_quantile(&mut values, 0.5), Some(3.0));
        assert_eq!(exact_quantile(&mut values, 0.99), Some(5.0));
        assert_eq!(exact_quantile(&mut [], 0.5), None);
    }
}
