//! Softmax and top-k over a row of class scores, so that only the top classes need to leave
//! the device. Selection keeps a sorted list of k, never sorting the whole row.

use std::cmp::Ordering;

/// One class and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub index: usize,
    pub score: f32,
}

/// Numerically stable softmax (the maximum is subtracted first). A row holding NaN becomes all
/// NaN, as in PyTorch.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if row.iter().any(|v| v.is_nan()) {
        row.fill(f32::NAN);
        return;
    }
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Higher score first; equal scores keep the lower index first; NaN ranks last.
fn ranks_before(a: &Scored, b: &Scored) -> bool {
    match (a.score.is_nan(), b.score.is_nan()) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a.index < b.index,
        (false, false) => match a.score.partial_cmp(&b.score) {
            Some(Ordering::Greater) => true,
            Some(Ordering::Less) => false,
            _ => a.index < b.index,
        },
    }
}

/// The `k` best entries, best first (all of them when `k` >= the row length).
pub fn top_k(row: &[f32], k: usize) -> Vec<Scored> {
    let k = k.min(row.len());
    let mut best: Vec<Scored> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (index, &score) in row.iter().enumerate() {
        let cand = Scored { index, score };
        if best.len() == k && !ranks_before(&cand, &best[k - 1]) {
            continue;
        }
        let at = best.partition_point(|b| ranks_before(b, &cand));
        best.insert(at, cand);
        best.truncate(k);
    }
    best
}

/// Softmax of the logits (in place) and the top `k` probabilities.
pub fn softmax_top_k(logits: &mut [f32], k: usize) -> Vec<Scored> {
    softmax_in_place(logits);
    top_k(logits, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_softmax(row: &[f32]) -> Vec<f32> {
        let e: Vec<f64> = row.iter().map(|v| (*v as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| (v / s) as f32).collect()
    }

    fn naive_top_k(row: &[f32], k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
        idx.truncate(k);
        idx
    }

    fn row(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
            })
            .collect()
    }

    #[test]
    fn softmax_and_top_k_match_the_naive_versions() {
        for (seed, n) in [(1, 5), (2, 10), (3, 1000), (4, 1)].into_iter() {
            let logits = row(n, seed);
            let mut probs = logits.clone();
            let top = softmax_top_k(&mut probs, 5);
            let want = naive_softmax(&logits);
            for (a, b) in probs.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * b.max(1e-30) + 1e-9, "{a} vs {b}");
            }
            let idx: Vec<usize> = top.iter().map(|s| s.index).collect();
            assert_eq!(idx, naive_top_k(&logits, 5));
            for s in &top {
                assert_eq!(s.score, probs[s.index]);
            }
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let mut r = vec![1000.0, 1001.0, 999.0];
        softmax_in_place(&mut r);
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(r[1] > r[0] && r[0] > r[2]);
    }

    #[test]
    fn ties_keep_the_lower_index_and_nan_ranks_last() {
        let top = top_k(&[1.0, f32::NAN, 3.0, 3.0, 0.5], 4);
        let idx: Vec<usize> = top.iter().map(|s| s.index).collect();
        assert_eq!(idx, [2, 3, 0, 4]);
        assert!(top_k(&[], 3).is_empty());
        assert!(top_k(&[1.0], 0).is_empty());
        let mut nan = vec![1.0, f32::NAN];
        softmax_in_place(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }
}
