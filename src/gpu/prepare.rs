//! What the GPU engine computes once per run, on all cores, because a part's
//! contents repeat every epoch ([`crate::engine::order`]): the ratings as the
//! device holds them (in deterministic mode each part sorted into
//! conflict-free waves), the waves, and each part's Hogwild conflicts.

use crate::data::Rating;
use crate::engine::blocked::par_chunks;
use crate::engine::{Part, RunLayout};

/// The layout's ratings as the device holds them, and per-part tables.
pub struct DeviceRatings {
    /// Every training rating once; part k occupies the layout's range of
    /// part k (sorted into waves in deterministic mode).
    pub ratings: Vec<Rating>,
    /// Deterministic mode: every part's waves, part by part, each a run of
    /// `ratings` whose ratings share no row; `part_waves[k]..part_waves[k +
    /// 1]` are part k's, in order. Empty in Hogwild.
    pub waves: Vec<Part>,
    pub part_waves: Vec<u32>,
}

/// Sorts each part of `layout` into conflict-free waves (stable: any two
/// ratings sharing a row keep their order, and no wave holds a row twice,
/// so running the waves in order equals the part's sequential order,
/// bit for bit). Parallel over parts; the result does not depend on the
/// thread count.
pub fn waves(layout: &RunLayout, threads: usize) -> DeviceRatings {
    let n_users = layout.n_users();
    let n_rows = n_users + layout.n_items();
    let chunks = par_chunks(layout.parts(), threads, |_, _, parts| {
        // Per row: the stamp (part) that last used it and the wave it was in.
        let (mut stamp_of, mut last) = (vec![u32::MAX; n_rows], vec![0u32; n_rows]);
        let (mut sorted, mut waves, mut counts_per_part) = (Vec::new(), Vec::new(), Vec::new());
        let (mut wave_of, mut counts) = (Vec::new(), Vec::new());
        for (k, p) in parts.iter().enumerate() {
            let stamp = k as u32;
            let ratings = &layout.ratings()[p.range()];
            wave_of.clear();
            counts.clear();
            for r in ratings {
                let rows = [r.user as usize, n_users + r.item as usize];
                let w = rows.iter().filter(|&&x| stamp_of[x] == stamp).map(|&x| last[x] + 1).max().unwrap_or(0);
                for &x in &rows {
                    stamp_of[x] = stamp;
                    last[x] = w;
                }
                if w as usize >= counts.len() {
                    counts.resize(w as usize + 1, 0u32);
                }
                counts[w as usize] += 1;
                wave_of.push(w);
            }
            // A stable counting sort of the part's ratings by wave.
            let base = sorted.len();
            let mut at = Vec::with_capacity(counts.len());
            let mut start = 0u32;
            for &c in &counts {
                waves.push(Part { start: p.start + start, len: c });
                at.push(start);
                start += c;
            }
            sorted.resize(base + ratings.len(), Rating { user: 0, item: 0, value: 0.0 });
            for (r, &w) in ratings.iter().zip(&wave_of) {
                sorted[base + at[w as usize] as usize] = *r;
                at[w as usize] += 1;
            }
            counts_per_part.push(counts.len() as u32);
        }
        (sorted, waves, counts_per_part)
    });
    let mut out =
        DeviceRatings { ratings: Vec::with_capacity(layout.ratings().len()), waves: Vec::new(), part_waves: vec![0] };
    for (sorted, waves, counts) in chunks {
        out.ratings.extend_from_slice(&sorted);
        out.waves.extend_from_slice(&waves);
        for c in counts {
            let last = *out.part_waves.last().unwrap_or(&0);
            out.part_waves.push(last + c);
        }
    }
    out
}

/// Every part's Hogwild conflicts at `width` ratings at once: invocation n
/// of a step runs the part's ratings n, n + width, ..., so the ratings
/// `[c·width, (c + 1)·width)` are in flight together; a conflict is a rating
/// whose user or item an earlier rating of its round also updates (the
/// updates that may race). `None` width: the whole part at once.
pub fn conflicts(layout: &RunLayout, width: Option<u32>, threads: usize) -> Vec<u32> {
    let n_users = layout.n_users();
    let n_rows = n_users + layout.n_items();
    par_chunks(layout.parts(), threads, |_, first, parts| {
        let mut seen = vec![0u32; n_rows];
        let mut stamp = (first as u32).wrapping_mul(0x9E37) | 1;
        let mut out = Vec::with_capacity(parts.len());
        for p in parts {
            let ratings = &layout.ratings()[p.range()];
            let w = width.map_or(ratings.len(), |w| w as usize).max(1);
            let mut c = 0u32;
            for round in ratings.chunks(w) {
                stamp = stamp.wrapping_add(1).max(1);
                for r in round {
                    let (u, i) = (r.user as usize, n_users + r.item as usize);
                    c += (seen[u] == stamp || seen[i] == stamp) as u32;
                    seen[u] = stamp;
                    seen[i] = stamp;
                }
            }
            out.push(c);
        }
        out
    })
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{LayoutSpec, Order};

    fn layout() -> RunLayout {
        let train: Vec<Rating> =
            (0..3001u32).map(|k| Rating { user: (k * k) % 53 % (1 + k % 40), item: k % 29, value: k as f32 }).collect();
        let spec = LayoutSpec { seed: 3, batch: 250, order: Order::Shuffled, co_partition: None };
        RunLayout::new(&train, 40, 29, spec, 2).unwrap()
    }

    #[test]
    fn waves_keep_each_rows_order_and_never_hold_a_row_twice() {
        let layout = layout();
        let one = waves(&layout, 1);
        let three = waves(&layout, 3);
        assert_eq!(one.ratings, three.ratings, "independent of the thread count");
        assert_eq!(one.waves, three.waves);
        for (k, p) in layout.parts().iter().enumerate() {
            let ws = &one.waves[one.part_waves[k] as usize..one.part_waves[k + 1] as usize];
            assert_eq!(ws.first().unwrap().start, p.start);
            assert_eq!(ws.iter().map(|w| w.len).sum::<u32>(), p.len, "the waves cover the part");
            for w in ws {
                let mut rows = std::collections::HashSet::new();
                for r in &one.ratings[w.range()] {
                    assert!(rows.insert(r.user) && rows.insert(1000 + r.item), "a wave holds a row twice");
                }
            }
            // Each row's ratings come in the part's order (values are unique).
            let original = &layout.ratings()[p.range()];
            let sorted = &one.ratings[p.range()];
            for row in 0..40u32 {
                let a: Vec<u32> = original.iter().filter(|r| r.user == row).map(|r| r.value as u32).collect();
                let b: Vec<u32> = sorted.iter().filter(|r| r.user == row).map(|r| r.value as u32).collect();
                assert_eq!(a, b, "user {row}'s ratings reordered");
            }
        }
    }

    #[test]
    fn conflicts_count_rows_shared_within_a_round() {
        let layout = layout();
        let whole = conflicts(&layout, None, 2);
        let one = conflicts(&layout, Some(1), 1);
        let narrow = conflicts(&layout, Some(16), 3);
        assert!(one.iter().all(|&c| c == 0), "one at a time never races");
        assert!(whole.iter().sum::<u32>() > narrow.iter().sum::<u32>(), "fewer at once, fewer races");
        // By hand for the first part at width 16.
        let p = layout.parts()[0];
        let mut want = 0;
        for round in layout.ratings()[p.range()].chunks(16) {
            for (j, r) in round.iter().enumerate() {
                want += round[..j].iter().any(|o| o.user == r.user || o.item == r.item) as u32;
            }
        }
        assert_eq!(narrow[0], want);
    }
}
