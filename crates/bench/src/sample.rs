//! Choosing the part of the input a sweep compresses: the whole input, or runs of whole blocks
//! spread evenly across it.
//!
//! A sample of `T` bytes out of an input of `L` bytes is made of `n = ceil(T / R)` runs of `R`
//! bytes each (the *run length*, 4 MiB unless the block sizes ask for more). The input is cut
//! into `S = floor(L / R)` aligned slots `[k R, (k + 1) R)`, and run `i` (of `0..n`) takes slot
//! `floor((2 i + 1) S / (2 n))`: the centre of the `i`-th of `n` equal stretches of the input.
//! So the runs cover the beginning, middle and end of the input alike (a filesystem keeps
//! metadata, files and free space in different places; a prefix would see only the first), and
//! the choice is deterministic: the same input and request always give the same sample.
//!
//! Every run starts at a multiple of `R`, and `R` is a multiple of every block size swept, so a
//! block of the sample is exactly a block of the input at the same alignment: each block size
//! sees the very blocks (and all-zero blocks) it would see in the whole input. The sample holds
//! at least the bytes asked for and less than one run more. When the request reaches the whole
//! input (or the input holds no more runs than asked), the whole input is used.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Run length used when the block sizes need no more.
pub const DEFAULT_RUN_BYTES: u64 = 4 << 20;

/// Longest run length considered when making runs a multiple of every block size; beyond it
/// the run length is only a multiple of the largest block size.
const MAX_RUN_BYTES: u64 = 64 << 20;

/// How much of the input to compress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleSize {
    /// All of it.
    Whole,
    /// A fraction of its length, in `(0, 1]`.
    Fraction(f64),
    /// About this many bytes (rounded up to whole runs).
    Bytes(u64),
}

impl SampleSize {
    /// The number of bytes asked for out of an input of `input_len` bytes.
    pub fn target(&self, input_len: u64) -> u64 {
        match *self {
            SampleSize::Whole => input_len,
            SampleSize::Fraction(f) => ((input_len as f64) * f).ceil() as u64,
            SampleSize::Bytes(b) => b,
        }
    }
}

impl fmt::Display for SampleSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleSize::Whole => f.write_str("100%"),
            SampleSize::Fraction(x) => write!(f, "{}%", x * 100.0),
            SampleSize::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

/// Parses a percentage: `20%`, `2.5%`, `100%`. Byte counts are parsed by the caller (with its
/// size suffixes) and given as [`SampleSize::Bytes`].
impl FromStr for SampleSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let Some(number) = text.strip_suffix('%') else {
            return Err(format!("{text:?} is not a percentage such as 20%"));
        };
        let pct: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a percentage such as 20%"))?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(format!(
                "sample {text} is out of range: give more than 0% and at most 100%"
            ));
        }
        Ok(if pct >= 100.0 {
            SampleSize::Whole
        } else {
            SampleSize::Fraction(pct / 100.0)
        })
    }
}

/// The runs of the input that make up the sample, in input order, disjoint, adjacent runs
/// merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplePlan {
    /// Length of the whole input.
    pub input_len: u64,
    /// Length of one run (runs that touch are merged into one range).
    pub run_len: u64,
    /// Byte ranges of the input, in order.
    pub runs: Vec<Range<u64>>,
}

impl SamplePlan {
    /// The whole input as one run.
    pub fn whole(input_len: u64) -> SamplePlan {
        let whole: Range<u64> = 0..input_len;
        SamplePlan {
            input_len,
            run_len: input_len,
            runs: std::iter::once(whole).collect(),
        }
    }

    /// Bytes in the sample.
    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.end - r.start).sum()
    }

    /// The sample's share of the input (1 for the whole input).
    pub fn fraction(&self) -> f64 {
        if self.input_len == 0 {
            1.0
        } else {
            self.bytes() as f64 / self.input_len as f64
        }
    }

    /// Whether the sample is the whole input.
    pub fn is_whole(&self) -> bool {
        self.runs.len() == 1 && self.runs[0] == (0..self.input_len)
    }

    /// Number of runs of [`SamplePlan::run_len`] bytes (before merging).
    pub fn run_count(&self) -> u64 {
        if self.is_whole() {
            1
        } else {
            self.bytes() / self.run_len.max(1)
        }
    }

    /// One sentence saying how the sample was chosen.
    pub fn describe(&self) -> String {
        if self.is_whole() {
            return "the whole input".to_string();
        }
        format!(
            "{} runs of {} MiB spread evenly over the input ({:.1}% of it)",
            self.run_count(),
            self.run_len as f64 / f64::from(1 << 20),
            self.fraction() * 100.0
        )
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The run length for a sweep over `block_sizes`: the smallest multiple of every block size
/// that is at least [`DEFAULT_RUN_BYTES`]. When that would exceed 64 MiB (unusual sizes with
/// no common multiple nearby), the smallest multiple of the largest block size of at least
/// 4 MiB: blocks of the other sizes then straddle runs, which only blurs the estimate a little.
pub fn run_len_for(block_sizes: &[u32]) -> u64 {
    let mut lcm = 1u64;
    let mut largest = 1u64;
    for &bs in block_sizes {
        let bs = u64::from(bs.max(1));
        largest = largest.max(bs);
        if lcm <= MAX_RUN_BYTES {
            lcm = lcm / gcd(lcm, bs) * bs;
        }
    }
    let unit = if lcm <= MAX_RUN_BYTES { lcm } else { largest };
    DEFAULT_RUN_BYTES.div_ceil(unit) * unit
}

/// Chooses `target` bytes of an `input_len`-byte input as runs of `run_len` bytes spread
/// evenly across it (see the module documentation).
pub fn plan_sample(input_len: u64, target: u64, run_len: u64) -> SamplePlan {
    let run_len = run_len.max(1);
    let slots = input_len / run_len;
    if target >= input_len || slots == 0 {
        return SamplePlan::whole(input_len);
    }
    let n = target.div_ceil(run_len).clamp(1, slots);
    if n == slots && slots * run_len == input_len {
        return SamplePlan::whole(input_len);
    }
    let mut runs: Vec<Range<u64>> = Vec::with_capacity(n as usize);
    for i in 0..n {
        // Centre of the i-th of n equal stretches; strictly increasing in i because slots >= n.
        let slot = ((2 * i + 1) as u128 * slots as u128 / (2 * n) as u128) as u64;
        let start = slot * run_len;
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = start + run_len,
            _ => runs.push(start..start + run_len),
        }
    }
    SamplePlan {
        input_len,
        run_len,
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn starts(plan: &SamplePlan) -> Vec<u64> {
        // Split merged ranges back into runs.
        plan.runs
            .iter()
            .flat_map(|r| (r.start..r.end).step_by(plan.run_len as usize))
            .collect()
    }

    #[test]
    fn runs_are_spread_over_the_whole_input() {
        let input = 829_423_616;
        let plan = plan_sample(input, input / 5, 4 * MIB);
        let s = starts(&plan);
        assert_eq!(s.len() as u64, plan.run_count());
        // The first run lies in the first stretch, the last in the last one.
        let stretch = input / s.len() as u64;
        assert!(s[0] < stretch, "first run at {}", s[0]);
        assert!(*s.last().unwrap() + 4 * MIB > input - stretch);
        // Gaps between consecutive runs differ by at most one slot.
        let gaps: Vec<u64> = s.windows(2).map(|w| w[1] - w[0]).collect();
        let (lo, hi) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
        assert!(hi - lo <= 4 * MIB, "gaps {lo}..{hi}");
        // Every run is aligned, inside the input and disjoint from the next.
        for w in plan.runs.windows(2) {
            assert!(w[0].end < w[1].start);
        }
        for r in &plan.runs {
            assert_eq!(r.start % (4 * MIB), 0);
            assert!(r.end <= input);
        }
    }

    #[test]
    fn requested_fraction_is_respected() {
        for input in [100 * MIB, 829_423_616, 3 * 1024 * MIB + 12345] {
            for pct in [1.0, 5.0, 20.0, 33.3, 50.0, 90.0] {
                let size: SampleSize = format!("{pct}%").parse().unwrap();
                let target = size.target(input);
                let plan = plan_sample(input, target, 4 * MIB);
                if plan.is_whole() {
                    assert!(target + 4 * MIB > input, "{input} {pct}");
                    continue;
                }
                assert!(plan.bytes() >= target, "{input} {pct}%: {}", plan.bytes());
                assert!(plan.bytes() < target + 4 * MIB, "{input} {pct}%");
                let f = plan.fraction();
                assert!(f >= pct / 100.0 && f < pct / 100.0 + 4.0 * MIB as f64 / input as f64);
            }
        }
        let plan = plan_sample(1024 * MIB, 512 * MIB, 4 * MIB);
        assert_eq!(plan.bytes(), 512 * MIB);
        assert_eq!(plan.run_count(), 128);
        // Half the slots: every other one, never merged.
        assert_eq!(plan.runs.len(), 128);
    }

    #[test]
    fn selection_is_deterministic() {
        let a = plan_sample(777 * MIB + 5, 100 * MIB, 4 * MIB);
        let b = plan_sample(777 * MIB + 5, 100 * MIB, 4 * MIB);
        assert_eq!(a, b);
    }

    #[test]
    fn large_requests_take_the_whole_input() {
        assert!(plan_sample(10 * MIB, 10 * MIB, 4 * MIB).is_whole());
        assert!(plan_sample(10 * MIB, 20 * MIB, 4 * MIB).is_whole());
        assert!(plan_sample(3 * MIB, MIB, 4 * MIB).is_whole());
        assert!(plan_sample(0, 0, 4 * MIB).is_whole());
        // All slots of an input that is a whole number of runs: the whole input.
        assert!(plan_sample(16 * MIB, 13 * MIB, 4 * MIB).is_whole());
        // All slots but a tail: runs merge into one range short of the end.
        let plan = plan_sample(17 * MIB, 13 * MIB, 4 * MIB);
        assert_eq!(plan.runs.len(), 1);
        assert_eq!(plan.runs[0], 0..16 * MIB);
        assert!(!plan.is_whole());
    }

    #[test]
    fn run_length_is_a_multiple_of_every_block_size() {
        let k = 1024;
        assert_eq!(
            run_len_for(&[16 * k, 64 * k, 128 * k, 256 * k, 1024 * k]),
            4 * MIB
        );
        let run = run_len_for(&[96 * k, 1024 * k]);
        assert_eq!(run % (96 * 1024), 0);
        assert_eq!(run % MIB, 0);
        assert!(run >= 4 * MIB);
        // No common multiple below 64 MiB: a multiple of the largest size.
        let run = run_len_for(&[512 * 1021, 512 * 1019, 512 * 1013]);
        assert_eq!(run % (512 * 1021), 0);
    }

    #[test]
    fn percentages_parse() {
        assert_eq!("20%".parse::<SampleSize>(), Ok(SampleSize::Fraction(0.2)));
        assert_eq!("100%".parse::<SampleSize>(), Ok(SampleSize::Whole));
        assert!("0%".parse::<SampleSize>().is_err());
        assert!("150%".parse::<SampleSize>().is_err());
        assert!("20".parse::<SampleSize>().is_err());
        assert!("x%".parse::<SampleSize>().is_err());
    }
}
