//! Frames: the one 8-bit RGB frame type, and both mappings between its bytes and the model's
//! [-1, 1] values (spec §2 and §7).
//!
//! [`RgbFrame`] is the video crate's plain-data type, re-exported: sources produce it, the
//! session takes and returns it, sinks write it, with no conversion in between. The video crate
//! knows nothing of Candle, so what the model adds lives here as free functions rather than
//! methods on that type: a checked constructor, crop and edge padding, all returning Candle
//! errors like the rest of the model. The model crate depends on the video crate for this
//! type only; it never opens a file or a container.
//!
//! The mappings are upstream's, bit for bit: `(u8 / 255) · 2 − 1` in f32 into the model
//! ([`u8_to_unit`]) and `((x + 1) · 127.5).clip(0, 255)` truncated out of it ([`unit_to_u8`]).
//! Each has one scalar definition; the tensor versions ([`unit_video`], [`to_rgb_frames`]) run
//! on the frames' device and give exactly the scalar values.

use candle_core::{DType, Device, Result, Tensor};

pub use flashvsr_video::RgbFrame;

/// Wraps interleaved RGB bytes (rows top to bottom), checking that the buffer matches the size.
pub fn from_rgb24(width: usize, height: usize, data: Vec<u8>) -> Result<RgbFrame> {
    let frame = RgbFrame {
        width,
        height,
        data,
    };
    check_size(&frame, width, height)?;
    Ok(frame)
}

/// Fails unless `frame` is a non-empty `width`×`height` frame whose buffer matches its size.
pub fn check_size(frame: &RgbFrame, width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        candle_core::bail!("frame size {width}x{height} is empty")
    }
    if (frame.width, frame.height) != (width, height) {
        candle_core::bail!(
            "a {}x{} frame was given where {width}x{height} frames are expected",
            frame.width,
            frame.height
        )
    }
    if !frame.is_consistent() {
        candle_core::bail!(
            "frame {width}x{height} needs {} RGB bytes, got {}",
            RgbFrame::byte_len(width, height),
            frame.data.len()
        )
    }
    Ok(())
}

/// The `w`×`h` window of `frame` whose top-left corner is (`x`, `y`); it must lie inside.
pub fn crop(frame: &RgbFrame, x: usize, y: usize, w: usize, h: usize) -> Result<RgbFrame> {
    if x + w > frame.width || y + h > frame.height || w == 0 || h == 0 {
        candle_core::bail!(
            "crop {w}x{h} at ({x},{y}) does not fit a {}x{} frame",
            frame.width,
            frame.height
        )
    }
    let mut data = Vec::with_capacity(w * h * 3);
    for row in y..y + h {
        let start = (row * frame.width + x) * 3;
        data.extend_from_slice(&frame.data[start..start + w * 3]);
    }
    Ok(RgbFrame {
        width: w,
        height: h,
        data,
    })
}

/// Grows `frame` to `w`×`h` by repeating its last column and last row.
pub fn pad_edge(frame: &RgbFrame, w: usize, h: usize) -> Result<RgbFrame> {
    if w < frame.width || h < frame.height {
        candle_core::bail!(
            "cannot pad a {}x{} frame to the smaller {w}x{h}",
            frame.width,
            frame.height
        )
    }
    let mut data = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        let src_row = row.min(frame.height - 1);
        let start = src_row * frame.width * 3;
        data.extend_from_slice(&frame.data[start..start + frame.width * 3]);
        let last = start + (frame.width - 1) * 3;
        for _ in frame.width..w {
            data.extend_from_slice(&frame.data[last..last + 3]);
        }
    }
    Ok(RgbFrame {
        width: w,
        height: h,
        data,
    })
}

/// Upstream's exact u8 → [-1, 1] mapping, `(u8 / 255.0) * 2.0 - 1.0` in f32.
pub fn u8_to_unit(v: u8) -> f32 {
    (v as f32 / 255.0f32) * 2.0f32 - 1.0f32
}

/// Upstream's 8-bit conversion `((x + 1) * 127.5).clip(0, 255)` in f32, then truncation.
pub fn unit_to_u8(x: f32) -> u8 {
    ((x + 1.0) * 127.5).clamp(0.0, 255.0) as u8
}

/// Uploads one frame as it is, `[H, W, 3]` u8: a quarter of the bytes of an f32 frame, and
/// no per-pixel work on the host. [`unit_video`] turns held frames into the model's input.
pub fn to_device(frame: &RgbFrame, device: &Device) -> Result<Tensor> {
    Tensor::from_slice(&frame.data, (frame.height, frame.width, 3), device)
}

/// Equally sized `[H, W, 3]` u8 frames (on any device) → `[1, 3, T, H, W]` in [-1, 1], computed
/// where the frames are. The values are exactly [`u8_to_unit`]'s (a 256-entry table, not a
/// rescale, whose rounding could differ by an ulp), then cast to `dtype`.
pub fn unit_video(frames: &[Tensor], dtype: DType) -> Result<Tensor> {
    let Some(first) = frames.first() else {
        candle_core::bail!("no frames to stack")
    };
    let (h, w, c) = first.dims3()?;
    if let Some((i, f)) = frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.dims() != first.dims())
    {
        candle_core::bail!(
            "frame {i} is {:?}, the first frame is {:?}",
            f.dims(),
            first.dims()
        )
    }
    let table: Vec<f32> = (0..=255u8).map(u8_to_unit).collect();
    let table = Tensor::from_vec(table, 256, first.device())?;
    let t = frames.len();
    // u32 ids: Candle's index_select writes 0 for an id equal to its type's maximum (a
    // padding convention), which for u8 ids would turn every byte 255 into mid-grey.
    let ids = Tensor::stack(frames, 0)?
        .flatten_all()?
        .to_dtype(DType::U32)?;
    table
        .index_select(&ids, 0)?
        .reshape((t, h, w, c))?
        .permute((3, 0, 1, 2))?
        .to_dtype(dtype)?
        .contiguous()?
        .unsqueeze(0)
}

/// Equally sized host frames → the video tensor `[1, 3, T, H, W]` in [-1, 1] on `device`
/// ([`to_device`] + [`unit_video`]).
pub fn frames_to_tensor(frames: &[&RgbFrame], device: &Device, dtype: DType) -> Result<Tensor> {
    let held = frames
        .iter()
        .map(|f| to_device(f, device))
        .collect::<Result<Vec<_>>>()?;
    unit_video(&held, dtype)
}

/// Turns a `[1, 3, T, H, W]` video in [-1, 1] into T 8-bit RGB frames.
pub fn to_rgb_frames(video: &Tensor) -> Result<Vec<RgbFrame>> {
    let (b, c, t, _, _) = video.dims5()?;
    if b != 1 || c != 3 {
        candle_core::bail!(
            "to_rgb_frames: expected [1, 3, T, H, W], got {:?}",
            video.dims()
        )
    }
    // unit_to_u8 on the video's device, so that only bytes reach the host: the same f32
    // operations in the same order ((x + 1) · 127.5, clamp, truncating cast).
    let hwc = ((video.to_dtype(DType::F32)? + 1.0)? * 127.5)?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .squeeze(0)?
        .permute((1, 2, 3, 0))?
        .contiguous()?;
    debug_assert_eq!(hwc.dim(0)?, t);
    rgb8_to_frames(&hwc)
}

/// `[T, H, W, 3]` u8 frames (on any device) → T host frames, each byte copied once.
pub fn rgb8_to_frames(frames: &Tensor) -> Result<Vec<RgbFrame>> {
    let (t, h, w, c) = frames.dims4()?;
    if c != 3 || frames.dtype() != DType::U8 {
        candle_core::bail!(
            "rgb8_to_frames: expected [T, H, W, 3] u8, got {:?} {:?}",
            frames.dims(),
            frames.dtype()
        )
    }
    let items = flashvsr_kernels::frame_ops::download_u8_items(frames)?;
    debug_assert_eq!(items.len(), t);
    items
        .into_iter()
        .map(|data| from_rgb24(w, h, data))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_video_matches_the_scalar_mapping() -> Result<()> {
        // 3 frames x 32 pixels x 3 channels: every byte value 0..=255 appears (255 included:
        // it once came out as 0.0 through a u8 index_select).
        let frames: Vec<RgbFrame> = (0..3u32)
            .map(|t| {
                let data = (0..8 * 4 * 3)
                    .map(|i| ((i + t * 96) * 37 % 256) as u8)
                    .collect();
                from_rgb24(8, 4, data)
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&RgbFrame> = frames.iter().collect();
        let got = frames_to_tensor(&refs, &Device::Cpu, DType::F32)?;
        assert_eq!(got.dims(), &[1, 3, 3, 4, 8]);
        let got = got.flatten_all()?.to_vec1::<f32>()?;
        let plane = 8 * 4;
        let seen: std::collections::HashSet<u8> =
            frames.iter().flat_map(|f| f.data.iter().copied()).collect();
        assert_eq!(seen.len(), 256);
        for (ti, frame) in frames.iter().enumerate() {
            for (p, px) in frame.data.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    assert_eq!(
                        got[(c * 3 + ti) * plane + p],
                        u8_to_unit(px[c]),
                        "frame {ti} pixel {p} channel {c}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn rgb_frames_match_the_scalar_conversion() -> Result<()> {
        // Values around every truncation boundary, out of range, and ±1.
        let mut vals: Vec<f32> = (0..=256)
            .flat_map(|k| {
                let x = k as f32 / 127.5 - 1.0;
                [
                    x,
                    f32::from_bits(x.to_bits().wrapping_sub(1)),
                    f32::from_bits(x.to_bits() + 1),
                ]
            })
            .collect();
        vals.extend([-3.0, 2.0, -1.0, 1.0, 0.0]);
        let n = vals.len() / 3 * 3;
        vals.truncate(n);
        let video = Tensor::from_vec(vals.clone(), (1, 3, 1, 1, n / 3), &Device::Cpu)?;
        let frames = to_rgb_frames(&video)?;
        for (p, px) in frames[0].data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                assert_eq!(
                    px[c],
                    unit_to_u8(vals[c * (n / 3) + p]),
                    "channel {c} pixel {p}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn mapping_ends() {
        assert_eq!(u8_to_unit(0), -1.0);
        assert_eq!(u8_to_unit(255), 1.0);
        assert_eq!(unit_to_u8(-1.5), 0);
        assert_eq!(unit_to_u8(1.5), 255);
        assert_eq!(unit_to_u8(0.0), 127);
        assert_eq!(unit_to_u8(1.0), 255);
    }

    #[test]
    fn pad_and_crop() -> Result<()> {
        let f = from_rgb24(2, 1, vec![1, 2, 3, 4, 5, 6])?;
        let p = pad_edge(&f, 3, 2)?;
        assert_eq!(
            p.data,
            vec![1, 2, 3, 4, 5, 6, 4, 5, 6, 1, 2, 3, 4, 5, 6, 4, 5, 6]
        );
        assert_eq!(crop(&p, 0, 0, 2, 1)?, f);
        assert!(crop(&p, 2, 0, 2, 1).is_err());
        assert!(from_rgb24(2, 2, vec![0; 11]).is_err());
        assert!(check_size(&f, 2, 2).is_err());
        Ok(())
    }
}
