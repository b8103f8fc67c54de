//! Trends: a least-squares line through the readings of a sliding window,
//! and when it reaches a level. The storage watcher's fill rate and the
//! thermal sentinel's early warning are both this.
//!
//! Pure: samples come with the time they were read, passed in.

use std::collections::VecDeque;

use crate::timefmt::Timestamp;

/// A least-squares line `y = slope * x + intercept` through some points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Units of y per unit of x (per second, for a [`Window`]).
    pub slope: f64,
    /// y at x = 0 (at the window's first sample, for a [`Window`]).
    pub intercept: f64,
    /// Coefficient of determination, 0–1: the share of the readings'
    /// variance the line explains (1: every point on it; near 0: noise
    /// around a flat mean). `None` when every y is the same (no variance
    /// to explain: a flat line, whose slope is 0).
    pub r2: Option<f64>,
    /// Points the line was fitted to.
    pub samples: usize,
}

impl Fit {
    /// y on the line at `x`.
    pub fn at(&self, x: f64) -> f64 {
        self.slope * x + self.intercept
    }
}

/// The least-squares line through `points` (x, y); `None` with fewer than
/// two points, with every x the same, or with a value that is not finite.
pub fn least_squares(points: &[(f64, f64)]) -> Option<Fit> {
    if points.len() < 2 || points.iter().any(|(x, y)| !x.is_finite() || !y.is_finite()) {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let r2 = (syy > 0.0).then(|| {
        let residual: f64 = points
            .iter()
            .map(|&(x, y)| (y - (slope * x + intercept)).powi(2))
            .sum();
        (1.0 - residual / syy).clamp(0.0, 1.0)
    });
    Some(Fit {
        slope,
        intercept,
        r2,
        samples: points.len(),
    })
}

/// Seconds until a value now at `current` reaches `target`, rising at
/// `slope` per second; `None` when it is not rising (`slope` zero,
/// negative or not finite). 0 when it is already there.
pub fn seconds_until(current: f64, target: f64, slope: f64) -> Option<f64> {
    if !(slope.is_finite() && slope > 0.0) {
        return None;
    }
    Some(((target - current) / slope).max(0.0))
}

/// Readings over a sliding window of time, for their trend.
#[derive(Debug, Clone, Default)]
pub struct Window {
    samples: VecDeque<(Timestamp, f64)>,
}

impl Window {
    /// Add a reading `value` taken at `t`, and forget readings older than
    /// `window_seconds` before it (keeping two at least, so a slow sampler
    /// still has a slope).
    pub fn push(&mut self, window_seconds: f64, t: Timestamp, value: f64) {
        self.samples.push_back((t, value));
        let window = crate::level::secs(window_seconds);
        while self.samples.len() > 2 && self.samples.front().is_some_and(|&(t0, _)| t - t0 > window)
        {
            self.samples.pop_front();
        }
    }

    /// Forget every reading.
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// Readings in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether it holds no reading.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The newest reading and when it was taken.
    pub fn last(&self) -> Option<(Timestamp, f64)> {
        self.samples.back().copied()
    }

    /// The least-squares line through the window's readings, x in seconds
    /// since the first of them ([`least_squares`]).
    pub fn fit(&self) -> Option<Fit> {
        let (t0, _) = *self.samples.front()?;
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .map(|&(t, v)| ((t - t0).num_milliseconds() as f64 / 1000.0, v))
            .collect();
        least_squares(&points)
    }

    /// The slope of [`Window::fit`], units per second.
    pub fn slope(&self) -> Option<f64> {
        self.fit().map(|f| f.slope)
    }
}

/// When a trend is trusted to predict: enough readings, a line that
/// explains them, and a real rise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trust {
    /// Readings the line must be fitted to, at least.
    pub min_samples: usize,
    /// [`Fit::r2`] at least (a flat noisy series fits a line badly).
    pub min_r2: f64,
    /// Rise per second at least.
    pub min_slope: f64,
}

impl Trust {
    /// Whether `fit` is a rise to act on.
    pub fn trusts(&self, fit: &Fit) -> bool {
        fit.samples >= self.min_samples
            && fit.slope.is_finite()
            && fit.slope > 0.0
            && fit.slope >= self.min_slope
            && fit.r2.is_some_and(|r2| r2 >= self.min_r2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: f64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + crate::level::secs(s)
    }

    const TRUST: Trust = Trust {
        min_samples: 6,
        min_r2: 0.8,
        min_slope: 0.01,
    };

    #[test]
    fn a_straight_line_is_fitted_exactly() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 0.5 * i as f64)).collect();
        let f = least_squares(&pts).unwrap();
        assert!((f.slope - 0.5).abs() < 1e-12, "{f:?}");
        assert!((f.intercept - 3.0).abs() < 1e-12, "{f:?}");
        assert_eq!(f.r2, Some(1.0));
        assert_eq!(f.samples, 10);
        assert!((f.at(20.0) - 13.0).abs() < 1e-12);
    }

    #[test]
    fn too_few_points_or_no_spread_in_time_give_no_line() {
        assert_eq!(least_squares(&[]), None);
        assert_eq!(least_squares(&[(1.0, 2.0)]), None);
        assert_eq!(least_squares(&[(1.0, 2.0), (1.0, 3.0)]), None);
        assert_eq!(least_squares(&[(0.0, 2.0), (1.0, f64::NAN)]), None);
        let flat = least_squares(&[(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)]).unwrap();
        assert_eq!((flat.slope, flat.r2), (0.0, None));
    }

    #[test]
    fn noise_around_a_flat_mean_fits_badly() {
        // ±1 °C of alternating noise around 60 °C.
        let pts: Vec<(f64, f64)> = (0..30)
            .map(|i| (i as f64 * 5.0, if i % 2 == 0 { 61.0 } else { 59.0 }))
            .collect();
        let f = least_squares(&pts).unwrap();
        assert!(f.slope.abs() < 0.01, "{f:?}");
        assert!(f.r2.unwrap() < 0.1, "{f:?}");
        assert!(!TRUST.trusts(&f));
    }

    #[test]
    fn one_spike_barely_moves_the_line_and_is_not_trusted() {
        let mut pts: Vec<(f64, f64)> = (0..12).map(|i| (i as f64 * 5.0, 60.0)).collect();
        pts[11].1 = 90.0;
        let f = least_squares(&pts).unwrap();
        // The spike makes a slope, but the line explains little of it.
        assert!(f.r2.unwrap() < TRUST.min_r2, "{f:?}");
        assert!(!TRUST.trusts(&f));
        // In the middle of the window it makes no slope at all.
        let mut mid: Vec<(f64, f64)> = (0..11).map(|i| (i as f64 * 5.0, 60.0)).collect();
        mid[5].1 = 90.0;
        let f = least_squares(&mid).unwrap();
        assert!(f.slope.abs() < 1e-9, "{f:?}");
        assert!(!TRUST.trusts(&f));
    }

    #[test]
    fn a_steady_rise_with_some_noise_is_trusted() {
        let pts: Vec<(f64, f64)> = (0..12)
            .map(|i| {
                let noise = if i % 3 == 0 { 0.3 } else { -0.2 };
                (i as f64 * 5.0, 60.0 + 0.1 * i as f64 * 5.0 + noise)
            })
            .collect();
        let f = least_squares(&pts).unwrap();
        assert!((f.slope - 0.1).abs() < 0.01, "{f:?}");
        assert!(TRUST.trusts(&f), "{f:?}");
        // Too few readings are not trusted, however straight.
        let short = least_squares(&pts[..5]).unwrap();
        assert!(!TRUST.trusts(&short));
        // Nor is a rise slower than the minimum.
        let slow: Vec<(f64, f64)> = (0..12)
            .map(|i| (i as f64, 60.0 + 0.001 * i as f64))
            .collect();
        assert!(!TRUST.trusts(&least_squares(&slow).unwrap()));
        // Nor a fall.
        let fall: Vec<(f64, f64)> = (0..12).map(|i| (i as f64, 60.0 - i as f64)).collect();
        assert!(!TRUST.trusts(&least_squares(&fall).unwrap()));
    }

    #[test]
    fn time_until_a_level() {
        assert_eq!(seconds_until(70.0, 85.0, 0.5), Some(30.0));
        assert_eq!(seconds_until(90.0, 85.0, 0.5), Some(0.0));
        assert_eq!(seconds_until(70.0, 85.0, 0.0), None);
        assert_eq!(seconds_until(70.0, 85.0, -1.0), None);
        assert_eq!(seconds_until(70.0, 85.0, f64::INFINITY), None);
    }

    #[test]
    fn the_window_forgets_old_readings_but_keeps_two() {
        let mut w = Window::default();
        assert_eq!(w.fit(), None);
        for i in 0..10 {
            w.push(30.0, t(i as f64 * 10.0), i as f64);
        }
        // 60..=90 s are within 30 s of the last reading.
        assert_eq!(w.len(), 4);
        assert!((w.slope().unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(w.last(), Some((t(90.0), 9.0)));
        let mut slow = Window::default();
        slow.push(30.0, t(0.0), 1.0);
        slow.push(30.0, t(100.0), 2.0);
        slow.push(30.0, t(200.0), 3.0);
        assert_eq!(slow.len(), 2, "two kept however old");
        assert!((slow.slope().unwrap() - 0.01).abs() < 1e-12);
        slow.clear();
        assert!(slow.is_empty());
    }
}
