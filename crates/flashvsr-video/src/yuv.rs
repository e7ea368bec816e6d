//! Integer BT.601 YCbCr <-> RGB conversions used by the y4m reader and writer.
//!
//! Full range ("JPEG" levels) decoding is *exactly* the transform the golden fixtures were made
//! with (16.16 fixed point, `+32768` then an arithmetic shift, i.e. floor):
//!
//! ```text
//! R = Y + ((91881*Cr' + 32768) >> 16)
//! G = Y + ((-22554*Cb' - 46802*Cr' + 32768) >> 16)
//! B = Y + ((116130*Cb' + 32768) >> 16)        Cb' = Cb-128, Cr' = Cr-128, each clamped to 0..=255
//! ```
//!
//! Its inverse, used when writing, is the JFIF forward transform in the same fixed point:
//!
//! ```text
//! Y  =       (19595*R + 38470*G +  7471*B + 32768) >> 16
//! Cb = 128 + ((-11059*R - 21709*G + 32768*B + 32768) >> 16)
//! Cr = 128 + ((32768*R - 27439*G -  5329*B + 32768) >> 16)     each clamped to 0..=255
//! ```
//!
//! 8-bit YCbCr cannot hold every RGB triple, so RGB -> YCbCr -> RGB differs by at most a few
//! levels per channel (the crate's tests bound it). Limited range ("TV" levels, Y 16..235,
//! C 16..240) uses the same matrix scaled by 219/255 and 224/255 (BT.601's studio levels):
//!
//! ```text
//! Y  =  16 + ((16829*R + 33039*G +  6416*B + 32768) >> 16)
//! Cb = 128 + ((-9714*R - 19070*G + 28784*B + 32768) >> 16)
//! Cr = 128 + ((28784*R - 24103*G -  4681*B + 32768) >> 16)
//! ```

/// Luma/chroma value range of the YCbCr samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YuvRange {
    /// 0..=255 for Y, Cb and Cr (`XCOLORRANGE=FULL`, ffmpeg `pc`).
    Full,
    /// 16..=235 for Y, 16..=240 for Cb/Cr (the y4m default, ffmpeg `tv`).
    Limited,
}

#[inline]
fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Full range BT.601 YCbCr to RGB, exactly the fixture transform.
#[inline]
pub fn ycbcr_full_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (y as i32, cb as i32 - 128, cr as i32 - 128);
    [
        clamp_u8(y + ((91881 * cr + 32768) >> 16)),
        clamp_u8(y + ((-22554 * cb - 46802 * cr + 32768) >> 16)),
        clamp_u8(y + ((116130 * cb + 32768) >> 16)),
    ]
}

/// Limited range BT.601 YCbCr to RGB (16.16 fixed point, rounded).
#[inline]
pub fn ycbcr_limited_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (76309 * (y as i32 - 16), cb as i32 - 128, cr as i32 - 128);
    [
        clamp_u8((y + 104597 * cr + 32768) >> 16),
        clamp_u8((y - 25675 * cb - 53279 * cr + 32768) >> 16),
        clamp_u8((y + 132201 * cb + 32768) >> 16),
    ]
}

/// RGB to full range BT.601 YCbCr, the inverse of [`ycbcr_full_to_rgb`] up to 8-bit rounding.
#[inline]
pub fn rgb_to_ycbcr_full(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (r as i32, g as i32, b as i32);
    [
        clamp_u8((19595 * r + 38470 * g + 7471 * b + 32768) >> 16),
        clamp_u8(128 + ((-11059 * r - 21709 * g + 32768 * b + 32768) >> 16)),
        clamp_u8(128 + ((32768 * r - 27439 * g - 5329 * b + 32768) >> 16)),
    ]
}

/// RGB to limited range BT.601 YCbCr, the inverse of [`ycbcr_limited_to_rgb`] up to rounding.
#[inline]
pub fn rgb_to_ycbcr_limited(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (r as i32, g as i32, b as i32);
    [
        clamp_u8(16 + ((16829 * r + 33039 * g + 6416 * b + 32768) >> 16)),
        clamp_u8(128 + ((-9714 * r - 19070 * g + 28784 * b + 32768) >> 16)),
        clamp_u8(128 + ((28784 * r - 24103 * g - 4681 * b + 32768) >> 16)),
    ]
}

/// How the chroma planes are subsampled: shift of 1 halves that axis (rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subsampling {
    pub shift_x: u32,
    pub shift_y: u32,
}

impl Subsampling {
    pub const S444: Subsampling = Subsampling {
        shift_x: 0,
        shift_y: 0,
    };
    pub const S422: Subsampling = Subsampling {
        shift_x: 1,
        shift_y: 0,
    };
    pub const S420: Subsampling = Subsampling {
        shift_x: 1,
        shift_y: 1,
    };

    /// Size of one chroma plane for a `width x height` picture.
    pub fn chroma_size(&self, width: usize, height: usize) -> (usize, usize) {
        (
            width.div_ceil(1 << self.shift_x),
            height.div_ceil(1 << self.shift_y),
        )
    }

    /// Bytes of one planar 8-bit Y + Cb + Cr picture.
    pub fn frame_bytes(&self, width: usize, height: usize) -> usize {
        let (cw, ch) = self.chroma_size(width, height);
        width * height + 2 * cw * ch
    }
}

/// Converts one planar 8-bit YCbCr picture (`planes` = Y, then Cb, then Cr, as in y4m) to RGB24.
/// Subsampled chroma is replicated over the pixels it covers (nearest neighbour, whatever the
/// chroma siting).
pub fn planar_to_rgb(
    planes: &[u8],
    width: usize,
    height: usize,
    sub: Subsampling,
    range: YuvRange,
    rgb: &mut [u8],
) {
    let (cw, ch) = sub.chroma_size(width, height);
    let (luma, chroma) = planes.split_at(width * height);
    let (cb_plane, cr_plane) = chroma.split_at(cw * ch);
    let convert = match range {
        YuvRange::Full => ycbcr_full_to_rgb,
        YuvRange::Limited => ycbcr_limited_to_rgb,
    };
    for y in 0..height {
        let crow = (y >> sub.shift_y) * cw;
        let lrow = &luma[y * width..(y + 1) * width];
        let out = &mut rgb[y * width * 3..(y + 1) * width * 3];
        for x in 0..width {
            let c = crow + (x >> sub.shift_x);
            let px = convert(lrow[x], cb_plane[c], cr_plane[c]);
            out[3 * x..3 * x + 3].copy_from_slice(&px);
        }
    }
}

/// Converts RGB24 to a planar full range YCbCr picture (Y, Cb, Cr); see [`rgb_to_planar`].
pub fn rgb_to_planar_full(
    rgb: &[u8],
    width: usize,
    height: usize,
    sub: Subsampling,
    planes: &mut Vec<u8>,
) {
    rgb_to_planar(rgb, width, height, sub, YuvRange::Full, planes)
}

/// Converts RGB24 to a planar YCbCr picture (Y, Cb, Cr) in `range`. Subsampled chroma is the
/// rounded mean of the full resolution chroma over the pixels it covers.
pub fn rgb_to_planar(
    rgb: &[u8],
    width: usize,
    height: usize,
    sub: Subsampling,
    range: YuvRange,
    planes: &mut Vec<u8>,
) {
    let convert = match range {
        YuvRange::Full => rgb_to_ycbcr_full,
        YuvRange::Limited => rgb_to_ycbcr_limited,
    };
    let (cw, ch) = sub.chroma_size(width, height);
    planes.clear();
    planes.resize(sub.frame_bytes(width, height), 0);
    let (luma, chroma) = planes.split_at_mut(width * height);
    let (cb_plane, cr_plane) = chroma.split_at_mut(cw * ch);
    if sub == Subsampling::S444 {
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            let [y, cb, cr] = convert(px[0], px[1], px[2]);
            luma[i] = y;
            cb_plane[i] = cb;
            cr_plane[i] = cr;
        }
        return;
    }
    // Accumulate chroma sums per subsampled cell, then divide with rounding.
    let mut sums = vec![[0u32; 3]; cw * ch];
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            let [yy, cb, cr] = convert(rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]);
            luma[i] = yy;
            let cell = &mut sums[(y >> sub.shift_y) * cw + (x >> sub.shift_x)];
            cell[0] += cb as u32;
            cell[1] += cr as u32;
            cell[2] += 1;
        }
    }
    for (i, [cb, cr, n]) in sums.into_iter().enumerate() {
        cb_plane[i] = ((cb + n / 2) / n) as u8;
        cr_plane[i] = ((cr + n / 2) / n) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_is_exact_both_ways() {
        for v in 0..=255u8 {
            assert_eq!(ycbcr_full_to_rgb(v, 128, 128), [v, v, v]);
            assert_eq!(rgb_to_ycbcr_full(v, v, v), [v, 128, 128]);
        }
        assert_eq!(ycbcr_limited_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(ycbcr_limited_to_rgb(235, 128, 128), [255, 255, 255]);
    }

    #[test]
    fn full_range_round_trip_error_is_small() {
        // Exhaustive over a coarse RGB lattice plus the corners.
        let mut worst = 0i32;
        for r in (0..=255).step_by(5) {
            for g in (0..=255).step_by(5) {
                for b in (0..=255).step_by(5) {
                    let [y, cb, cr] = rgb_to_ycbcr_full(r as u8, g as u8, b as u8);
                    let back = ycbcr_full_to_rgb(y, cb, cr);
                    for (a, o) in back.iter().zip([r, g, b]) {
                        worst = worst.max((*a as i32 - o).abs());
                    }
                }
            }
        }
        assert!(worst <= 2, "round trip error {worst}");
    }

    #[test]
    fn limited_range_levels_and_round_trip() {
        assert_eq!(rgb_to_ycbcr_limited(0, 0, 0), [16, 128, 128]);
        assert_eq!(rgb_to_ycbcr_limited(255, 255, 255), [235, 128, 128]);
        assert_eq!(rgb_to_ycbcr_limited(0, 0, 255)[1], 240);
        assert_eq!(rgb_to_ycbcr_limited(255, 0, 0)[2], 240);
        let mut worst = 0i32;
        for r in (0..=255).step_by(5) {
            for g in (0..=255).step_by(5) {
                for b in (0..=255).step_by(5) {
                    let [y, cb, cr] = rgb_to_ycbcr_limited(r as u8, g as u8, b as u8);
                    let back = ycbcr_limited_to_rgb(y, cb, cr);
                    for (a, o) in back.iter().zip([r, g, b]) {
                        worst = worst.max((*a as i32 - o).abs());
                    }
                }
            }
        }
        // Limited range has 219 luma levels for 256: one more level of rounding than full range.
        assert!(worst <= 3, "round trip error {worst}");
    }
}
