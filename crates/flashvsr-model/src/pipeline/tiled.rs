//! [`Session`]: one streaming session over the whole frame, or one per spatial tile with the
//! outputs blended across the overlaps.

use candle_core::Result;

use super::{FlashVsr, SessionStats, StreamSession, UpscaleOptions};
use crate::frames::{self, RgbFrame};
use crate::tiling::{tile_grid, Blender, Tile};

/// A streaming upscale of one video: one session over the whole frame, or one per tile with
/// the outputs blended (`UpscaleOptions::tile`).
pub struct Session<'m> {
    inner: Inner<'m>,
}

enum Inner<'m> {
    Whole(Box<StreamSession<'m>>),
    Tiled(TiledSessions<'m>),
}

struct TiledSessions<'m> {
    input_width: usize,
    input_height: usize,
    output_size: (usize, usize),
    ramp: usize,
    tiles: Vec<(Tile, [bool; 4], StreamSession<'m>)>,
}

impl<'m> Session<'m> {
    pub(super) fn new(
        model: &'m FlashVsr,
        width: usize,
        height: usize,
        opts: &UpscaleOptions,
    ) -> Result<Self> {
        let Some(tile) = opts.tile.filter(|t| t.size < width.max(height)) else {
            // One session: nothing to park its KV cache for.
            let opts = UpscaleOptions {
                park_kv: false,
                ..opts.clone()
            };
            return Ok(Self {
                inner: Inner::Whole(Box::new(StreamSession::new(model, width, height, &opts)?)),
            });
        };
        if opts.upstream_compat {
            candle_core::bail!("tiling cannot be combined with the upstream-compatible contract (upstream does not tile)")
        }
        if tile.size < 16 || tile.overlap >= tile.size / 2 {
            candle_core::bail!(
                "tile size {} with overlap {}: the tile must be at least 16 px and the overlap less than half of it",
                tile.size,
                tile.overlap
            )
        }
        let scale = opts.scale;
        let out_len = |n: usize| (n as f64 * scale).round_ties_even() as usize;
        let grid = tile_grid(width, height, tile.size, tile.overlap, out_len);
        let mut tiles = Vec::with_capacity(grid.len());
        for t in grid {
            let neighbours = [t.x > 0, t.x + t.w < width, t.y > 0, t.y + t.h < height];
            tiles.push((t, neighbours, StreamSession::new(model, t.w, t.h, opts)?));
        }
        Ok(Self {
            inner: Inner::Tiled(TiledSessions {
                input_width: width,
                input_height: height,
                output_size: (out_len(width), out_len(height)),
                ramp: out_len(tile.overlap).max(1),
                tiles,
            }),
        })
    }

    /// Size of the frames this session returns (width, height).
    pub fn output_size(&self) -> (usize, usize) {
        match &self.inner {
            Inner::Whole(s) => s.output_size(),
            Inner::Tiled(t) => t.output_size,
        }
    }

    /// Number of spatial tiles (1 without tiling).
    pub fn tiles(&self) -> usize {
        match &self.inner {
            Inner::Whole(_) => 1,
            Inner::Tiled(t) => t.tiles.len(),
        }
    }

    /// Frame counts and seconds per stage, summed over tiles.
    pub fn stats(&self) -> SessionStats {
        match &self.inner {
            Inner::Whole(s) => s.stats(),
            Inner::Tiled(t) => {
                let mut sum = SessionStats::default();
                for (_, _, s) in &t.tiles {
                    let st = s.stats();
                    sum.preprocess_s += st.preprocess_s;
                    sum.lq_proj_s += st.lq_proj_s;
                    sum.dit_s += st.dit_s;
                    sum.decode_s += st.decode_s;
                    sum.color_fix_s += st.color_fix_s;
                    sum.kv_park_s += st.kv_park_s;
                    sum.kv_parked_bytes += st.kv_parked_bytes;
                    for (stage, b) in st.stage_peak_bytes {
                        let e = sum.stage_peak_bytes.entry(stage).or_insert(0);
                        *e = (*e).max(b);
                    }
                    sum.frames_in = st.frames_in;
                    sum.frames_out = st.frames_out;
                    sum.dit_steps = st.dit_steps;
                }
                sum
            }
        }
    }

    /// Feeds one input frame; returns the output frames that became final, in order.
    pub fn push_frame(&mut self, frame: &RgbFrame) -> Result<Vec<RgbFrame>> {
        match &mut self.inner {
            Inner::Whole(s) => s.push_frame(frame),
            Inner::Tiled(t) => {
                frames::check_size(frame, t.input_width, t.input_height)?;
                t.each(|tile, s| {
                    s.push_frame(&frames::crop(frame, tile.x, tile.y, tile.w, tile.h)?)
                })
            }
        }
    }

    /// Ends the video: pads the tail as the frame contract says and returns the remaining frames.
    pub fn finish(&mut self) -> Result<Vec<RgbFrame>> {
        match &mut self.inner {
            Inner::Whole(s) => s.finish(),
            Inner::Tiled(t) => t.each(|_, s| s.finish()),
        }
    }
}

impl TiledSessions<'_> {
    /// Runs `f` on every tile's session and blends the frames they return.
    fn each(
        &mut self,
        mut f: impl FnMut(&Tile, &mut StreamSession<'_>) -> Result<Vec<RgbFrame>>,
    ) -> Result<Vec<RgbFrame>> {
        let (ow, oh) = self.output_size;
        let mut blenders: Vec<Blender> = Vec::new();
        for (i, (tile, neighbours, session)) in self.tiles.iter_mut().enumerate() {
            let frames = f(tile, session)?;
            if i == 0 {
                blenders = (0..frames.len()).map(|_| Blender::new(ow, oh)).collect();
            } else if frames.len() != blenders.len() {
                candle_core::bail!(
                    "internal: tiles returned different frame counts ({} vs {})",
                    frames.len(),
                    blenders.len()
                )
            }
            for (b, frame) in blenders.iter_mut().zip(&frames) {
                b.add(frame, tile.out_x, tile.out_y, self.ramp, *neighbours);
            }
        }
        Ok(blenders.into_iter().map(Blender::finish).collect())
    }
}
