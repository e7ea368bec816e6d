//! Spatial tiling: a large frame is cut into overlapping input tiles, each upscaled by its own
//! streaming session, and the results are blended with linear ramps across the overlaps, so
//! no seam shows and the per-step memory is that of one tile.
//!
//! Tiles see only their own picture: attention, colour statistics and the decoder's context
//! stop at the tile border, so tiled output is close to, not identical with, untiled output.

use crate::frames::RgbFrame;

/// One tile: where it sits in the input and in the output, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
    pub out_x: usize,
    pub out_y: usize,
}

/// Start offsets of tiles of `size` overlapping by `overlap` that cover `len` (the last tile is
/// aligned with the end).
fn starts(len: usize, size: usize, overlap: usize) -> Vec<usize> {
    if len <= size {
        return vec![0];
    }
    let stride = (size - overlap).max(1);
    let mut v: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|&s| s + size < len)
        .collect();
    v.push(len - size);
    v.dedup();
    v
}

/// The tile grid of a `width`×`height` input. `out_size(n)` maps an input length to its output
/// length (the session's size rule), so tiles land exactly on the output grid.
pub fn tile_grid(
    width: usize,
    height: usize,
    size: usize,
    overlap: usize,
    out_size: impl Fn(usize) -> usize,
) -> Vec<Tile> {
    let (out_w, out_h) = (out_size(width), out_size(height));
    let mut tiles = Vec::new();
    for &y in &starts(height, size, overlap) {
        for &x in &starts(width, size, overlap) {
            let (w, h) = (size.min(width), size.min(height));
            // Right/bottom tiles are flush with the output edge, others start at their scaled offset.
            let out_x = if x + w == width {
                out_w - out_size(w)
            } else {
                out_size(x).min(out_w - out_size(w))
            };
            let out_y = if y + h == height {
                out_h - out_size(h)
            } else {
                out_size(y).min(out_h - out_size(h))
            };
            tiles.push(Tile {
                x,
                y,
                w,
                h,
                out_x,
                out_y,
            });
        }
    }
    tiles
}

/// Blend weight of position `i` in a tile of `len` output pixels: ramps of `ramp` pixels on
/// the sides that have a neighbour, 1 elsewhere; never 0, so every pixel is covered.
pub fn ramp_weight(i: usize, len: usize, ramp: usize, ramp_start: bool, ramp_end: bool) -> f32 {
    let ramp = ramp.max(1) as f32;
    let mut w = 1f32;
    if ramp_start {
        w = w.min((i as f32 + 0.5) / ramp);
    }
    if ramp_end {
        w = w.min(((len - i) as f32 - 0.5) / ramp);
    }
    w.clamp(1e-3, 1.0)
}

/// Accumulates tiles of one output frame and normalises by the summed weights.
pub struct Blender {
    width: usize,
    height: usize,
    sum: Vec<f32>,
    weight: Vec<f32>,
}

impl Blender {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            sum: vec![0.0; width * height * 3],
            weight: vec![0.0; width * height],
        }
    }

    /// Adds a tile's output frame at (`ox`, `oy`) with ramps of `ramp` pixels towards the
    /// neighbouring tiles (`neighbours` = left, right, top, bottom).
    pub fn add(
        &mut self,
        tile: &RgbFrame,
        ox: usize,
        oy: usize,
        ramp: usize,
        neighbours: [bool; 4],
    ) {
        let [left, right, top, bottom] = neighbours;
        let (tw, th, rgb) = (tile.width, tile.height, &tile.data);
        for ty in 0..th {
            let wy = ramp_weight(ty, th, ramp, top, bottom);
            let row = (oy + ty) * self.width;
            for tx in 0..tw {
                let w = wy * ramp_weight(tx, tw, ramp, left, right);
                let p = row + ox + tx;
                self.weight[p] += w;
                for c in 0..3 {
                    self.sum[p * 3 + c] += w * rgb[(ty * tw + tx) * 3 + c] as f32;
                }
            }
        }
    }

    /// The blended frame (rounded to nearest).
    pub fn finish(self) -> RgbFrame {
        let mut out = Vec::with_capacity(self.width * self.height * 3);
        for (p, &w) in self.weight.iter().enumerate() {
            for c in 0..3 {
                let v = if w > 0.0 {
                    self.sum[p * 3 + c] / w
                } else {
                    0.0
                };
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
        RgbFrame {
            width: self.width,
            height: self.height,
            data: out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_frame_and_land_on_the_output_grid() {
        let scale = |n: usize| n * 4;
        let tiles = tile_grid(100, 50, 40, 8, scale);
        let xs: Vec<usize> = tiles.iter().filter(|t| t.y == 0).map(|t| t.x).collect();
        assert_eq!(xs, vec![0, 32, 60]);
        let ys: Vec<usize> = tiles.iter().filter(|t| t.x == 0).map(|t| t.y).collect();
        assert_eq!(ys, vec![0, 10]);
        for t in &tiles {
            assert_eq!((t.out_x, t.out_y), (t.x * 4, t.y * 4));
        }
        assert_eq!(tile_grid(30, 30, 40, 8, scale).len(), 1);
    }

    #[test]
    fn blending_identical_tiles_reproduces_the_frame() {
        let (w, h) = (20, 12);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
        let frame = crate::frames::from_rgb24(w, h, data).unwrap();
        let tiles = tile_grid(w, h, 8, 3, |n| n);
        let mut b = Blender::new(w, h);
        for t in &tiles {
            let tile = crate::frames::crop(&frame, t.x, t.y, t.w, t.h).unwrap();
            let n = [t.x > 0, t.x + t.w < w, t.y > 0, t.y + t.h < h];
            b.add(&tile, t.out_x, t.out_y, 3, n);
        }
        assert_eq!(b.finish(), frame);
    }

    #[test]
    fn ramps_rise_towards_the_tile_interior() {
        let w: Vec<f32> = (0..8).map(|i| ramp_weight(i, 8, 4, true, true)).collect();
        assert!(w[0] < w[1] && w[1] < w[2] && w[2] < w[3]);
        assert_eq!(w[3], w[4]);
        assert!(w.iter().all(|&x| x > 0.0));
        assert_eq!(ramp_weight(0, 8, 4, false, false), 1.0);
    }
}
