//! The statistics the tables print.

/// (first quartile, median, third quartile), nearest rank.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1).div_ceil(2)]
}

/// A 95% confidence interval for the median of `values`, from their order
/// statistics alone (no assumption about the distribution): the k-th lowest
/// and the k-th highest value, with k the largest rank for which fewer than
/// k of n values fall below the median with probability at most 2.5%
/// (Binomial(n, 1/2)). None below 6 values, where no such k exists.
pub fn median_ci(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    // P(X <= j) for X ~ Binomial(n, 1/2), j = 0, 1, ...
    let mut below = 0.0;
    let mut choose = 1.0;
    let mut k = 0;
    for j in 0..n {
        below += choose * 0.5f64.powi(n as i32);
        if below > 0.025 {
            break;
        }
        k = j + 1;
        choose = choose * (n - j) as f64 / (j + 1) as f64;
    }
    (k >= 1).then(|| (v[k - 1], v[n - k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 3.0);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn median_ci_uses_binomial_ranks() {
        // n = 20: P(X <= 5) = 0.021, P(X <= 6) = 0.058, so the 6th lowest
        // and the 6th highest (95.9% coverage).
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(median_ci(&v), Some((6.0, 15.0)));
        // n = 6: only the extremes (P(X = 0) = 1/64).
        assert_eq!(median_ci(&[5.0, 1.0, 4.0, 2.0, 6.0, 3.0]), Some((1.0, 6.0)));
        // n = 5: even the extremes cover only 93.8%.
        assert_eq!(median_ci(&[1.0, 2.0, 3.0, 4.0, 5.0]), None);
    }
}
